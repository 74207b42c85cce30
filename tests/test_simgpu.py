"""Tests of the simulated GPU (``scheduler_daemon/devices/simgpu.py``).

``CheckedSimGpu`` wraps the device's event handlers (``launch``, ``_dispatch``, ``_on_timer``)
and checks, after every one of them, the per-SM resource accounting and the dispatcher's work
conservation; it also records when every kernel was launched, first dispatched (start) and
finished, so the tests can check stream and hardware-queue order afterwards, against a global
event sequence number (times alone cannot tell apart events at the same instant).
"""
from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler_daemon.clock import Environment
from scheduler_daemon.core.gpu_specs import gpu_spec
from scheduler_daemon.core.jobs import Job, JobState, ModelEntry
from scheduler_daemon.core.policies import make_policy
from scheduler_daemon.core.scheduler import SchedulerCore
from scheduler_daemon.devices.simgpu import SimGpu
from scheduler_daemon.simulation import VirtualRun
from scheduler_daemon.wire.kernels import KernelSpec

T4 = gpu_spec("T4")
H100 = gpu_spec("H100")
US = 1e-6
MS = 1e-3


# -- the checked device ----------------------------------------------------------------------
@dataclass
class KRec:
    """What the checker knows about one launched kernel."""
    kern: object
    job: Job
    cur: int
    stream: int
    queue: int
    launch_t: float
    launch_seq: int
    start_t: float | None = None
    start_seq: int | None = None
    finish_t: float | None = None
    finish_seq: int | None = None
    reported: list = field(default_factory=list)   # durations passed to on_complete


class CheckedSimGpu(SimGpu):
    """A SimGpu that checks its invariants after every event and records kernel timelines."""

    def __init__(self, spec, **kw):
        super().__init__(spec, **kw)
        self.recs: list[KRec] = []
        self._by_kern: dict[int, KRec] = {}
        self._live: dict[int, KRec] = {}          # registered kernels still in a queue
        self._unfinished_by_job: dict[int, deque] = defaultdict(deque)
        self._seq_no = 0
        self._launch_cur = 0
        self._qindex = {id(q): i for i, q in enumerate(self.queues)}
        self.checks = 0
        self.fails: list[tuple[Job, float, str]] = []

    # bookkeeping ---------------------------------------------------------------------------
    def _tick(self) -> int:
        self._seq_no += 1
        return self._seq_no

    def start(self, env, on_complete, on_fail):
        def complete(job, now, duration):
            # kernels of one job complete in launch order (one stream, or one at a time)
            rec = self._unfinished_by_job[id(job)].popleft()
            assert rec.finish_t is not None and rec.finish_t == now, (rec, now)
            rec.reported.append(duration)
            on_complete(job, now, duration)

        def fail(job, now, msg):
            self.fails.append((job, now, msg))
            on_fail(job, now, msg)
        super().start(env, complete, fail)

    def _register_new(self) -> None:
        """Register the kernel being launched (the only queued kernel not yet known)."""
        for qi, q in enumerate(self.queues):
            for kern in q:
                if id(kern) not in self._by_kern:
                    job = kern.job
                    assert qi == job.stream % len(self.queues)
                    rec = KRec(kern, job, self._launch_cur, job.stream, qi, self.env.now,
                               self._tick())
                    self.recs.append(rec)
                    self._by_kern[id(kern)] = rec
                    self._live[id(kern)] = rec
                    self._unfinished_by_job[id(job)].append(rec)

    def _sweep(self) -> None:
        """Kernels that left their queue since the last look have finished, now."""
        queued = {id(k) for q in self.queues for k in q}
        for key in [k for k in self._live if k not in queued]:
            rec = self._live.pop(key)
            assert rec.finish_t is None, "a kernel finished twice"
            assert rec.start_t is not None, "a kernel finished without starting"
            rec.finish_t = self.env.now
            rec.finish_seq = self._tick()

    def _note_starts(self) -> None:
        for q in self.queues:
            for kern in q:
                rec = self._by_kern.get(id(kern))
                if kern.start is not None and rec is not None and rec.start_t is None:
                    # it starts when the resources it took became free: now, or (events
                    # being rounded up to the quantum) earlier, never before its launch
                    assert rec.launch_t <= kern.start <= self.env.now
                    rec.start_t = kern.start
                    rec.start_seq = self._tick()

    # wrapped events --------------------------------------------------------------------------
    def launch(self, job):
        self._launch_cur = job.cur
        self._sweep()
        super().launch(job)
        self._register_new()
        self._note_starts()
        self.check()

    def _dispatch(self, now, base=None):
        self._sweep()
        self._register_new()          # dispatched from launch before launch returned
        super()._dispatch(now, base)
        self._note_starts()
        self.check()

    def _on_timer(self):
        super()._on_timer()
        self._sweep()
        self._note_starts()
        self.check()

    # invariants --------------------------------------------------------------------------------
    def check(self) -> None:
        self.checks += 1
        lim = self.limits[:, None]
        free = self.free
        # per-SM limits: never negative, never more than the SM has
        assert (free >= 0).all(), f"over-subscribed SM: {np.argwhere(free < 0)[:5]}"
        assert (free <= lim).all(), f"freed more than held: {np.argwhere(free > lim)[:5]}"
        # the resident block groups account exactly for what is not free
        held = np.zeros_like(free)
        for _, _, kern, take, n, *_ in self._finishing:
            assert int(take.sum()) == n and (take >= 0).all()
            held += kern.res * take
        assert (held + free == lim).all(), "resources leaked or double-freed"
        assert self._threads_used == int(held[0].sum())
        assert len(self._finishing) == self._resident
        for q in self.queues:
            for i, kern in enumerate(q):
                assert kern.left >= 0 and kern.running >= 0
                if i:   # only the head of a hardware queue may have started
                    assert kern.start is None and kern.running == 0, "non-head kernel started"
            # work conservation: a head with blocks left has nowhere to put even one of them
            # (launches of one instant are placed together, by an event at that instant)
            if q and q[0].left > 0 and not self._dispatch_due:
                head = q[0]
                fit = free[1].copy()
                for d, r in head.dims:
                    np.minimum(fit, free[d] // r, out=fit)
                assert fit.max() == 0, (f"idle SMs could take {int(fit.sum())} blocks of a "
                                        f"waiting queue head")

    # after the run -----------------------------------------------------------------------------
    def check_final(self) -> None:
        assert not self._finishing and not any(self.queues)
        assert (self.free == self.limits[:, None]).all()
        assert self._threads_used == 0 and self.utilisation() == 0.0
        assert not self._live
        assert self.kernels_done == len(self.recs)
        for rec in self.recs:
            # every launched kernel started, finished and was reported exactly once
            assert rec.start_t is not None and rec.finish_t is not None, rec
            assert len(rec.reported) == 1, rec
            assert rec.reported[0] == pytest.approx(rec.finish_t - rec.start_t, abs=1e-12)
            assert rec.launch_t <= rec.start_t <= rec.finish_t
            assert rec.launch_seq < rec.start_seq < rec.finish_seq
        # in order per stream and per hardware queue
        for key in ("stream", "queue"):
            groups = defaultdict(list)
            for rec in self.recs:          # recs are in launch order
                groups[getattr(rec, key)].append(rec)
            for recs in groups.values():
                for prev, nxt in zip(recs, recs[1:]):
                    assert prev.finish_seq < nxt.finish_seq, f"{key}: completed out of order"
                    assert nxt.start_seq > prev.finish_seq, \
                        f"{key}: a kernel started before its predecessor finished"
                    # events are rounded up to the quantum; the successor starts at the
                    # exact time its predecessor's blocks freed the SMs
                    assert nxt.start_t >= prev.finish_t - self.quantum - 1e-12


def kernel_floor(spec, k, speed) -> float:
    """A kernel can never take less than one wave (one block's solo time)."""
    res = SimGpu(spec)._shape(k)
    waves = -(-k.grid // res[2])
    return k.est_us * US * speed / waves


# -- strategies ------------------------------------------------------------------------------
@st.composite
def kernels(draw, spec, name="k"):
    block = draw(st.sampled_from([32, 64, 128, 256, 512, 1024]) | st.integers(1, 1024))
    regs = draw(st.integers(1, min(255, spec.regs_per_sm // block)))
    smem = draw(st.sampled_from([0, 0, 1024, 16 * 1024, 48 * 1024, spec.smem_per_sm])
                | st.integers(0, spec.smem_per_sm))
    grid = draw(st.integers(1, 4 * spec.sms) | st.integers(1, 2000))
    est = draw(st.floats(0.0, 300.0) | st.sampled_from([0.0, 1.0, 10.0, 100.0]))
    frac = st.sampled_from([0.0, 0.5, 1.0]) | st.floats(0.0, 1.0)
    return KernelSpec(name, est_us=est, grid=grid, block=block, smem=smem, regs=regs,
                      mem_frac=draw(frac), comp_frac=draw(frac))


SPECS = st.sampled_from([T4, H100])


@st.composite
def direct_workloads(draw):
    spec = draw(SPECS)
    n = draw(st.integers(1, 14))
    launches = []
    for i in range(n):
        t = draw(st.sampled_from([0.0, 0.0, 50 * US]) | st.floats(0.0, 1 * MS))
        stream = draw(st.integers(0, 9))
        launches.append((t, stream, draw(kernels(spec, f"k{i}"))))
    launches.sort(key=lambda x: x[0])
    return dict(spec=spec, launches=launches, hw_queues=draw(st.sampled_from([1, 2, 3, 8, 32])),
                speed=draw(st.sampled_from([1.0, 0.5, 2.0])),
                quantum=draw(st.sampled_from([0.0, 0.5])))


def run_direct(w):
    """Launch each kernel straight on the device (one single-kernel Job per launch)."""
    spec = w["spec"]
    env = Environment()
    dev = CheckedSimGpu(spec, hw_queues=w["hw_queues"], speed=w["speed"],
                        quantum_us=w["quantum"])
    done = []
    dev.start(env, lambda j, now, d: done.append((j.id, now, d)),
              lambda j, now, m: pytest.fail(f"unexpected failure: {m}"))
    jobs = []
    for i, (t, stream, k) in enumerate(w["launches"]):
        j = Job(i, "t", ModelEntry(f"m{i}", f"m{i}", [k], spec.capacity), 0.0, t)
        j.cur, j.stream = 0, stream
        jobs.append(j)
        env.schedule_at(t, lambda j=j: dev.launch(j))
    env.run()
    return dev, done, jobs


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(w=direct_workloads())
def test_direct_launches_invariants(w):
    dev, done, jobs = run_direct(w)
    dev.check_final()
    assert dev.checks > 0
    # every launched kernel completed exactly once
    assert Counter(jid for jid, _, _ in done) == Counter(range(len(jobs)))
    spec, speed = w["spec"], w["speed"]
    for rec in dev.recs:
        k = rec.job.model.kernels[0]
        assert rec.finish_t - rec.start_t >= kernel_floor(spec, k, speed) * (1 - 1e-9) - 1e-15
    # determinism: the same inputs give identical completions
    dev2, done2, _ = run_direct(w)
    assert done2 == done
    assert [(r.start_t, r.finish_t) for r in dev2.recs] == [(r.start_t, r.finish_t)
                                                            for r in dev.recs]


# -- through the scheduler core --------------------------------------------------------------
@st.composite
def core_workloads(draw):
    spec = draw(SPECS)
    models = []
    for mi in range(draw(st.integers(1, 3))):
        ks = [draw(kernels(spec, f"m{mi}.{i}")) for i in range(draw(st.integers(1, 4)))]
        models.append(ks)
    jobs = []
    for n in range(draw(st.integers(1, 8))):
        jobs.append((draw(st.floats(0.0, 0.5 * MS)), draw(st.integers(0, len(models) - 1)),
                     draw(st.sampled_from(["a", "b", "c"]))))
    return dict(spec=spec, models=models, jobs=jobs,
                policy=draw(st.sampled_from(["cuda-ms", "mps", "cuda-ss", "srpt", "triton",
                                             "fifo-jbj", "paella"])),
                hw_queues=draw(st.sampled_from([1, 2, 8, 32])),
                max_extra=draw(st.integers(0, 2)),
                quantum=draw(st.sampled_from([0.0, 0.5])))


def run_core(w):
    spec = w["spec"]
    core = SchedulerCore(make_policy(w["policy"]), spec.capacity, max_extra=w["max_extra"])
    dev = CheckedSimGpu(spec, hw_queues=w["hw_queues"], quantum_us=w["quantum"])
    run = VirtualRun(core, dev)
    entries = [core.make_model(f"m{i}", f"m{i}", ks) for i, ks in enumerate(w["models"])]
    jobs = [Job(i, tenant, entries[mi], 0.0, t) for i, (t, mi, tenant) in enumerate(w["jobs"])]
    for j in jobs:
        run.submit_at(j)
    run.run()
    return core, dev, jobs


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(w=core_workloads())
def test_virtual_run_invariants(w):
    core, dev, jobs = run_core(w)
    dev.check_final()
    assert all(j.state is JobState.DONE for j in jobs), jobs
    assert core.inflight == 0 and len(core) == 0
    assert len(dev.recs) == sum(len(j.model.kernels) for j in jobs)
    # every kernel of every job ran exactly once, and a job's kernels completed in order
    per_job = defaultdict(list)
    for rec in sorted(dev.recs, key=lambda r: r.finish_seq):
        per_job[rec.job.id].append(rec.cur)
    for j in jobs:
        assert per_job[j.id] == list(range(len(j.model.kernels)))
    # determinism
    _, dev2, jobs2 = run_core(w)
    assert [j.finish for j in jobs2] == [j.finish for j in jobs]
    assert [(r.job.id, r.cur, r.start_t, r.finish_t) for r in dev2.recs] == \
        [(r.job.id, r.cur, r.start_t, r.finish_t) for r in dev.recs]


def test_checker_catches_idle_sms_and_leaks():
    """The checker itself: a waiting head that would fit, or leaked resources, are reported."""
    from scheduler_daemon.devices.simgpu import _Kernel

    env = Environment()
    dev = CheckedSimGpu(T4, quantum_us=0)
    dev.start(env, lambda *a: None, lambda *a: None)
    big = Job(0, "t", ModelEntry("a", "a", [KernelSpec("a", 10.0, grid=20, block=1024)],
                                 T4.capacity), 0.0, 0.0)
    big.cur, big.stream = 0, 0
    dev.launch(big)
    env.run(until=0.0)  # the launch is placed by an event at this instant
    dev.check()
    k = KernelSpec("b", 10.0, grid=2, block=1024)
    small = Job(1, "t", ModelEntry("b", "b", [k], T4.capacity), 0.0, 0.0)
    res, dims, _ = dev._shape(k)
    # queued behind the hardware's back, never dispatched although 20 SMs are idle
    dev.queues[1].append(_Kernel(small, res, dims, 2, 1e-5, 2, 0.0, 0.0, dev.queues[1]))
    with pytest.raises(AssertionError, match="idle SMs"):
        dev.check()
    dev.queues[1].clear()
    idle = int(np.flatnonzero(dev.free[0] == T4.threads_per_sm)[0])
    dev.free[0, idle] -= 1
    with pytest.raises(AssertionError, match="leaked"):
        dev.check()
    dev.free[0, idle] += 1
    dev.check()


# -- solo timing -----------------------------------------------------------------------------
def solo(spec, k, quantum_us=0.0, speed=1.0, at=0.0):
    env = Environment()
    dev = CheckedSimGpu(spec, quantum_us=quantum_us, speed=speed)
    out = []
    dev.start(env, lambda j, now, d: out.append((now, d)), lambda *a: pytest.fail("failed"))
    j = Job(0, "t", ModelEntry("m", "m", [k], spec.capacity), 0.0, at)
    j.cur, j.stream = 0, 3
    env.schedule_at(at, lambda: dev.launch(j))
    env.run()
    dev.check_final()
    assert len(out) == 1
    return out[0], dev


def cap_of(spec, k) -> int:
    return SimGpu(spec)._shape(k)[2]


@pytest.mark.parametrize("spec", [T4, H100], ids=lambda s: s.name)
@pytest.mark.parametrize("shape", [
    dict(grid=1, block=32),                          # one block
    dict(grid=40, block=1024),                       # the whole T4, one wave
    dict(grid=100, block=256, regs=64),
    dict(grid=1000, block=256),                      # many waves
    dict(grid=333, block=512, smem=40 * 1024),       # smem-limited, uneven last wave
    dict(grid=7, block=1024, regs=64, mem_frac=1.0, comp_frac=1.0),
    dict(grid=5000, block=128, regs=128, mem_frac=1.0),
])
@pytest.mark.parametrize("speed", [1.0, 2.5])
def test_solo_kernel_takes_its_estimate_exactly(spec, shape, speed):
    k = KernelSpec("k", est_us=123.0, **shape)
    (now, dur), dev = solo(spec, k, speed=speed)
    assert now == pytest.approx(123.0 * US * speed, rel=1e-9)
    assert dur == pytest.approx(123.0 * US * speed, rel=1e-9)
    assert dev.kernels_done == 1


def test_wave_counts_are_what_the_shapes_imply():
    assert cap_of(T4, KernelSpec("k", 1.0, grid=40, block=1024)) == 40
    assert cap_of(T4, KernelSpec("k", 1.0, grid=1, block=256)) == 160
    assert cap_of(T4, KernelSpec("k", 1.0, grid=1, block=32)) == 16 * 40        # blocks/SM
    assert cap_of(T4, KernelSpec("k", 1.0, grid=1, block=256, regs=128)) == 2 * 40
    assert cap_of(T4, KernelSpec("k", 1.0, grid=1, block=32, smem=40 * 1024)) == 40
    assert cap_of(H100, KernelSpec("k", 1.0, grid=1, block=1024)) == 2 * 132
    assert cap_of(T4, KernelSpec("k", 1.0, grid=1, block=1024, regs=128)) == 0


def test_multi_wave_kernel_runs_in_waves():
    """A 2.5-wave kernel alone: blocks start in three groups, est/3 apart."""
    k = KernelSpec("k", est_us=300.0, grid=100, block=1024)     # 40 per wave on the T4
    env = Environment()
    dev = SimGpu(T4, quantum_us=0)
    starts = []
    orig = dev._dispatch

    def spy(now, base=None):
        before = dev._seq
        orig(now, base)
        if dev._seq != before:             # one block group pushed: a wave
            assert len(dev._finishing) == 1
            starts.append((now, dev._finishing[0][4]))
    dev._dispatch = spy
    dev.start(env, lambda *a: None, lambda *a: None)
    j = Job(0, "t", ModelEntry("m", "m", [k], T4.capacity), 0.0, 0.0)
    j.cur, j.stream = 0, 0
    dev.launch(j)
    env.run()
    assert [t for t, _ in starts] == pytest.approx([0.0, 100 * US, 200 * US])
    assert [n for _, n in starts] == [40, 40, 20]


@pytest.mark.parametrize("spec", [T4, H100], ids=lambda s: s.name)
@pytest.mark.parametrize("est", [1.0, 10.0, 12.3, 101.7])
@pytest.mark.parametrize("at", [0.0, 1.2345 * MS])
def test_solo_single_wave_kernel_within_one_quantum(spec, est, at):
    k = KernelSpec("k", est_us=est, grid=spec.sms, block=256)
    (now, dur), _ = solo(spec, k, quantum_us=0.5, at=at)
    assert est * US - 1e-12 <= dur < est * US + 0.5 * US
    # it ends on the 0.5 us grid
    assert now / (0.5 * US) == pytest.approx(round(now / (0.5 * US)), abs=1e-6)


def test_solo_multi_wave_kernel_within_one_quantum():
    k = KernelSpec("k", est_us=101.0, grid=4000, block=1024)   # 100 waves of 1.01 us on a T4
    (now, dur), _ = solo(T4, k, quantum_us=0.5)
    assert dur < 101.0 * US + 0.5 * US      # actually 150 us: each 1.01 us wave becomes 1.5 us


# -- head-of-line blocking -------------------------------------------------------------------
def hol_run(policy, hw_queues, a_kernels, b_kernel, b_at=0.1 * MS, max_extra=2, probe_at=()):
    core = SchedulerCore(make_policy(policy), T4.capacity, max_extra=max_extra)
    dev = CheckedSimGpu(T4, hw_queues=hw_queues)
    run = VirtualRun(core, dev)
    ma = core.make_model("A", "A", a_kernels)
    mb = core.make_model("B", "B", [b_kernel])
    a, b = Job("A", "ta", ma, 0.0, 0.0), Job("B", "tb", mb, 0.0, b_at)
    run.submit_at(a)
    run.submit_at(b)
    probes = []
    for t in probe_at:
        run.env.schedule_at(t, lambda: probes.append(
            (int((dev.free[0] == T4.threads_per_sm).sum()),        # idle SMs
             [r.start_t for r in dev.recs if r.job is b])))
    run.run()
    dev.check_final()
    assert a.state is JobState.DONE and b.state is JobState.DONE
    brec = [r for r in dev.recs if r.job is b]
    arecs = [r for r in dev.recs if r.job is a]
    return a, b, brec[0], arecs, probes


HALF = dict(grid=20, block=1024)      # 20 of the T4's 40 SMs
SMALL = KernelSpec("b", est_us=100.0, grid=4, block=1024)


def test_hol_blocking_one_hw_queue_half_gpu_kernel():
    a_k = [KernelSpec("a", est_us=1000.0, **HALF)]
    a, b, brec, _, probes = hol_run("cuda-ms", 1, a_k, SMALL, probe_at=[0.5 * MS])
    assert a.stream != b.stream                     # different streams, one hardware queue
    assert brec.queue == 0
    # 20 SMs idle at 0.5 ms, and B has not started
    assert probes == [(20, [None])]
    assert brec.start_t == pytest.approx(1.0 * MS)
    assert b.finish == pytest.approx(1.1 * MS)


@pytest.mark.parametrize("policy,hw_queues", [("cuda-ms", 8), ("cuda-ms", 2), ("srpt", 8),
                                              ("srpt", 2)])
def test_no_hol_blocking_with_separate_queues(policy, hw_queues):
    a_k = [KernelSpec("a", est_us=1000.0, **HALF)]
    a, b, brec, arecs, _ = hol_run(policy, hw_queues, a_k, SMALL)
    assert brec.queue != arecs[0].queue
    assert brec.start_t == pytest.approx(0.1 * MS)
    assert b.finish == pytest.approx(0.2 * MS)
    assert a.finish == pytest.approx(1.0 * MS)


def test_hol_blocking_behind_multi_wave_full_gpu_kernel():
    """A 1.5-wave full-GPU kernel: its second wave leaves 20 SMs idle, yet B, behind it in the
    only hardware queue, waits for the whole kernel; with 8 queues (hardware or Paella) B
    takes those idle SMs as soon as the first wave ends."""
    a_k = [KernelSpec("a", est_us=2000.0, grid=60, block=1024)]
    _, b, brec, _, probes = hol_run("cuda-ms", 1, a_k, SMALL, probe_at=[1.05 * MS])
    assert probes == [(20, [None])]
    assert brec.start_t == pytest.approx(2.0 * MS)
    for policy in ("cuda-ms", "srpt"):
        _, b, brec, _, probes = hol_run(policy, 8, a_k, SMALL, probe_at=[1.05 * MS])
        assert brec.start_t == pytest.approx(1.0 * MS), policy
        assert b.finish == pytest.approx(1.1 * MS), policy
        assert probes[0][0] == 16            # A's 20 blocks + B's 4 on the 40 SMs


def test_bounded_dispatch_limits_hol_blocking_to_one_kernel():
    """One hardware queue: the hardware's queue holds all three of A's kernels ahead of B, while
    Paella's dispatcher has only A's current kernel on the device."""
    a_k = [KernelSpec(f"a{i}", est_us=1000.0, **HALF) for i in range(3)]
    _, b, brec, _, _ = hol_run("cuda-ms", 1, a_k, SMALL)
    assert brec.start_t == pytest.approx(3.0 * MS)
    a, b, brec, arecs, _ = hol_run("srpt", 1, a_k, SMALL)
    assert brec.start_t == pytest.approx(1.0 * MS)
    assert b.finish == pytest.approx(1.1 * MS)
    assert [r.start_t for r in arecs] == pytest.approx([0.0, 1.1 * MS, 2.1 * MS])
    a, b, brec, _, _ = hol_run("srpt", 2, a_k, SMALL)
    assert brec.start_t == pytest.approx(0.1 * MS)


def _two_busy_queues(hw_queues, per_queue=6):
    env = Environment()
    dev = CheckedSimGpu(T4, hw_queues=hw_queues, quantum_us=0)
    dev.start(env, lambda *a: None, lambda *a: pytest.fail())
    full = KernelSpec("f", est_us=100.0, grid=40, block=1024)
    for s in (0, 1):
        for i in range(per_queue):
            j = Job((s, i), "t", ModelEntry("m", "m", [full], T4.capacity), 0.0, 0.0)
            j.cur, j.stream = 0, s
            dev.launch(j)
    env.run()
    dev.check_final()
    assert sorted(r.finish_t for r in dev.recs) == pytest.approx(
        [(i + 1) * 100 * US for i in range(2 * per_queue)])
    return [r.queue for r in sorted(dev.recs, key=lambda r: r.start_seq)]


def _longest_run(order):
    return max(len(list(g)) for _, g in itertools.groupby(order))


def test_two_hw_queues_alternate():
    """Queues are visited round-robin: two queues of full-GPU kernels take turns."""
    order = _two_busy_queues(2)
    assert sorted(order) == [0] * 6 + [1] * 6
    assert _longest_run(order) <= 2, order


def test_busy_hw_queues_alternate_among_eight():
    order = _two_busy_queues(8)
    assert _longest_run(order) <= 2, order


# -- bandwidth and compute contention --------------------------------------------------------
def pair(ka, kb, spec=T4, streams=(0, 1)):
    """Launch ka then kb at t=0 on the given streams; returns (finish a, finish b)."""
    env = Environment()
    dev = CheckedSimGpu(spec, quantum_us=0)
    out = {}
    dev.start(env, lambda j, now, d: out.__setitem__(j.id, now), lambda *a: pytest.fail())
    for i, (k, s) in enumerate(zip((ka, kb), streams)):
        j = Job(i, "t", ModelEntry(f"m{i}", f"m{i}", [k], spec.capacity), 0.0, 0.0)
        j.cur, j.stream = 0, s
        dev.launch(j)
    env.run()
    dev.check_final()
    return out[0], out[1]


def half(mem=0.0, comp=0.0, est=100.0):
    return KernelSpec("h", est_us=est, grid=20, block=1024, mem_frac=mem, comp_frac=comp)


def test_latency_bound_kernels_do_not_slow_each_other():
    assert pair(half(), half()) == pytest.approx((100 * US, 100 * US))


def test_memory_bound_pair_is_slowed():
    alone = solo(T4, half(mem=1.0))[0][0]
    assert alone == pytest.approx(100 * US)
    fa, fb = pair(half(mem=1.0), half(mem=1.0))
    assert max(fa, fb) > alone * 1.5              # the pair needs twice the bandwidth
    assert fa + fb > 2 * alone * 1.25
    assert fb == pytest.approx(200 * US)         # slowdown 1 + 1 * (2 - 1)


def test_memory_bound_pair_each_slower_than_alone():
    fa, fb = pair(half(mem=1.0), half(mem=1.0))
    assert fa > 100 * US * 1.01 and fb > 100 * US * 1.01


def test_memory_and_compute_bound_pair_slowed_less_than_two_memory_bound():
    mm = pair(half(mem=1.0), half(mem=1.0))
    mc = pair(half(mem=1.0), half(comp=1.0))
    cc = pair(half(comp=1.0), half(comp=1.0))
    assert max(mc) < max(mm) and sum(mc) < sum(mm)
    assert mc == pytest.approx((100 * US, 100 * US))     # complementary: no slowdown at all
    assert cc == pytest.approx(mm)                       # compute works like bandwidth


@pytest.mark.parametrize("frac,expect_b", [(0.5, 100.0), (0.75, 137.5), (0.25, 100.0)])
def test_contention_formula(frac, expect_b):
    """D_m = 2 * frac; launched together, each runs at 1 / (1 + frac * max(0, D_m - 1))."""
    fa, fb = pair(half(mem=frac), half(mem=frac))
    assert fa == pytest.approx(expect_b * US)
    assert fb == pytest.approx(expect_b * US)


def test_contention_only_while_resident():
    """A memory-bound kernel launched after another finished is not slowed."""
    env = Environment()
    dev = CheckedSimGpu(T4, quantum_us=0)
    out = {}
    dev.start(env, lambda j, now, d: out.__setitem__(j.id, d), lambda *a: pytest.fail())
    for i, t in enumerate((0.0, 150 * US)):
        j = Job(i, "t", ModelEntry("m", "m", [half(mem=1.0)], T4.capacity), 0.0, t)
        j.cur, j.stream = 0, i
        env.schedule_at(t, lambda j=j: dev.launch(j))
    env.run()
    assert out == {0: pytest.approx(100 * US), 1: pytest.approx(100 * US)}
    assert dev._demand_m == 0.0 and dev._demand_c == 0.0


# -- kernels that cannot fit an SM -----------------------------------------------------------
BAD_SMEM = KernelSpec("conv_huge_smem", est_us=10.0, grid=4, block=128, smem=100 * 1024)
BAD_REGS = KernelSpec("gemm_too_many_regs", est_us=10.0, grid=4, block=1024, regs=255)
OK = KernelSpec("ok", est_us=10.0, grid=4, block=128)


@pytest.mark.parametrize("bad", [BAD_SMEM, BAD_REGS], ids=lambda k: k.name)
def test_validate_names_the_kernel(bad):
    dev = SimGpu(T4)
    with pytest.raises(ValueError, match=rf"kernel 1 \({bad.name}\)"):
        dev.validate([OK, bad, OK])
    dev.validate([OK, OK])


def test_validate_depends_on_the_gpu():
    SimGpu(H100).validate([BAD_SMEM])          # 228 KB of shared memory per H100 SM
    with pytest.raises(ValueError, match="conv_huge_smem"):
        SimGpu(T4).validate([BAD_SMEM])
    with pytest.raises(ValueError, match="gemm_too_many_regs"):
        SimGpu(H100).validate([BAD_REGS])


def test_launch_of_unfittable_kernel_reports_failure_directly():
    env = Environment()
    dev = SimGpu(T4)
    fails, done = [], []
    dev.start(env, lambda j, now, d: done.append(j.id),
              lambda j, now, m: fails.append((j.id, now, m)))
    jobs = []
    for i, k in enumerate([BAD_SMEM, OK]):
        j = Job(i, "t", ModelEntry("m", "m", [k], T4.capacity), 0.0, 0.0)
        j.cur, j.stream = 0, 0
        jobs.append(j)
    dev.launch(jobs[0])
    assert fails == []                            # reported asynchronously, like CUDA
    dev.launch(jobs[1])
    env.run()
    assert len(fails) == 1 and fails[0][:2] == (0, 0.0)
    assert "conv_huge_smem" in fails[0][2]
    assert done == [1]                            # the same stream goes on
    assert dev.queued_kernels() == 0


@pytest.mark.parametrize("policy", ["srpt", "cuda-ms", "cuda-ss", "fifo-jbj"])
def test_unfittable_kernel_fails_only_its_job(policy):
    core = SchedulerCore(make_policy(policy), T4.capacity)
    dev = CheckedSimGpu(T4)
    run = VirtualRun(core, dev)
    bad_m = core.make_model("bad", "bad", [OK, BAD_SMEM, OK])
    good_m = core.make_model("good", "good", [OK, OK])
    bad = Job("bad", "t0", bad_m, 0.0, 0.0)
    goods = [Job(f"g{i}", f"t{i + 1}", good_m, 0.0, (i + 1) * 5 * US) for i in range(3)]
    for j in [bad] + goods:
        run.submit_at(j)
    run.run()
    assert bad.state is JobState.FAILED
    assert "conv_huge_smem" in bad.error
    assert bad in run.finished
    assert [f[0] for f in dev.fails] == [bad]
    for g in goods:
        assert g.state is JobState.DONE and g.error is None
    dev.check_final()
    assert core.inflight == 0 and len(core) == 0


def test_failed_kernel_does_not_shift_duration_estimates():
    core = SchedulerCore(make_policy("cuda-ms"), T4.capacity)
    dev = CheckedSimGpu(T4, quantum_us=0)
    run = VirtualRun(core, dev)
    slow_ok = KernelSpec("slow_ok", est_us=500.0, grid=4, block=128)
    m = core.make_model("bad", "bad", [slow_ok, BAD_SMEM, OK])
    bad = Job("bad", "t", m, 0.0, 0.0)
    run.submit_at(bad)
    run.run()
    assert bad.state is JobState.FAILED
    # kernel 1 never ran: its estimate must still be its declared 10 us (not kernel 0's 500 us)
    assert m.estimates.get(1) == pytest.approx(10.0 * US)


# -- misc ------------------------------------------------------------------------------------
def test_hw_queue_bounds():
    SimGpu(T4, hw_queues=1)
    SimGpu(T4, hw_queues=32)
    for bad in (0, 33):
        with pytest.raises(ValueError, match="hw_queues"):
            SimGpu(T4, hw_queues=bad)


def test_busy_time_integral():
    """busy_s integrates the fraction of thread slots in use: a half-GPU kernel for 100 us."""
    env = Environment()
    dev = SimGpu(T4, quantum_us=0)
    dev.start(env, lambda *a: None, lambda *a: None)
    j = Job(0, "t", ModelEntry("m", "m", [half()], T4.capacity), 0.0, 0.0)
    j.cur, j.stream = 0, 0
    dev.launch(j)
    env.run(until=0.0)
    assert dev.utilisation() == pytest.approx(0.5)
    env.run()
    assert dev.busy_s == pytest.approx(50 * US)
    assert math.isclose(dev.utilisation(), 0.0)
