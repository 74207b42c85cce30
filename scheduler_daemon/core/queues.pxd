# Cython declarations for queues.py (augmenting .pxd; tools/build_sim.py).
cimport cython

from scheduler_daemon.core.jobs cimport Job

cdef class KeyOrder:
    cpdef double key(self, Job job, double now) except? -1.0

cdef class ReadyQueue:
    cpdef push(self, Job job, double now)
    cpdef Job peek(self)
    cpdef Job pop(self)
    cpdef discard(self, Job job)

cdef class _Entry:
    cdef public Job job
    cdef public double key
    cdef public long long qseq, seq

@cython.locals(pos=Py_ssize_t, parentpos=Py_ssize_t, parent=_Entry)
cdef int _entry_push(list heap, _Entry e) except -1
@cython.locals(pos=Py_ssize_t, child=Py_ssize_t, right=Py_ssize_t, n=Py_ssize_t, c=_Entry,
               r=_Entry, last=_Entry, ret=_Entry)
cdef _Entry _entry_pop(list heap)

cdef class HeapQueue(ReadyQueue):
    cdef KeyOrder _order
    cdef object _key
    cdef readonly list _heap
    cdef long long _counter
    cdef Py_ssize_t _live
    cdef list _pool
    @cython.locals(e=_Entry, order=KeyOrder, pool=list)
    cpdef push(self, Job job, double now)
    cdef _recycle(self, _Entry e)
    @cython.locals(heap=list, e=_Entry, job=Job)
    cpdef Job peek(self)
    cpdef double head_key(self)
    cpdef Job pop(self)
    cpdef discard(self, Job job)

cdef class FairQueue(ReadyQueue):
    cdef object _key
    cdef double _threshold
    cdef dict _by_type
    cdef public dict deficit
    cdef Py_ssize_t _live
    cdef HeapQueue _queue(self, long type_id)
    @cython.locals(best_q=HeapQueue, starved_q=HeapQueue, q=HeapQueue, best_key=double,
                   starved=double, k=double)
    cdef HeapQueue _choose(self)
    cpdef push(self, Job job, double now)
    cpdef Job peek(self)
    @cython.locals(q=HeapQueue, tq=HeapQueue, credit=double)
    cpdef Job pop(self)
    @cython.locals(q=HeapQueue)
    cpdef discard(self, Job job)
