# Cython declarations for clock.py (augmenting .pxd; tools/build_sim.py).
cimport cython

cdef double INF

cdef class Timer:
    cdef public double at
    cdef public object fn
    cdef public bint cancelled
    cdef public object arg
    cdef public bint has_arg
    cdef public long long seq

@cython.locals(pos=Py_ssize_t, parentpos=Py_ssize_t, parent=Timer)
cdef int _timer_push(list heap, Timer t) except -1
@cython.locals(pos=Py_ssize_t, child=Py_ssize_t, right=Py_ssize_t, n=Py_ssize_t, c=Timer, r=Timer,
               last=Timer, ret=Timer, parentpos=Py_ssize_t, parent=Timer)
cdef Timer _timer_pop(list heap)

cdef class Environment:
    cdef public double now
    cdef readonly list _heap
    cdef long long _counter
    cpdef Timer schedule(self, double delay, fn)
    @cython.locals(timer=Timer)
    cpdef Timer schedule_at(self, double at, fn)
    @cython.locals(timer=Timer)
    cpdef Timer call_at(self, double at, fn, arg)
    cpdef Timer rearm(self, Timer timer, double at)
    @cython.locals(heap=list, timer=Timer)
    cpdef double peek(self) except? -1.0
    @cython.locals(timer=Timer)
    cpdef bint step(self) except -1
    @cython.locals(end=double)
    cpdef run(self, until=*)
    cpdef double tick(self) except? -1.0
    @cython.locals(n=long)
    cpdef long run_due(self) except -1

cdef class RealtimeEnvironment(Environment):
    cdef double _t0, _factor
    cpdef double tick(self) except? -1.0
    @cython.locals(timer=Timer, at=double, wait=double)
    cpdef bint step(self) except -1
