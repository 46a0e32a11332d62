"""Data movement as native steps: Concat, Split, Slice and Transpose are each a few strided copies
between views of the arena, resolved once at bind time (``CopyStep``) so the plan runner makes
them without returning to Python.

A copy walks the destination's index space row by row (a row = the innermost dimension); a row
whose source and destination elements are both contiguous is one ``memcpy``, otherwise an element
loop by item size. Adjacent dimensions that are contiguous for both sides are merged first, so a
Concat along channels is one long ``memcpy`` per image and a Split likewise.
"""
from cpython.pycapsule cimport PyCapsule_New
from libc.stdlib cimport malloc, free
from libc.stdint cimport uint32_t
from libc.string cimport memcpy

from kernels.native_step cimport ember_native_step, EMBER_NATIVE_CAPSULE
from kernels.parallel cimport ember_parallel
from kernels.simd cimport use_simd

use_simd()

cdef enum:
    MAX_RANK = 8
    PARALLEL_BYTES = 1 << 18   # below this a copy is not worth a second thread


cdef struct StridedCopy:
    char *dst
    const char *src
    int rank                  # after merging; the innermost dimension is the row
    long itemsize
    long rows                 # product of every dimension but the innermost
    long sh[MAX_RANK]
    long ds[MAX_RANK]         # byte strides
    long ss[MAX_RANK]


cdef void copy_rows(const StridedCopy *c, long r0, long r1) noexcept nogil:
    """Rows [r0, r1) of one strided copy, an index counter over the outer dimensions."""
    cdef long idx[MAX_RANK]
    cdef long offd = 0, offs = 0, rem = r0, r, e
    cdef long inner = c.sh[c.rank - 1], dsi = c.ds[c.rank - 1], ssi = c.ss[c.rank - 1]
    cdef long size = c.itemsize
    cdef bint contiguous = dsi == size and ssi == size
    cdef int d
    for d in range(c.rank - 2, -1, -1):
        idx[d] = rem % c.sh[d]
        rem = rem // c.sh[d]
        offd += idx[d] * c.ds[d]
        offs += idx[d] * c.ss[d]
    for r in range(r0, r1):
        if contiguous:
            memcpy(c.dst + offd, c.src + offs, inner * size)
        elif size == 4:
            for e in range(inner):
                (<uint32_t *> (c.dst + offd + e * dsi))[0] = \
                    (<const uint32_t *> (c.src + offs + e * ssi))[0]   # bits, whatever the dtype
        else:
            for e in range(inner):
                memcpy(c.dst + offd + e * dsi, c.src + offs + e * ssi, size)
        d = c.rank - 2
        while d >= 0:
            idx[d] += 1
            offd += c.ds[d]
            offs += c.ss[d]
            if idx[d] < c.sh[d]:
                break
            offd -= idx[d] * c.ds[d]
            offs -= idx[d] * c.ss[d]
            idx[d] = 0
            d -= 1


cdef struct CopyPlan:
    StridedCopy *copies
    int n
    int nthreads


cdef struct CopyRowsJob:
    const StridedCopy *c
    long per               # rows per task


cdef void copy_rows_task(void *ctx, long t, int worker) noexcept nogil:
    cdef CopyRowsJob *j = <CopyRowsJob *> ctx
    copy_rows(j.c, t * j.per, min(j.c.rows, (t + 1) * j.per))


cdef int copies_run(const CopyPlan *plan) noexcept nogil:
    """Every copy of the step, in order; always 0."""
    cdef int k, nt
    cdef CopyRowsJob rows
    cdef const StridedCopy *c
    for k in range(plan.n):
        c = &plan.copies[k]
        nt = plan.nthreads
        if c.rows * c.sh[c.rank - 1] * c.itemsize < PARALLEL_BYTES or c.rows < nt:
            nt = 1
        if nt == 1:
            copy_rows(c, 0, c.rows)
        else:
            rows.c = c
            rows.per = (c.rows + nt - 1) // nt
            ember_parallel(nt, (c.rows + rows.per - 1) // rows.per, copy_rows_task, &rows)
    return 0


cdef int copy_native(void *state) noexcept nogil:
    return copies_run(<CopyPlan *> state)


cdef class CopyStep:
    """dst_k[...] = src_k for each (dst, src) pair of same-shape numpy views (any dtype, any
    strides, rank ≤ 8), in order, GIL-free. Holds the arrays its pointers point into."""
    cdef CopyPlan plan
    cdef ember_native_step native
    cdef object keep

    def __cinit__(self, pairs, int nthreads):
        pairs = [(d, s) for d, s in pairs if d.size]
        self.plan.copies = <StridedCopy *> malloc(sizeof(StridedCopy) * max(len(pairs), 1))
        if self.plan.copies == NULL:
            raise MemoryError()
        self.plan.n, self.plan.nthreads, self.keep = 0, max(1, nthreads), pairs
        for dst, src in pairs:
            self._add(dst, src)
        self.native.fn = copy_native
        self.native.state = &self.plan

    cdef _add(self, dst, src):
        if dst.shape != src.shape or dst.dtype != src.dtype:
            raise ValueError(f"copy: {src.shape} {src.dtype} into {dst.shape} {dst.dtype}")
        if dst.ndim > MAX_RANK:
            raise ValueError(f"copy: rank {dst.ndim} above {MAX_RANK}")
        if not dst.flags.writeable:
            raise ValueError("copy: the destination is read-only")
        cdef StridedCopy *c = &self.plan.copies[self.plan.n]
        cdef int d, rank = 0
        c.dst = <char *> <size_t> dst.ctypes.data
        c.src = <const char *> <size_t> src.ctypes.data
        c.itemsize = dst.itemsize
        # drop size-1 dimensions; merge a dimension into the previous one when both sides step
        # over it contiguously
        for d in range(dst.ndim):
            if dst.shape[d] == 1:
                continue
            if (rank > 0 and c.ds[rank - 1] == dst.strides[d] * dst.shape[d]
                    and c.ss[rank - 1] == src.strides[d] * dst.shape[d]):
                c.sh[rank - 1] *= dst.shape[d]
                c.ds[rank - 1] = dst.strides[d]
                c.ss[rank - 1] = src.strides[d]
            else:
                c.sh[rank], c.ds[rank], c.ss[rank] = dst.shape[d], dst.strides[d], src.strides[d]
                rank += 1
        if rank == 0:
            c.sh[0], c.ds[0], c.ss[0] = 1, c.itemsize, c.itemsize
            rank = 1
        c.rank, c.rows = rank, 1
        for d in range(rank - 1):
            c.rows *= c.sh[d]
        self.plan.n += 1

    def __dealloc__(self):
        free(self.plan.copies)

    def __call__(self):
        with nogil:
            copies_run(&self.plan)

    def __len__(self):
        return self.plan.n

    @property
    def _native(self):
        """A capsule holding the step's C entry point, for plan.PlanRunner."""
        return PyCapsule_New(&self.native, EMBER_NATIVE_CAPSULE, NULL)
