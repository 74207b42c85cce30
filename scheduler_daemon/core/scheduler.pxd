# Cython declarations for scheduler.py (augmenting .pxd; tools/build_sim.py).
cimport cython

from scheduler_daemon.core.estimates cimport DurationEstimates
from scheduler_daemon.core.gpu_specs cimport Resources
from scheduler_daemon.core.jobs cimport Job, ModelEntry, is_terminal
from scheduler_daemon.core.policies cimport Policy
from scheduler_daemon.core.queues cimport ReadyQueue

cdef long long _POOL
cdef long _MAX_RUN

cdef class SchedulerCore:
    cdef public Policy policy
    cdef public object fits
    cdef public Resources capacity
    cdef public long max_extra
    cdef public bint shed, bounded
    cdef public long long max_out
    cdef public double quantum_s
    cdef public bint stoppable, overlapping
    cdef set _runs
    cdef public ReadyQueue queue
    cdef readonly long long _used_threads, _used_blocks, _used_regs, _used_smem
    cdef public long extra, inflight
    cdef list _finished
    cdef dict _type_ids
    cdef long long _streams
    cdef dict _tenant_streams, _holders, _parked
    cdef bint _checks_slack, _admission
    cdef object _gate
    cdef int _stream_mode

    cpdef add(self, Job job, double now)
    @cython.locals(policy=Policy, k=double, kj=double, j=Job, nk=long)
    cdef _ready(self, Job job, double now)
    cpdef bint abort(self, Job job, double now, state=*) except -1
    @cython.locals(queue=ReadyQueue, policy=Policy, job=Job, demand=Resources, cap=Resources,
                   n=long)
    cpdef Job next_dispatch(self, double now)
    cdef list _slots(self, gate, Job job)
    cdef bint _fits_sms(self, Job job) except -1
    cpdef on_started(self, Job job, double now)
    @cython.locals(cur=long)
    cdef Job _dispatch(self, Job job, double now, long n)
    @cython.locals(cur=long)
    cdef long _run_count(self, Job job) except -1
    @cython.locals(demands=tuple, d=Resources, t=cython.longlong, b=cython.longlong,
                   r=cython.longlong, m=cython.longlong, k=long)
    cdef Resources _run_demand(self, ModelEntry model, long cur, long n)
    @cython.locals(est=DurationEstimates, left=double, e=double, k=long, n=long, q=double)
    cdef long _run_len(self, ModelEntry model, long cur) except -1
    cdef long long _stream(self, Job job) except? -1
    @cython.locals(idx=long, n=long, i=long, est=DurationEstimates)
    cpdef on_complete(self, Job job, double now, double duration_s, list per_kernel=*)
    cpdef on_fail(self, Job job, double now, error, long ran=*)
    @cython.locals(demand=Resources)
    cdef _release(self, Job job, long idx)
    cdef _end(self, Job job, state, double now)
    cdef _release_gate(self, Job job, double now)
    cpdef bint has_finished(self)
    cpdef list drain_finished(self)
