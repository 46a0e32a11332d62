"""Cython/OpenMP kernels. Imports nothing of ember."""
