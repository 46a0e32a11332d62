"""Scatter-add: the gradient of Gather (an embedding table's rows summed from the rows that read
them).

dx viewed as (outer, rows, inner), dy as (outer, n, inner) and the indices as n entries:
dx[o, idx[k], c] = Σ_k dy[o, k, c] over the k with idx[k] = that row. Several k may name one
row, so threads must not split the k loop; they own disjoint column tiles (o, c0:c0+TILE)
instead, and each walks every index in order: race-free, and every element summed in the
order np.add.at sums it, whatever the thread count.
"""
from libc.stdint cimport int64_t
from libc.string cimport memset

from kernels.parallel cimport threads_for, ember_parallel
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


cdef struct ScatterJob:
    const float *dy
    const int64_t *idx
    float *dx
    long rows, inner, n, tiles, skip_row


cdef void scatter_tile_task(void *ctx, long task, int worker) noexcept nogil:
    """Column tile (o, c0:c1) of dx: every index in order, so sums follow np.add.at's order."""
    cdef const ScatterJob *j = <const ScatterJob *> ctx
    cdef long o = task // j.tiles
    cdef long c0 = (task % j.tiles) * TILE
    cdef long c1 = min(c0 + TILE, j.inner)
    cdef long k, c, row
    cdef const float *dy_row
    cdef float *dx_row
    for k in range(j.n):
        row = j.idx[k]
        if row < 0:
            row = row + j.rows
        if row == j.skip_row:
            continue
        dy_row = j.dy + (o * j.n + k) * j.inner
        dx_row = j.dx + (o * j.rows + row) * j.inner
        for c in range(c0, c1):
            dx_row[c] += dy_row[c]


def scatter_add_rows(const float[:, :, ::1] dy, const int64_t[::1] idx, float[:, :, ::1] dx,
                     long skip_row, int nthreads):
    """dx = 0, then dx[o, idx[k], :] += dy[o, k, :] for every k (negative indices count from the
    end), except where the index names ``skip_row`` (-1: none): torch's ``padding_idx`` row.
    Every index must lie in [-rows, rows): the caller checks with ``first_out_of_range``."""
    cdef long outer = dx.shape[0], rows = dx.shape[1], inner = dx.shape[2]
    cdef long n = idx.shape[0]
    cdef long tiles = (inner + TILE - 1) // TILE
    cdef int threads = <int> min(<long> threads_for(nthreads, outer * n * inner), outer * tiles)
    cdef ScatterJob j
    if outer * rows * inner == 0:
        return
    memset(&dx[0, 0, 0], 0, outer * rows * inner * sizeof(float))
    if n == 0 or tiles == 0:
        return
    j.dy = &dy[0, 0, 0]
    j.idx = &idx[0]
    j.dx = &dx[0, 0, 0]
    j.rows, j.inner, j.n, j.tiles, j.skip_row = rows, inner, n, tiles, skip_row
    with nogil:
        ember_parallel(threads, outer * tiles, scatter_tile_task, &j)
