# Cython declarations for simgpu.py (augmenting .pxd: the .py is the source and runs as it is
# where this is not compiled; tools/build_sim.py). Per-SM arrays are typed memoryviews over the
# same array('q') buffers, so the placement loops are C loops.
cimport cython

cdef double INF

from scheduler_daemon.clock cimport Environment, Timer
from scheduler_daemon.core.jobs cimport Job
from scheduler_daemon.devices cimport _gctrack

cdef class _Shape:
    cdef public long long threads, regs, smem, cap, tried, lo, hi

cdef class _KInfo:
    cdef public object spec
    cdef public _Shape shape
    cdef public long long grid, resident
    cdef public double block_work, mem_frac, comp_frac

cdef class _Kernel:
    cdef public Job job
    cdef public _Shape shape
    cdef public long long grid, left, running
    cdef public double block_work, bw, cw, mem_frac, comp_frac
    cdef public object start
    cdef public Py_ssize_t qi
    cdef public _Kernel pred
    cdef public bint done
    cdef public double arrived
    cdef public long long stream
    cdef public list durs
    cdef public bint last
    cdef public double due

@cython.locals(kern=_Kernel)
cdef _Kernel _new_kernel(Job job, _KInfo info, Py_ssize_t qi, _Kernel pred)

cdef class _SimGpuBase:
    cdef public object spec
    cdef public double speed, quantum, launch_delay
    cdef public object limits
    cdef readonly Py_ssize_t _sms
    cdef long long _max_grids
    cdef object _freebuf
    cdef long long[::1] _free
    cdef long long[::1] _fitv
    cdef long long[::1] _counts
    cdef long long[::1] _freed
    cdef Py_ssize_t _nslots
    cdef long long[::1] _slab
    cdef double[::1] _gd
    cdef long long[::1] _gi
    cdef list _gkern
    cdef long long[::1] _heap
    cdef Py_ssize_t _nheap
    cdef long long[::1] _spare
    cdef Py_ssize_t _nspare
    cdef long long[::1] _placed
    cdef public list queues
    cdef list _heads
    cdef Py_ssize_t _nq
    cdef unsigned long long _nonempty, _ready, _waiting
    cdef readonly dict _tails
    cdef long long _seq
    cdef double _timer_at
    cdef Timer _timer, _timer_spare, _arrival_timer, _arrival_spare
    cdef double _demand_m, _demand_c
    cdef readonly long long _grids
    cdef dict _shapes, _infos
    cdef readonly object _parts
    cdef double _last
    cdef Py_ssize_t _rr
    cdef long long _sm_rr
    cdef readonly long long _threads_used, _threads_total
    cdef readonly bint _dispatch_due
    cdef long long _gen
    cdef public Environment env
    cdef public object on_complete, on_fail, on_started
    cdef object _arrival_cb, _arrive_cb, _timer_cb
    cdef public long long kernels_done
    cdef public double busy_s, comp_s, mem_s

    cpdef _Shape _shape(self, k)
    @cython.locals(got=_KInfo, shape=_Shape, mine=_Shape)
    cpdef _KInfo _info(self, k, part=*)
    @cython.locals(free=cython.longlong[::1], freed=cython.longlong[::1], sms=Py_ssize_t, threads=cython.longlong,
                   regs=cython.longlong, smem=cython.longlong, tried=cython.longlong,
                   s=Py_ssize_t)
    cdef bint _room(self, _Shape shape) except -1
    @cython.locals(free=cython.longlong[::1], fit=cython.longlong[::1], sms=Py_ssize_t, threads=cython.longlong,
                   regs=cython.longlong, smem=cython.longlong, total=cython.longlong,
                   s=Py_ssize_t, f=cython.longlong, x=cython.longlong, lo=Py_ssize_t,
                   hi=Py_ssize_t)
    cdef long long _fit_into(self, _Shape shape) except -1
    @cython.locals(free=cython.longlong[::1], info=_KInfo, shape=_Shape, need=cython.longlong, sms=Py_ssize_t,
                   threads=cython.longlong, regs=cython.longlong, smem=cython.longlong,
                   total=cython.longlong, s=Py_ssize_t, f=cython.longlong, x=cython.longlong)
    cpdef bint fits_now(self, k) except -1
    @cython.locals(free=cython.longlong[::1], slab=cython.longlong[::1], sms=Py_ssize_t,
                   threads=cython.longlong, regs=cython.longlong, smem=cython.longlong,
                   total=cython.longlong, s=Py_ssize_t, f=cython.longlong, x=cython.longlong,
                   lo=Py_ssize_t, hi=Py_ssize_t)
    cdef long long _fit_place(self, _Shape shape, Py_ssize_t row) except -1
    @cython.locals(pred=_Kernel, kern=_Kernel, stream=cython.longlong, env=Environment,
                   qi=Py_ssize_t, n=Py_ssize_t, i=Py_ssize_t, cur=Py_ssize_t, now=double,
                   step=double, durs=list, at=double)
    cpdef launch(self, Job job)
    @cython.locals(env=Environment, now=double, qi=Py_ssize_t, q=object, bit=cython.ulonglong,
                   timer=Timer)
    cpdef _arrive(self, _Kernel kern)
    cpdef _arrival_dispatch(self)
    @cython.locals(dt=double)
    cdef _advance(self, double now)
    @cython.locals(fit=cython.longlong[::1], counts=cython.longlong[::1], sms=Py_ssize_t, top=Py_ssize_t, i=Py_ssize_t,
                   s=Py_ssize_t,
                   f=cython.longlong, level=cython.longlong, placed=cython.longlong,
                   below=cython.longlong, ge=cython.longlong, rest=cython.longlong,
                   start=cython.longlong, rank=cython.longlong, r=cython.longlong)
    cdef _spread(self, long long n, Py_ssize_t lo, Py_ssize_t hi)
    @cython.locals(old=Py_ssize_t, new=Py_ssize_t, sms=Py_ssize_t, i=Py_ssize_t,
                   nspare=Py_ssize_t, slot=Py_ssize_t)
    cpdef _grow(self, Py_ssize_t n)
    cdef Py_ssize_t _take_slot(self) except -1
    @cython.locals(heap=cython.longlong[::1], gd=cython.double[::1], gi=cython.longlong[::1], end=double, seq=cython.longlong,
                   pos=Py_ssize_t, parentpos=Py_ssize_t, parent=Py_ssize_t, pend=double)
    cdef int _heap_push(self, Py_ssize_t slot) except -1
    @cython.locals(heap=cython.longlong[::1], gd=cython.double[::1], gi=cython.longlong[::1], n=Py_ssize_t, last=Py_ssize_t, ret=Py_ssize_t,
                   lend=double, lseq=cython.longlong, pos=Py_ssize_t, child=Py_ssize_t,
                   c=Py_ssize_t, right=Py_ssize_t, r=Py_ssize_t)
    cdef Py_ssize_t _heap_pop(self) except -1
    @cython.locals(free=cython.longlong[::1], fit=cython.longlong[::1], slab=cython.longlong[::1], gd=cython.double[::1], queues=list, heads=list,
                   nplaced=Py_ssize_t, q=object,
                   nq=Py_ssize_t, sms=Py_ssize_t, gen=cython.longlong,
                   started=list, t0=double, start=Py_ssize_t, visit=cython.ulonglong,
                   i=Py_ssize_t, qi=Py_ssize_t, bit=cython.ulonglong, head=_Kernel,
                   pred=_Kernel, shape=_Shape, total=cython.longlong, n=cython.longlong,
                   slot=Py_ssize_t, row=Py_ssize_t, threads=cython.longlong,
                   regs=cython.longlong, smem=cython.longlong, s=Py_ssize_t,
                   b=cython.longlong, arrived=double, begin=double, over_m=double,
                   over_c=double, quantum=double, ideal=double, end=double,
                   lo=Py_ssize_t, hi=Py_ssize_t)
    cpdef list _dispatch(self, double now, base=*)
    @cython.locals(now=double, kern=_Kernel)
    cdef _report_started(self, list started)
    @cython.locals(at=double, timer=Timer)
    cdef _reschedule(self)
    @cython.locals(free=cython.longlong[::1], slab=cython.longlong[::1], freed=cython.longlong[::1], gd=cython.double[::1], gen=cython.longlong,
                   now=double, sms=Py_ssize_t, finished_kernels=list, slot=Py_ssize_t,
                   ideal=double, freed_at=double, kern=_Kernel, shape=_Shape,
                   threads=cython.longlong, regs=cython.longlong, smem=cython.longlong,
                   row=Py_ssize_t, s=Py_ssize_t, b=cython.longlong, n=cython.longlong,
                   durs=list)
    cpdef _on_timer(self)
