"""Model importers and exporters (ONNX). ``onnx`` is imported lazily, only when used."""
