# Cython declarations for pump.py (augmenting .pxd; tools/build_sim.py).
cimport cython

from scheduler_daemon.clock cimport Environment
from scheduler_daemon.core.jobs cimport Job
from scheduler_daemon.core.scheduler cimport SchedulerCore

cdef class Pump:
    cdef public SchedulerCore core
    cdef public object device
    cdef public Environment env
    cdef object _launch
    @cython.locals(core=SchedulerCore, job=Job)
    cpdef dispatch(self, double now)
    cpdef bint launch(self, Job job, double now, launch) except -1
