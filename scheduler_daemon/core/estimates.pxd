# Cython declarations for estimates.py (augmenting .pxd; tools/build_sim.py).
cimport cython

cdef class DurationEstimates:
    cdef double[::1] _est
    cdef double[::1] _tree
    cdef Py_ssize_t _n

    @cython.locals(n=Py_ssize_t)
    cdef _add(self, Py_ssize_t i, double delta)
    @cython.locals(s=double)
    cdef double _prefix(self, Py_ssize_t i) except? -1.0
    cpdef double get(self, Py_ssize_t pos)
    cpdef double total(self)
    cpdef double remaining(self, Py_ssize_t pos)
    @cython.locals(old=double, new=double)
    cpdef observe(self, Py_ssize_t pos, double measured_s)

@cython.locals(e=DurationEstimates)
cpdef DurationEstimates _restore(list est, list tree)
