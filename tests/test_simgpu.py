"""Tests of the simulated GPU (``scheduler_daemon/devices/simgpu.py``): each rule R1-R8 of its
docstring has a test, Paella's Fig. 2 head-of-line example reproduces, and a checked device
verifies the resource accounting and the dispatcher's work conservation after every event of
random workloads, directly and through the scheduler core.
"""
from __future__ import annotations

from collections import defaultdict, deque
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
    kern: object
    job: Job
    stream: int
    queue: int
    launch_t: float
    order: int                      # launch order on the device
    start_t: float | None = None
    started_t: float | None = None  # all blocks dispatched (on_started)
    finish_t: float | None = None
    reported: list = field(default_factory=list)
    run: list = field(default_factory=list)    # the records of its launch (a run: several)
    done_t: float | None = None      # when the device marked it done
    out_t: float | None = None       # when its last block was dispatched


class CheckedSimGpu(SimGpu):
    """Checks the invariants after every event and records every kernel's timeline."""

    def __init__(self, spec, **kw):
        super().__init__(spec, **kw)
        self.recs: list[KRec] = []
        self._rec_of: dict[int, KRec] = {}
        self.checks = 0
        self.fails: list = []
        self.max_grids_seen = 0

    def start(self, env, on_complete, on_fail, on_started=None):
        # a job's kernels start and complete in launch order (one stream, or one at a time);
        # a run is one report, at its last kernel, with each kernel's duration
        def complete(job, now, duration, per_kernel=None):
            first = self._unfinished[id(job)].popleft()
            run = first.run
            for _ in run[1:]:
                self._unfinished[id(job)].popleft()
            if per_kernel is None:
                assert len(run) == 1
                per_kernel = [duration]
            else:
                assert len(per_kernel) == len(run) and duration == pytest.approx(sum(per_kernel))
            for rec in run:     # (those finishing in this event are not marked yet)
                if rec.done_t is None:
                    rec.done_t = now
            assert run[-1].done_t == now
            for rec, d in zip(run, per_kernel):
                assert rec.finish_t is None and rec.kern.done
                rec.finish_t = rec.done_t
                rec.reported.append(d)
            if len(run) == 1:
                on_complete(job, now, duration)
            else:
                on_complete(job, now, duration, per_kernel)

        def started(job, now):
            first = self._unstarted[id(job)].popleft()
            run = first.run
            for _ in run[1:]:
                self._unstarted[id(job)].popleft()
            for rec in run:   # a run's earlier kernels: when their last blocks went out
                assert rec.kern.left == 0 and rec.out_t is not None
                rec.started_t = rec.out_t
            assert run[-1].out_t == now
            if on_started is not None:
                on_started(job, now)

        def fail(job, now, msg):
            self.fails.append((job, now, msg))
            on_fail(job, now, msg)
        self._unfinished: dict = defaultdict(deque)
        self._unstarted: dict = defaultdict(deque)
        super().start(env, complete, fail, started)

    def launch(self, job):
        super().launch(job)
        kern = self._tails.get(job.stream)
        if kern is not None and id(kern) not in self._rec_of:
            chain = [kern]           # a run: its kernels, each chained to the one before
            while len(chain) < max(1, job.run_len):
                chain.append(chain[-1].pred)
            run = []
            for k in reversed(chain):
                rec = KRec(k, job, job.stream, job.stream % len(self.queues), self.env.now,
                           len(self.recs), run=run)
                run.append(rec)
                self.recs.append(rec)
                self._rec_of[id(k)] = rec
                self._unfinished[id(job)].append(rec)
                self._unstarted[id(job)].append(rec)
        self.check()

    def _dispatch(self, now, base=None):
        started = super()._dispatch(now, base)
        for kern in started or ():
            self._rec_of[id(kern)].out_t = now
        for rec in self.recs:
            if rec.kern.start is not None and rec.start_t is None:
                rec.start_t = rec.kern.start
                # R1: not before its stream predecessor completed
                assert rec.kern.pred is None or rec.kern.pred.done
        self.check()
        return started

    def _on_timer(self):
        now = self.env.now
        pending = [r for r in self.recs if r.done_t is None]
        super()._on_timer()
        for r in pending:
            if r.kern.done:
                r.done_t = now
        self.check()

    def check(self) -> None:
        self.checks += 1
        lim = self.limits[:, None]
        free = self.free
        assert (free >= 0).all(), "over-subscribed SM"
        assert (free <= lim).all(), "freed more than held"
        held = np.zeros_like(free)
        for kern, take, n in self._groups():
            assert int(take.sum()) == n and (take >= 0).all()
            lo, hi = kern.shape.lo, kern.shape.hi                       # R8
            assert not take[:lo].any() and not take[hi:].any(), "a block outside its partition"
            held += kern.shape.res * take
        assert (held + free == lim).all(), "resources leaked or double-freed"
        assert self._threads_used == int(held[0].sum())
        assert self._grids <= self.spec.max_grids                      # R3
        self.max_grids_seen = max(self.max_grids_seen, self._grids)
        for q in self.queues:
            for i, kern in enumerate(q):
                assert kern.left > 0, "a kernel with all blocks dispatched is still queued"
                if i:                                                   # R2: FIFO
                    assert kern.start is None, "a kernel started ahead of its queue's first"
            # work conservation: an eligible first kernel has nowhere to put a block
            if q and not self._dispatch_due:
                head = q[0]
                eligible = ((head.pred is None or head.pred.done)
                            and (head.start is not None or self._grids < self.spec.max_grids))
                if eligible:
                    assert self.fit_per_sm(head.shape).max() == 0, "idle SMs while a queue waits"

    def check_final(self) -> None:
        assert not self._groups() and not any(self.queues)
        assert (self.free == self.limits[:, None]).all()
        assert self._threads_used == 0 and self._grids == 0
        assert self.kernels_done == len(self.recs)
        for rec in self.recs:
            assert rec.start_t is not None and rec.finish_t is not None, rec
            assert rec.started_t is not None and rec.start_t <= rec.started_t <= rec.finish_t
            assert rec.reported == [pytest.approx(rec.finish_t - rec.start_t, abs=1e-12)]
            # R7: a run's i-th kernel is in its queue (i + 1) launch floors after the launch
            i = rec.run.index(rec)
            assert rec.launch_t + (i + 1) * self.launch_delay <= rec.start_t + 1e-15
        by_stream = defaultdict(list)
        for rec in self.recs:
            by_stream[rec.stream].append(rec)
        for recs in by_stream.values():                                # R1
            for prev, nxt in zip(recs, recs[1:]):
                assert nxt.start_t >= prev.finish_t - self.quantum - 1e-12


def make_job(i, k, stream, spec=T4, at=0.0):
    j = Job(i, "t", ModelEntry(f"m{i}", f"m{i}", [k], spec.capacity), 0.0, at)
    j.cur, j.stream = 0, stream
    return j


def run_launches(launches, spec=T4, **kw):
    """launches: (time, stream, KernelSpec); returns (device, {job id: finish time})."""
    env = Environment()
    dev = CheckedSimGpu(spec, **kw)
    done = {}
    dev.start(env, lambda j, now, d: done.__setitem__(j.id, now),
              lambda j, now, m: pytest.fail(m))
    for i, (t, s, k) in enumerate(launches):
        j = make_job(i, k, s, spec, t)
        env.schedule_at(t, lambda j=j: dev.launch(j))
    env.run()
    dev.check_final()
    return dev, done


def kernel_floor(spec, k, speed) -> float:
    """A kernel never takes less than one wave (one block's solo time)."""
    cap = SimGpu(spec)._shape(k).cap
    return k.est_us * US * speed / -(-k.grid // cap)


# -- R1 + R2: streams and hardware queues ----------------------------------------------------
LONG = KernelSpec("long", est_us=1000.0, grid=4, block=256)
SHORT = KernelSpec("short", est_us=100.0, grid=4, block=256)


def test_r1_a_kernel_waits_for_its_stream_predecessor():
    dev, done = run_launches([(0, 0, LONG), (0, 0, SHORT)], quantum_us=0)
    assert done[1] == pytest.approx(1.1 * MS)
    assert dev.recs[1].start_t == pytest.approx(1.0 * MS)


def test_r2_a_dependent_first_kernel_blocks_its_queue():
    """One hardware queue: B (stream 1) queued behind A2 (stream 0, waiting for A1) cannot
    start until A1 completes, although the GPU is nearly idle: a false dependency."""
    dev, done = run_launches([(0, 0, LONG), (0, 0, SHORT), (0, 1, SHORT)], hw_queues=1,
                             quantum_us=0)
    assert dev.recs[2].start_t == pytest.approx(1.0 * MS)
    dev, done = run_launches([(0, 0, LONG), (0, 0, SHORT), (0, 1, SHORT)], hw_queues=2,
                             quantum_us=0)
    assert dev.recs[2].start_t == 0.0            # its own queue: no false dependency


def test_r2_an_independent_kernel_behind_a_dispatched_head_starts():
    """The hardware waits for a queue's first kernel to be dispatched, not to finish: B on
    another stream starts as soon as all of A's blocks are on the SMs."""
    dev, done = run_launches([(0, 0, LONG), (0, 1, SHORT)], hw_queues=1, quantum_us=0)
    assert dev.recs[1].start_t == 0.0
    assert done[1] == pytest.approx(0.1 * MS) and done[0] == pytest.approx(1.0 * MS)


def test_r2_a_head_with_blocks_left_holds_its_queue():
    """A 1.5-wave kernel: its second half waits for SMs, and B behind it in the same queue
    waits until A's last blocks are dispatched (at the end of A's first wave)."""
    a = KernelSpec("a", est_us=2000.0, grid=60, block=1024)           # 40 per wave on a T4
    dev, done = run_launches([(0, 0, a), (0, 1, SHORT)], hw_queues=1, quantum_us=0)
    assert dev.recs[1].start_t == pytest.approx(1.0 * MS)
    assert dev.recs[0].started_t == pytest.approx(1.0 * MS)            # its last wave began


def test_paella_fig2_false_dependency_with_32_queues():
    """Paella Fig. 2 (hol.cu): 33 streams on 32 queues, so streams 0 and 32 share queue 0.
    Stream 0 launches a long kernel and a dependent one; stream 32's kernel, independent of
    both, waits for the long kernel to finish; stream 1's, on queue 1, runs at once."""
    launches = [(0, 0, LONG), (0, 0, SHORT), (0, 32, SHORT), (0, 1, SHORT)]
    dev, done = run_launches(launches, hw_queues=32, quantum_us=0)
    assert dev.recs[2].queue == dev.recs[0].queue == 0
    assert dev.recs[2].start_t == pytest.approx(1.0 * MS)    # behind the dependent kernel
    assert dev.recs[3].start_t == 0.0
    assert done[2] == pytest.approx(1.1 * MS) and done[3] == pytest.approx(0.1 * MS)
    # the same streams launched in the other order: nothing waits but the dependent kernel
    dev, done = run_launches([launches[2], launches[0], launches[1], launches[3]],
                             hw_queues=32, quantum_us=0)
    assert done[0] == pytest.approx(0.1 * MS)


# -- R3: resident grids ----------------------------------------------------------------------
def test_r3_at_most_128_grids_resident():
    tiny = KernelSpec("t", est_us=50.0, grid=1, block=32)
    launches = [(0, s, tiny) for s in range(200)]
    dev, done = run_launches(launches, hw_queues=32, quantum_us=0)
    assert dev.max_grids_seen == 128
    assert sorted(done.values()) == pytest.approx([50 * US] * 128 + [100 * US] * 72)


# -- R4 + R5: blocks per SM, waves -----------------------------------------------------------
def solo(spec, k, speed=1.0, **kw):
    dev, done = run_launches([(0, 3, k)], spec, speed=speed, quantum_us=0, **kw)
    return done[0], dev


@pytest.mark.parametrize("spec", [T4, H100], ids=lambda s: s.name)
@pytest.mark.parametrize("shape", [
    dict(grid=1, block=32), dict(grid=40, block=1024), dict(grid=100, block=256, regs=64),
    dict(grid=1000, block=256), dict(grid=333, block=512, smem=40 * 1024),
    dict(grid=7, block=1024, regs=64, mem_frac=1.0, comp_frac=1.0),
    dict(grid=5000, block=128, regs=128, mem_frac=1.0)])
@pytest.mark.parametrize("speed", [1.0, 2.5])
def test_r5_a_kernel_alone_takes_its_estimate_exactly(spec, shape, speed):
    k = KernelSpec("k", est_us=123.0, **shape)
    (t, dev) = solo(spec, k, speed)
    assert t == pytest.approx(123.0 * US * speed, rel=1e-9)
    assert dev.recs[0].reported[0] == pytest.approx(123.0 * US * speed, rel=1e-9)


def cap_of(spec, k) -> int:
    return SimGpu(spec)._shape(k).cap


def test_r4_blocks_per_sm_follow_the_occupancy_limits():
    assert cap_of(T4, KernelSpec("k", 1.0, grid=40, block=1024)) == 40
    assert cap_of(T4, KernelSpec("k", 1.0, grid=1, block=256)) == 160
    assert cap_of(T4, KernelSpec("k", 1.0, grid=1, block=32)) == 16 * 40        # block slots
    assert cap_of(T4, KernelSpec("k", 1.0, grid=1, block=256, regs=128)) == 2 * 40
    assert cap_of(T4, KernelSpec("k", 1.0, grid=1, block=32, smem=40 * 1024)) == 40
    assert cap_of(H100, KernelSpec("k", 1.0, grid=1, block=1024)) == 2 * 132
    assert cap_of(T4, KernelSpec("k", 1.0, grid=1, block=1024, regs=128)) == 0


def test_r4_blocks_are_spread_breadth_first():
    env = Environment()
    dev = SimGpu(T4, quantum_us=0)
    dev.start(env, lambda *a: None, lambda *a: None)
    dev.launch(make_job(0, KernelSpec("k", 10.0, grid=60, block=128), 0))
    env.run(until=0.0)
    per_sm = (T4.blocks_per_sm - dev.free[1])
    assert sorted(set(per_sm.tolist())) == [1, 2] and per_sm.sum() == 60   # 40 get 1, 20 get 2


def test_r5_a_multi_wave_kernel_runs_in_waves_and_starts_with_its_last():
    k = KernelSpec("k", est_us=300.0, grid=100, block=1024)     # 2.5 waves on the T4
    t, dev = solo(T4, k)
    assert t == pytest.approx(300 * US)
    assert dev.recs[0].started_t == pytest.approx(200 * US)     # the third wave's blocks


def test_fits_now_is_the_per_sm_test():
    env = Environment()
    dev = SimGpu(T4, quantum_us=0)
    dev.start(env, lambda *a: None, lambda *a: None)
    half = KernelSpec("h", 100.0, grid=20, block=1024)
    assert dev.fits_now(half)
    dev.launch(make_job(0, half, 0))
    dev.launch(make_job(1, half, 1))
    env.run(until=0.0)
    assert not dev.fits_now(KernelSpec("x", 1.0, grid=1, block=1024))   # every SM is full
    assert not dev.fits_now(KernelSpec("x", 1.0, grid=1, block=32))
    many = KernelSpec("m", 1.0, grid=1000, block=1024)       # multi-wave: needs a full wave
    env.run()
    assert dev.fits_now(many)


# -- R6: shared bandwidth and arithmetic -----------------------------------------------------
def pair(ka, kb, spec=T4):
    dev, done = run_launches([(0, 0, ka), (0, 1, kb)], spec, quantum_us=0)
    return done[0], done[1]


def half(mem=0.0, comp=0.0, est=100.0):
    return KernelSpec("h", est_us=est, grid=20, block=1024, mem_frac=mem, comp_frac=comp)


def test_r6_latency_bound_kernels_do_not_slow_each_other():
    assert pair(half(), half()) == pytest.approx((100 * US, 100 * US))


def test_r6_memory_bound_pair_is_slowed_complementary_pair_is_not():
    mm = pair(half(mem=1.0), half(mem=1.0))
    mc = pair(half(mem=1.0), half(comp=1.0))
    cc = pair(half(comp=1.0), half(comp=1.0))
    assert mm == pytest.approx((200 * US, 200 * US))     # slowdown 1 + 1 * (2 - 1)
    assert mc == pytest.approx((100 * US, 100 * US))
    assert cc == pytest.approx(mm)


@pytest.mark.parametrize("frac,expect", [(0.5, 100.0), (0.75, 137.5), (0.25, 100.0)])
def test_r6_contention_formula(frac, expect):
    assert pair(half(mem=frac), half(mem=frac)) == pytest.approx((expect * US, expect * US))


# -- R7: launch latency ----------------------------------------------------------------------
def test_r7_a_kernel_reaches_its_queue_launch_us_later():
    dev, done = run_launches([(0, 0, SHORT), (0, 0, SHORT)], launch_us=5.0, quantum_us=0)
    assert dev.recs[0].start_t == pytest.approx(5 * US)
    assert done[0] == pytest.approx(105 * US)
    assert dev.recs[1].start_t == pytest.approx(105 * US)   # queued already: no second wait


def test_r7_a_runs_kernels_are_launched_back_to_back_and_reported_once():
    """A run of three 1 us kernels, launch floor 5 us: kernel i is in its queue (i + 1) * 5 us
    after the launch (one host thread launching them), each waits for the one before (R1),
    and the device reports the run once, at its last kernel, with each kernel's duration."""
    env = Environment()
    dev = CheckedSimGpu(T4, launch_us=5.0, quantum_us=0)
    reports = []
    dev.start(env, lambda j, now, d, per=None: reports.append((now, d, per)),
              lambda j, now, m: pytest.fail(m))
    tiny = KernelSpec("tiny", est_us=1.0, grid=4, block=256)
    job = Job(0, "t", ModelEntry("m", "m", [tiny] * 3, T4.capacity), 0.0, 0.0)
    job.cur, job.stream, job.run_len = 0, 7, 3
    dev.launch(job)
    env.run()
    dev.check_final()
    assert [r.start_t / US for r in dev.recs] == pytest.approx([5.0, 10.0, 15.0])
    assert len(reports) == 1
    now, d, per = reports[0]
    assert now == pytest.approx(16 * US) and per == pytest.approx([1 * US] * 3)
    assert d == pytest.approx(3 * US)


def test_a_launch_behind_a_run_on_its_stream_arrives_after_the_runs_last_kernel():
    """R1 + R7: a stream's launches reach the GPU in launch order. A kernel launched on a
    stream right after a run of three (whose last arrives 15 us later) arrives after it, not
    5 us later ahead of it in the queue, where it would wait for a predecessor behind it."""
    env = Environment()
    dev = CheckedSimGpu(T4, launch_us=5.0, quantum_us=0)
    done = {}
    dev.start(env, lambda j, now, d, per=None: done.__setitem__(j.id, now),
              lambda j, now, m: pytest.fail(m))
    tiny = KernelSpec("tiny", est_us=1.0, grid=1, block=32)
    run = Job(0, "t", ModelEntry("m", "m", [tiny] * 3, T4.capacity), 0.0, 0.0)
    run.cur, run.stream, run.run_len = 0, 7, 3
    after = make_job(1, tiny, 7)
    dev.launch(run)
    dev.launch(after)
    env.run()
    dev.check_final()
    assert sorted(done) == [0, 1]
    recs = {(r.job.id, r.run.index(r)): r for r in dev.recs}
    assert recs[(1, 0)].start_t >= recs[(0, 2)].finish_t


def test_runs_through_the_core_pay_one_notice_and_the_launches_on_the_host():
    """Quantum 1 ms, three 100 us kernels: a model's first job goes kernel by kernel (its
    estimates are guesses until then), its second as one run. With a 10 us notice and a 5 us
    launch floor the first pays a notice per kernel; the run pays one notice, and its two later
    launches keep the dispatcher busy 10 us: a notice due then waits for them."""
    core = SchedulerCore(make_policy("srpt"), T4.capacity, quantum_s=1 * MS)
    dev = CheckedSimGpu(T4, launch_us=5.0, quantum_us=0)
    run = VirtualRun(core, dev, notice_s=10 * US, launch_s=5 * US)
    m = core.make_model("m", "m", [SHORT] * 3)
    first, second = Job(0, "t", m, 0.0, 0.0), Job(1, "t", m, 0.0, 1 * MS)
    # a 1 us kernel launched 3 us before the run, done while the run's launches go out
    tiny = core.make_model("n", "n", [KernelSpec("tiny", est_us=1.0, grid=4, block=256)])
    other = Job(2, "t", tiny, 0.0, 997 * US)
    for j in (first, second, other):
        run.submit_at(j)
    run.run()
    dev.check_final()
    assert first.state is second.state is JobState.DONE
    by_job = defaultdict(list)
    for r in dev.recs:
        by_job[r.job.id].append(r)
    assert [len(r.run) for r in by_job[0]] == [1, 1, 1]
    assert [len(r.run) for r in by_job[1]] == [3, 3, 3]
    # first: launch +5, 100 us, notice 10, launch +5: 115 us per kernel
    assert first.finish == pytest.approx(3 * 115 * US)
    # the run: chained at +5/+10/+15 us, each 100 us after the one before, one notice
    assert [r.start_t - 1 * MS for r in by_job[1]] == pytest.approx([5 * US, 105 * US, 205 * US])
    assert second.finish - 1 * MS == pytest.approx(305 * US + 10 * US)
    assert second.done_kernels == 3 and m.estimates.get(2) == pytest.approx(100 * US)
    # done at 1.003 ms; its notice waits for the run's launches (busy until 1.010 ms)
    assert other.finish == pytest.approx(1020 * US)


def test_a_launch_decided_while_a_runs_kernels_are_launched_waits_for_them():
    """One dispatcher thread: a job that arrives as a run of three goes out is launched after
    the run's two later launches (10 us), so its kernel starts at 15 us, not 5."""
    core = SchedulerCore(make_policy("fifo"), T4.capacity, quantum_s=1 * MS)
    dev = CheckedSimGpu(T4, launch_us=5.0, quantum_us=0)
    run = VirtualRun(core, dev, launch_s=5 * US)
    tiny = KernelSpec("tiny", est_us=1.0, grid=1, block=32)
    m = core.make_model("m", "m", [tiny] * 3)
    n = core.make_model("n", "n", [tiny])
    warm, chained, single = Job(0, "t", m, 0.0, 0.0), Job(1, "t", m, 0.0, 1 * MS), \
        Job(2, "t", n, 0.0, 1 * MS)
    for j in (warm, chained, single):
        run.submit_at(j)
    run.run()
    dev.check_final()
    (rec,) = [r for r in dev.recs if r.job is single]
    assert len([r for r in dev.recs if r.job is chained][0].run) == 3
    assert rec.launch_t - 1 * MS == pytest.approx(10 * US)
    assert rec.start_t - 1 * MS == pytest.approx(15 * US)


# -- random workloads, checked after every event ---------------------------------------------
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
    launches = []
    for i in range(draw(st.integers(1, 14))):
        t = draw(st.sampled_from([0.0, 0.0, 50 * US]) | st.floats(0.0, 1 * MS))
        launches.append((t, draw(st.integers(0, 40)), draw(kernels(spec, f"k{i}"))))
    launches.sort(key=lambda x: x[0])
    return dict(spec=spec, launches=launches,
                hw_queues=draw(st.sampled_from([1, 2, 3, 8, 32])),
                speed=draw(st.sampled_from([1.0, 0.5, 2.0])),
                quantum_us=draw(st.sampled_from([0.0, 0.5])),
                launch_us=draw(st.sampled_from([0.0, 3.0])))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(w=direct_workloads())
def test_direct_launches_keep_every_invariant(w):
    kw = {k: w[k] for k in ("hw_queues", "speed", "quantum_us", "launch_us")}
    dev, done = run_launches(w["launches"], w["spec"], **kw)
    assert dev.checks > 0
    assert sorted(done) == list(range(len(w["launches"])))
    for rec in dev.recs:
        k = rec.job.model.kernels[0]
        assert rec.finish_t - rec.start_t >= kernel_floor(w["spec"], k, w["speed"]) \
            * (1 - 1e-9) - 1e-15
    dev2, done2 = run_launches(w["launches"], w["spec"], **kw)
    assert done2 == done                                   # deterministic


@st.composite
def core_workloads(draw):
    spec = draw(SPECS)
    models = [[draw(kernels(spec, f"m{mi}.{i}")) for i in range(draw(st.integers(1, 4)))]
              for mi in range(draw(st.integers(1, 3)))]
    jobs = [(draw(st.floats(0.0, 0.5 * MS)), draw(st.integers(0, len(models) - 1)),
             draw(st.sampled_from(["a", "b", "c"]))) for _ in range(draw(st.integers(1, 8)))]
    return dict(spec=spec, models=models, jobs=jobs,
                policy=draw(st.sampled_from(["cuda-ms", "mps", "cuda-ss", "srpt", "triton",
                                             "fifo-jbj", "paella", "slo-srpt"])),
                hw_queues=draw(st.sampled_from([1, 2, 8, 32])),
                max_extra=draw(st.integers(0, 2)),
                quantum_us=draw(st.sampled_from([0.0, 0.5])),
                # the core's quantum (runs of a job's kernels), and the launch floor R7
                # spaces a run's kernels by
                run_us=draw(st.sampled_from([0.0, 0.0, 50.0, 1000.0])),
                launch_us=draw(st.sampled_from([0.0, 3.0])),
                # R8: MPS partitions for some tenants (the others share every SM)
                partitions=draw(st.sampled_from([None, None, {"a": 0.5, "b": 0.5},
                                                 {"a": 0.1, "c": 0.3}])))


def run_core(w):
    spec = w["spec"]
    core = SchedulerCore(make_policy(w["policy"]), spec.capacity, max_extra=w["max_extra"],
                         quantum_s=w.get("run_us", 0.0) * US)
    dev = CheckedSimGpu(spec, hw_queues=w["hw_queues"], quantum_us=w["quantum_us"],
                        launch_us=w.get("launch_us", 0.0), partitions=w.get("partitions"))
    run = VirtualRun(core, dev, launch_s=w.get("launch_us", 0.0) * US)
    entries = [core.make_model(f"m{i}", f"m{i}", ks) for i, ks in enumerate(w["models"])]
    jobs = [Job(i, tenant, entries[mi], 0.0, t) for i, (t, mi, tenant) in enumerate(w["jobs"])]
    for j in jobs:
        run.submit_at(j)
    run.run()
    return core, dev, jobs


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(w=core_workloads())
def test_virtual_runs_keep_every_invariant(w):
    core, dev, jobs = run_core(w)
    dev.check_final()
    assert all(j.state is JobState.DONE for j in jobs), jobs
    assert core.inflight == 0 and len(core) == 0 and core.extra == 0
    assert len(dev.recs) == sum(len(j.model.kernels) for j in jobs)
    _, dev2, jobs2 = run_core(w)
    assert [j.finish for j in jobs2] == [j.finish for j in jobs]


def test_checker_catches_idle_sms_and_leaks():
    from scheduler_daemon.devices.simgpu import _Kernel
    env = Environment()
    dev = CheckedSimGpu(T4, quantum_us=0)
    dev.start(env, lambda *a: None, lambda *a: None)
    dev.launch(make_job(0, KernelSpec("a", 10.0, grid=20, block=1024), 0))
    env.run(until=0.0)
    dev.check()
    k = KernelSpec("b", 10.0, grid=2, block=1024)
    dev.queues[1].append(_Kernel(make_job(1, k, 1), dev._shape(k), 2, 1e-5, 2, 0.0, 0.0, 1,
                                 None))
    with pytest.raises(AssertionError, match="idle SMs"):
        dev.check()
    dev.queues[1].clear()
    idle = int(np.flatnonzero(dev.free[0] == T4.threads_per_sm)[0])
    dev.free[0, idle] -= 1
    with pytest.raises(AssertionError, match="leaked"):
        dev.check()
    dev.free[0, idle] += 1
    dev.check()


# -- R8: MPS partitions ------------------------------------------------------------------------
def run_tenants(launches, spec=T4, partitions=None):
    """launches: (time, stream, tenant, KernelSpec); returns (device, {job id: finish time})."""
    env = Environment()
    dev = CheckedSimGpu(spec, quantum_us=0, partitions=partitions)
    done = {}
    dev.start(env, lambda j, now, d: done.__setitem__(j.id, now),
              lambda j, now, m: pytest.fail(m))
    for i, (t, s, tenant, k) in enumerate(launches):
        j = make_job(i, k, s, spec, t)
        j.tenant = tenant
        env.schedule_at(t, lambda j=j: dev.launch(j))
    env.run()
    dev.check_final()
    return dev, done


WIDE = KernelSpec("wide", est_us=100.0, grid=40, block=1024)     # one wave on the T4's 40 SMs


def test_r8_a_wide_kernel_on_a_partition_runs_in_more_waves():
    # 40 blocks, one per SM: on a quarter of the SMs (10) it runs in 4 waves of 100 us each
    _, alone = run_tenants([(0, 0, "a", WIDE)])
    _, part = run_tenants([(0, 0, "a", WIDE)], partitions={"a": 0.25})
    assert alone[0] == pytest.approx(100 * US)
    assert part[0] == pytest.approx(400 * US)
    # a kernel narrower than its partition is not slowed
    narrow = KernelSpec("n", est_us=100.0, grid=10, block=1024)
    assert run_tenants([(0, 0, "a", narrow)], partitions={"a": 0.25})[1][0] == \
        pytest.approx(100 * US)


def test_r8_partitions_isolate_sms_but_a_tenant_without_one_shares_every_sm():
    # a fills the GPU; b arrives later: without partitions b waits for a's SMs, with them it
    # runs on its own half at once (and a, on its half, takes two waves)
    late = KernelSpec("b", est_us=10.0, grid=1, block=1024)
    launches = [(0, 0, "a", WIDE), (1 * US, 1, "b", late)]
    _, shared = run_tenants(launches)
    assert shared[1] == pytest.approx(110 * US)
    dev, split = run_tenants(launches, partitions={"a": 0.5, "b": 0.5})
    assert split[1] == pytest.approx(11 * US) and split[0] == pytest.approx(200 * US)
    assert [(r.kern.shape.lo, r.kern.shape.hi) for r in dev.recs] == [(0, 20), (20, 40)]
    # c has no partition: its kernel may take any free SM (b's half, beside a's)
    _, mixed = run_tenants([(0, 0, "a", WIDE), (1 * US, 1, "c", late)], partitions={"a": 0.5})
    assert mixed[1] == pytest.approx(11 * US)


def test_r8_one_kernel_spec_on_a_partition_and_on_the_whole_gpu():
    # the same spec launched by a partitioned tenant, then by one without a partition, then
    # again by the first: each gets its own SMs (what the device derives is cached per
    # partition)
    dev, done = run_tenants([(0, 0, "a", WIDE), (500 * US, 1, "c", WIDE),
                             (1 * MS, 2, "a", WIDE)], partitions={"a": 0.25})
    assert [(r.kern.shape.lo, r.kern.shape.hi) for r in dev.recs] == [(0, 10), (0, 40), (0, 10)]
    assert done[0] == pytest.approx(400 * US) and done[1] - 500 * US == pytest.approx(100 * US)
    assert done[2] - 1 * MS == pytest.approx(400 * US)


def test_r8_partitions_must_fit_the_gpu():
    with pytest.raises(ValueError, match="sum to at most 1"):
        SimGpu(T4, partitions={"a": 0.6, "b": 0.5})
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        SimGpu(T4, partitions={"a": 0.0})
    with pytest.raises(ValueError, match="at most one per SM"):
        SimGpu(T4, partitions={str(i): 0.01 for i in range(41)})

    def sizes(spec, shares):
        parts = list(SimGpu(spec, partitions=shares)._parts.values())
        assert all(a[1] == b[0] for a, b in zip(parts, parts[1:])) and parts[0][0] == 0
        return [hi - lo for lo, hi, *_ in parts]
    # the counts add up to the SMs the shares cover, largest remainders first: 52.8 + 39.6 +
    # 39.6 of 132; 10 x 10.8 of 108; never past the last SM, at least one each
    assert sizes(H100, {"a": 0.4, "b": 0.3, "c": 0.3}) == [53, 40, 39]
    assert sizes(gpu_spec("A100"), {str(i): 0.1 for i in range(10)}) == [11] * 8 + [10] * 2
    assert sizes(H100, {"a": 0.3, "b": 0.7}) == [40, 92]
    # shares raised to one SM take theirs from the largest: 38.8 + 4 x 0.3 of 40
    assert sizes(T4, {"a": 0.97, **{str(i): 0.0075 for i in range(4)}}) == [36, 1, 1, 1, 1]
    assert sizes(H100, {"a": 0.999, "b": 0.001}) == [131, 1]
    assert sizes(T4, {"a": 0.25}) == [10]


# -- through the core: Paella's extra slot ---------------------------------------------------
def test_the_extra_slot_is_freed_when_the_kernels_blocks_have_started():
    """max_extra 1: B's 1.5-wave kernel does not fit beside A's, goes as the extra kernel, and
    frees the slot when its last blocks start (at 2 ms, after its first wave), not when it
    completes (at 3 ms): C's kernel then goes as the extra one and takes the 20 SMs B's last
    wave leaves idle."""
    core = SchedulerCore(make_policy("fifo"), T4.capacity, max_extra=1)
    dev = CheckedSimGpu(T4, quantum_us=0)
    run = VirtualRun(core, dev)
    full = KernelSpec("full", 1000.0, grid=40, block=1024)
    big = KernelSpec("big", 2000.0, grid=60, block=1024)
    m = [core.make_model(n, n, [k]) for n, k in (("a", full), ("b", big), ("c", full))]
    jobs = [Job(i, "t", m[i], 0.0, i * US) for i in range(3)]
    for j in jobs:
        run.submit_at(j)
    run.run()
    dev.check_final()
    recs = {r.job.id: r for r in dev.recs}
    assert recs[1].started_t == pytest.approx(2.0 * MS)     # B's 2nd wave starts after A
    assert recs[1].finish_t == pytest.approx(3.0 * MS)
    assert recs[2].start_t == pytest.approx(2.0 * MS)       # on the SMs B's last wave leaves


# -- failures and bounds ---------------------------------------------------------------------
BAD_SMEM = KernelSpec("conv_huge_smem", est_us=10.0, grid=4, block=128, smem=100 * 1024)
BAD_REGS = KernelSpec("gemm_too_many_regs", est_us=10.0, grid=4, block=1024, regs=255)
OK = KernelSpec("ok", est_us=10.0, grid=4, block=128)


def test_validate_names_the_kernel_and_depends_on_the_gpu():
    with pytest.raises(ValueError, match=r"kernel 1 \(conv_huge_smem\)"):
        SimGpu(T4).validate([OK, BAD_SMEM, OK])
    SimGpu(H100).validate([BAD_SMEM])          # 228 KB of shared memory per H100 SM
    with pytest.raises(ValueError, match="gemm_too_many_regs"):
        SimGpu(H100).validate([BAD_REGS])


@pytest.mark.parametrize("policy", ["srpt", "cuda-ms", "cuda-ss", "fifo-jbj"])
def test_an_unfittable_kernel_fails_only_its_job(policy):
    core = SchedulerCore(make_policy(policy), T4.capacity)
    dev = CheckedSimGpu(T4)
    run = VirtualRun(core, dev)
    bad = Job("bad", "t0", core.make_model("bad", "bad", [OK, BAD_SMEM, OK]), 0.0, 0.0)
    good_m = core.make_model("good", "good", [OK, OK])
    goods = [Job(f"g{i}", f"t{i + 1}", good_m, 0.0, (i + 1) * 5 * US) for i in range(3)]
    for j in [bad] + goods:
        run.submit_at(j)
    run.run()
    assert bad.state is JobState.FAILED and "conv_huge_smem" in bad.error
    assert all(g.state is JobState.DONE for g in goods)
    assert core.inflight == 0 and len(core) == 0


def test_hw_queue_bounds():
    SimGpu(T4, hw_queues=1)
    SimGpu(T4, hw_queues=32)
    for bad in (0, 33):
        with pytest.raises(ValueError, match="hw_queues"):
            SimGpu(T4, hw_queues=bad)


def test_busy_time_integral():
    env = Environment()
    dev = SimGpu(T4, quantum_us=0)
    dev.start(env, lambda *a: None, lambda *a: None)
    dev.launch(make_job(0, half(), 0))
    env.run(until=0.0)
    assert dev.utilisation() == pytest.approx(0.5)
    env.run()
    assert dev.busy_s == pytest.approx(50 * US)
