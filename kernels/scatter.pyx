"""Scatter-add: the gradient of Gather (an embedding table's rows summed from the rows that read
them).

dx viewed as (outer, rows, inner), dy as (outer, n, inner) and the indices as n entries:
dx[o, idx[k], c] = Σ_k dy[o, k, c] over the k with idx[k] = that row. Several k may name one
row, so threads must not split the k loop; they own disjoint column tiles (o, c0:c0+TILE)
instead, and each walks every index in order: race-free, and every element summed in the
order np.add.at sums it, whatever the thread count.
"""
from cython.parallel cimport prange
from libc.stdint cimport int64_t
from libc.string cimport memset

from kernels.parallel cimport threads_for
from kernels.simd cimport use_simd

use_simd()

cdef enum:
    TILE = 64    # columns per task: a few cache lines of each row, enough tasks to share


def first_out_of_range(const int64_t[::1] idx, long rows):
    """The position of the first index outside [-rows, rows), or -1 when all are inside."""
    cdef long k, n = idx.shape[0], found = -1
    cdef int64_t v
    with nogil:
        for k in range(n):
            v = idx[k]
            if v < -rows or v >= rows:
                found = k
                break
    return found


def scatter_add_rows(const float[:, :, ::1] dy, const int64_t[::1] idx, float[:, :, ::1] dx,
                     long skip_row, int nthreads):
    """dx = 0, then dx[o, idx[k], :] += dy[o, k, :] for every k (negative indices count from the
    end), except where the index names ``skip_row`` (-1: none): torch's ``padding_idx`` row.
    Every index must lie in [-rows, rows): the caller checks with ``first_out_of_range``."""
    cdef long outer = dx.shape[0], rows = dx.shape[1], inner = dx.shape[2]
    cdef long n = idx.shape[0]
    cdef long tiles = (inner + TILE - 1) // TILE
    cdef long task, o, c0, c1, c, k, row
    cdef int threads = <int> min(<long> threads_for(nthreads, outer * n * inner), outer * tiles)
    if outer * rows * inner == 0:
        return
    memset(&dx[0, 0, 0], 0, outer * rows * inner * sizeof(float))
    if n == 0 or tiles == 0:
        return
    with nogil:
        for task in prange(outer * tiles, num_threads=threads, schedule='static'):
            o = task // tiles
            c0 = (task % tiles) * TILE
            c1 = min(c0 + TILE, inner)
            for k in range(n):
                row = idx[k]
                if row < 0:
                    row = row + rows
                if row == skip_row:
                    continue
                for c in range(c0, c1):
                    dx[o, row, c] += dy[o, k, c]
