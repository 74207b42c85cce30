# The compiled ``untrack`` (see _gctrack.py): inlined into the modules that cimport it.
cdef extern from "Python.h":
    void PyObject_GC_UnTrack(void *op)

cdef inline void untrack(object obj) noexcept:
    PyObject_GC_UnTrack(<void *>obj)
