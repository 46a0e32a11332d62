"""Gemm and MatMul (``kernels/gemm``, with the fused activation epilogue)."""
from __future__ import annotations

import numpy as np

from ...graph.ops import get_op
from ...graph.ops import linear as ops
from ...kernels import gemm
from .common import (FUSED_ACTIVATIONS, INDEX_TYPES, all_float32, contiguous_f32,
                     fused_activation, has_empty_output, noop, optional_at)
from .registry import binds

# The GEMM kernel takes M, N and K as C ints. Every dim fits one (``graph.infer.MAX_DIM``), but
# the rows of a batch of matrices folded into one product (batch · M) may not.
GEMM_MAX_DIM = INDEX_TYPES["int32"]


def _gemm_inplace(node, types):
    """Y may take over C's bytes when C already has Y's shape (the kernel reads it as beta·Y)."""
    c, y = node.input(2), node.outputs[0]
    if c and c in types and y in types and types[c] == types[y] \
            and 2 in get_op(node.op_type, node.domain).inplace:
        return (2,)
    return ()


@binds(ops.Gemm, inplace=_gemm_inplace, kernel="gemm", activations=FUSED_ACTIVATIONS)
def bind_gemm(node, ins, outs, scratch_buf, ctx):
    act, threads = fused_activation(node), ctx.threads
    A, B, C, Y = ins[0], ins[1], optional_at(ins, 2), outs[0]
    if act is None or not all_float32(A, B, C, Y) or A.ndim != 2 or B.ndim != 2:
        return None
    if has_empty_output(outs):
        return noop
    ta, tb = bool(int(node.attrs.get("transA", 0))), bool(int(node.attrs.get("transB", 0)))
    alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
    M, N = Y.shape
    A, B = contiguous_f32(A), contiguous_f32(B)
    code, aa, ab = act
    bias, axis, kbeta, pre = None, 1, 0.0, None
    if C is None or beta == 0.0:
        pass
    elif np.shares_memory(C, Y):  # planned in place: Y already holds C
        kbeta = beta
    elif C.shape in ((N,), (1, N)) and (beta == 1.0 or not ctx.is_runtime(C)):
        bias = contiguous_f32(C).reshape(N) if beta == 1.0 else \
            contiguous_f32(C.reshape(N) * np.float32(beta))
    elif C.shape == (M, 1) and (beta == 1.0 or not ctx.is_runtime(C)):
        bias = contiguous_f32(C).reshape(M) if beta == 1.0 else \
            contiguous_f32(C.reshape(M) * np.float32(beta))
        axis = 0
    else:  # scalar, (M, N) or another broadcast: copy C into Y and let the kernel scale it
        kbeta, src = beta, C

        def pre():
            np.copyto(Y, src)
    # a prepared native step: the plan runner runs it with no Python around it
    product = gemm.GemmStep(A, B, Y, ta, tb, alpha, kbeta, bias, axis, code, aa, ab, threads)
    if pre is None:
        return product

    def step():
        pre()
        product()
    return step


@binds(ops.FusedMatMul, inplace=(), kernel="gemm", activations=FUSED_ACTIVATIONS)
def bind_matmul_bias(node, ins, outs, scratch_buf, ctx):
    """MatMul(A, B) + bias with B of rank 2: the bias in the GEMM's epilogue (one per column)."""
    if ins[1].ndim != 2 or ins[2].shape != (ins[1].shape[1],) or not all_float32(ins[2]):
        return None
    return bind_matmul(node, ins[:2], outs, scratch_buf, ctx, bias=contiguous_f32(ins[2]))


@binds(ops.MatMul, inplace=(), kernel="gemm", activations=FUSED_ACTIVATIONS)
def bind_matmul(node, ins, outs, scratch_buf, ctx, bias=None):
    act, threads = fused_activation(node), ctx.threads
    A, B, Y = ins[0], ins[1], outs[0]
    if act is None or not all_float32(A, B, Y) or A.ndim == 0 or B.ndim == 0:
        return None
    if has_empty_output(outs):
        return noop
    A, B = contiguous_f32(A), contiguous_f32(B)
    K = A.shape[-1]
    A2 = A.reshape(1, K) if A.ndim == 1 else A
    B2 = B.reshape(K, 1) if B.ndim == 1 else B
    M, N = A2.shape[-2], B2.shape[-1]
    code, aa, ab = act
    fn = gemm.gemm
    if A2.ndim == 2 and B2.ndim == 2:
        return gemm.GemmStep(A2, B2, Y.reshape(M, N), False, False, 1.0, 0.0, bias, 1, code, aa,
                             ab, threads)
    rows = int(np.prod(A2.shape[:-1], dtype=np.int64))   # not -1: K may be 0
    if B2.ndim == 2 and rows <= GEMM_MAX_DIM:
        # batched A times one matrix: a single (batch·M)×K by K×N product
        return gemm.GemmStep(A2.reshape(rows, K), B2, Y.reshape(rows, N), False, False, 1.0, 0.0,
                             bias, 1, code, aa, ab, threads)
    if bias is not None:
        return None   # batches of B: the numpy reference
    batch = np.broadcast_shapes(A2.shape[:-2], B2.shape[:-2])
    A3 = A2.reshape((1,) * (len(batch) - (A2.ndim - 2)) + A2.shape)
    B3 = B2.reshape((1,) * (len(batch) - (B2.ndim - 2)) + B2.shape)
    Y3 = Y.reshape(batch + (M, N))
    if A3.shape[:-2] == B3.shape[:-2]:   # no broadcast: the i-th matrices go together
        count = Y3.size // (M * N)    # Y is not empty here; A and B are when K is 0
        a, b, y = A3.reshape(count, M, K), B3.reshape(count, K, N), Y3.reshape(count, M, N)

        def step():
            for i in range(count):
                fn(a[i], b[i], y[i], False, False, 1.0, 0.0, None, 1, code, aa, ab, threads)
        return step
    pick_a = _broadcast_picks(A3.shape[:-2])
    pick_b = _broadcast_picks(B3.shape[:-2])

    def step():
        for idx in np.ndindex(*batch):
            fn(A3[pick_a(idx)], B3[pick_b(idx)], Y3[idx], False, False, 1.0, 0.0, None, 1,
               code, aa, ab, threads)
    return step


def _broadcast_picks(shape):
    """fn(batch index) -> the index into an operand of batch ``shape`` (1 along broadcast axes).
    Batch indices are computed as they are needed, so a binding holds nothing per batch index."""
    kept = tuple(d != 1 for d in shape)
    return lambda idx: tuple(i if k else 0 for i, k in zip(idx, kept))
