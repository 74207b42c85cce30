# Cython declarations for policies.py (augmenting .pxd; tools/build_sim.py).
from scheduler_daemon.core.jobs cimport Job
from scheduler_daemon.core.queues cimport KeyOrder

cdef class Policy(KeyOrder):
    cpdef double key(self, Job job, double now) except? -1.0
    cpdef bint hopeless(self, Job job, double now) except -1

cdef class Fifo(Policy):
    cpdef double key(self, Job job, double now) except? -1.0

cdef class Srpt(Policy):
    cpdef double key(self, Job job, double now) except? -1.0

cdef class Edf(Policy):
    cpdef double key(self, Job job, double now) except? -1.0

cdef class Paella(Srpt):
    cdef public double threshold

cdef class Slo(Policy):
    cpdef double key(self, Job job, double now) except? -1.0

cdef class SloSrpt(Slo):
    cpdef double key(self, Job job, double now) except? -1.0

cdef class HardwareOrder(Policy):
    cpdef double key(self, Job job, double now) except? -1.0

cdef class CudaSingleStream(HardwareOrder):
    pass

cdef class CudaMultiStream(HardwareOrder):
    pass

cdef class Mps(HardwareOrder):
    pass

cdef class Triton(HardwareOrder):
    cdef public dict instance_groups

cdef class FifoJobByJob(HardwareOrder):
    pass

cdef class FifoKernelByKernel(Fifo):
    pass

cdef class Clockwork(HardwareOrder):
    cpdef double key(self, Job job, double now) except? -1.0
