# Cython declarations for simulation.py (augmenting .pxd; tools/build_sim.py).
cimport cython

from scheduler_daemon.clock cimport Environment
from scheduler_daemon.core.jobs cimport Job
from scheduler_daemon.core.scheduler cimport SchedulerCore
from scheduler_daemon.pump cimport Pump

cdef class VirtualRun:
    cdef public SchedulerCore core
    cdef public object device
    cdef public Environment env
    cdef public Pump pump
    cdef public double notice_s, launch_s
    cdef double _host_free, _launch_free
    cdef public list finished
    cdef public object on_finished
    @cython.locals(at=double)
    cdef _later(self, fn, arg)
    @cython.locals(now=double, at=double, busy=double)
    cpdef _launch(self, Job job)
    cpdef _on_complete(self, Job job, double duration_s, list per_kernel)
    cpdef _on_started(self, Job job)
    @cython.locals(core=SchedulerCore, done=list)
    cpdef _pump(self)
