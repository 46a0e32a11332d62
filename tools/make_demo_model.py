"""Train ember's bundled demo model and write it to ``ember/data/``.

A small CNN on scikit-learn's bundled 8×8 digits (1,797 images), trained with plain numpy
(im2col convolutions, Adam) because ember has no training of its own yet. It writes

* ``ember/data/digits_cnn.onnx``  — Conv→Relu→MaxPool→Conv→Relu→MaxPool→Flatten→Gemm→Softmax,
  input ``image`` float32 [N, 1, 8, 8] (pixel / 16), output ``probs`` float32 [N, 10];
* ``ember/data/digits_sample.npz`` — held-out test images (``images``, float32 NCHW) and their
  ``labels`` (int64), which ``ember demo`` runs.

Run from the repository root:  python tools/make_demo_model.py
Needs numpy, scikit-learn and onnx (onnxruntime too, for the final check, when installed).
"""
from __future__ import annotations

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(HERE, os.pardir, "ember", "data")
SEED, EPOCHS, BATCH, LR = 0, 20, 32, 3e-3
C1, C2, N_SAMPLE = 16, 32, 48


# ---- layers (forward returns a cache for backward) ------------------------------------------
def im2col3x3(x):
    """[N, C, H, W] -> [N·H·W, C·9] patches of a 3×3 window with padding 1."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))  # N,C,H,W,3,3
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(n * h * w, c * 9)


def conv_forward(x, w, b):
    n, _, h, wd = x.shape
    cols = im2col3x3(x)
    y = cols @ w.reshape(len(w), -1).T + b
    return y.reshape(n, h, wd, -1).transpose(0, 3, 1, 2), (x.shape, cols)


def conv_backward(dy, w, cache):
    (n, c, h, wd), cols = cache
    d2 = dy.transpose(0, 2, 3, 1).reshape(-1, len(w))
    dw = (d2.T @ cols).reshape(w.shape)
    dcols = (d2 @ w.reshape(len(w), -1)).reshape(n, h, wd, c, 3, 3)
    dxp = np.zeros((n, c, h + 2, wd + 2), dy.dtype)
    for i in range(3):
        for j in range(3):
            dxp[:, :, i:i + h, j:j + wd] += dcols[..., i, j].transpose(0, 3, 1, 2)
    return dxp[:, :, 1:-1, 1:-1], dw, d2.sum(0)


def pool_forward(x):
    n, c, h, w = x.shape
    r = x.reshape(n, c, h // 2, 2, w // 2, 2)
    y = r.max(axis=(3, 5))
    return y, (r, y)


def pool_backward(dy, cache):
    r, y = cache
    mask = r == y[:, :, :, None, :, None]
    mask = mask / mask.sum(axis=(3, 5), keepdims=True)  # split ties evenly
    return (mask * dy[:, :, :, None, :, None]).reshape(r.shape[0], r.shape[1], r.shape[2] * 2, -1)


def forward(p, x, keep=False):
    a1, c1 = conv_forward(x, p["w1"], p["b1"])
    r1 = np.maximum(a1, 0)
    p1, q1 = pool_forward(r1)
    a2, c2 = conv_forward(p1, p["w2"], p["b2"])
    r2 = np.maximum(a2, 0)
    p2, q2 = pool_forward(r2)
    flat = p2.reshape(len(x), -1)
    logits = flat @ p["w3"].T + p["b3"]
    return (logits, (c1, a1, q1, c2, a2, q2, flat, p2.shape)) if keep else logits


def grads(p, x, y):
    logits, (c1, a1, q1, c2, a2, q2, flat, p2shape) = forward(p, x, keep=True)
    z = logits - logits.max(1, keepdims=True)
    prob = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    loss = -np.log(prob[np.arange(len(y)), y] + 1e-12).mean()
    d = prob.copy()
    d[np.arange(len(y)), y] -= 1
    d /= len(y)
    g = {"w3": d.T @ flat, "b3": d.sum(0)}
    dp2 = (d @ p["w3"]).reshape(p2shape)
    da2 = pool_backward(dp2, q2) * (a2 > 0)
    dp1, g["w2"], g["b2"] = conv_backward(da2, p["w2"], c2)
    da1 = pool_backward(dp1, q1) * (a1 > 0)
    _, g["w1"], g["b1"] = conv_backward(da1, p["w1"], c1)
    return loss, g


def train(x, y, rng):
    def he(shape, fan_in):
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    p = {"w1": he((C1, 1, 3, 3), 9), "b1": np.zeros(C1, np.float32),
         "w2": he((C2, C1, 3, 3), C1 * 9), "b2": np.zeros(C2, np.float32),
         "w3": he((10, C2 * 4), C2 * 4), "b3": np.zeros(10, np.float32)}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(v) for k, v in p.items()}
    t = 0
    for epoch in range(EPOCHS):
        order = rng.permutation(len(x))
        losses = []
        for s in range(0, len(x), BATCH):  # keeps the partial last batch
            idx = order[s:s + BATCH]
            loss, g = grads(p, x[idx], y[idx])
            losses.append(loss)
            t += 1
            for k in p:  # Adam, β1 = 0.9, β2 = 0.999, ε = 1e-8
                m[k] = 0.9 * m[k] + 0.1 * g[k]
                v[k] = 0.999 * v[k] + 0.001 * g[k] ** 2
                mh, vh = m[k] / (1 - 0.9 ** t), v[k] / (1 - 0.999 ** t)
                p[k] = (p[k] - LR * mh / (np.sqrt(vh) + 1e-8)).astype(np.float32)
        print(f"epoch {epoch + 1:2d}  loss {np.mean(losses):.4f}", file=sys.stderr)
    return p


# ---- export ----------------------------------------------------------------------------------
def to_onnx(p):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def conv(name, x, w, b):
        return helper.make_node("Conv", [x, w, b], [name], name=name, kernel_shape=[3, 3],
                                pads=[1, 1, 1, 1])

    def pool(name, x):
        return helper.make_node("MaxPool", [x], [name], name=name, kernel_shape=[2, 2],
                                strides=[2, 2])

    nodes = [conv("conv1", "image", "w1", "b1"), helper.make_node("Relu", ["conv1"], ["relu1"]),
             pool("pool1", "relu1"),
             conv("conv2", "pool1", "w2", "b2"), helper.make_node("Relu", ["conv2"], ["relu2"]),
             pool("pool2", "relu2"),
             helper.make_node("Flatten", ["pool2"], ["flat"], axis=1),
             helper.make_node("Gemm", ["flat", "w3", "b3"], ["logits"], transB=1),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=1)]
    for i, n in enumerate(nodes):
        n.name = n.name or f"{n.op_type.lower()}_{i}"
    graph = helper.make_graph(
        nodes, "digits_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(np.ascontiguousarray(p[k]), k) for k in sorted(p)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="ember tools/make_demo_model.py")
    model.ir_version = 8
    model.doc_string = ("8x8 handwritten digits (scikit-learn load_digits), input = pixel / 16, "
                        "output = class probabilities for 0-9")
    onnx.checker.check_model(model)
    return model


def main():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    import onnx

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]  # N, 1, 8, 8
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=SEED,
                                              stratify=y)
    p = train(x_tr, y_tr, np.random.default_rng(SEED))
    acc = (forward(p, x_te).argmax(1) == y_te).mean()
    print(f"held-out accuracy (numpy): {acc:.4f} on {len(y_te)} test images")

    model = to_onnx(p)
    os.makedirs(OUT_DIR, exist_ok=True)
    model_path = os.path.join(OUT_DIR, "digits_cnn.onnx")
    onnx.save(model, model_path)
    np.savez_compressed(os.path.join(OUT_DIR, "digits_sample.npz"),
                        images=x_te[:N_SAMPLE], labels=y_te[:N_SAMPLE])
    try:
        import onnxruntime as ort
    except ImportError:
        return
    sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    probs = sess.run(None, {"image": x_te})[0]
    z = forward(p, x_te)
    ref = np.exp(z - z.max(1, keepdims=True))
    ref /= ref.sum(1, keepdims=True)
    print(f"held-out accuracy (onnxruntime): {(probs.argmax(1) == y_te).mean():.4f}; "
          f"max |onnxruntime - numpy| probability: {np.abs(probs - ref).max():.2e}")

if __name__ == "__main__":
    main()
