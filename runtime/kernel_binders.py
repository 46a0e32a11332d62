"""Fast paths: IR ops bound to ember's Cython kernels (see ``bindings`` for the contract)."""
