# Cython declarations for jobs.py (augmenting .pxd; tools/build_sim.py).
from scheduler_daemon.core.estimates cimport DurationEstimates

cdef class ModelEntry:
    cdef public object key, name
    cdef public tuple kernels, demands, shares
    cdef public DurationEstimates estimates
    cdef public long type_id, jobs_done

cdef class Job:
    cdef public object id, tenant
    cdef public ModelEntry model
    cdef public double slo_s
    cdef public object priority
    cdef public double arrival, deadline
    cdef public long next_kernel, done_kernels, outstanding, cur, run_len
    cdef public long long stream
    cdef public object state
    cdef public double exec_s
    cdef public object first_start, finish
    cdef public bint late
    cdef public long long qseq
    cdef public bint in_queue, extra, stop
    cdef public object payload, owner, error
    cdef public long long nbytes
    cpdef double remaining_s(self)

cpdef bint is_terminal(object state)
