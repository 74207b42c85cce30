"""Unit tests of the pure scheduler core and its policies, driven in virtual time.

Every scenario is hand-built on a simulated T4 (``FluidDevice``) through ``VirtualRun``; kernels
with grid=40, block=1024 take the whole T4, so with ``max_extra=0`` they run strictly one at a
time and every completion time is exact arithmetic on the kernels' estimates.
"""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler_daemon.core.estimates import DurationEstimates
from scheduler_daemon.core.gpu_specs import ZERO, Resources, gpu_spec
from scheduler_daemon.core.jobs import Job, JobState
from scheduler_daemon.core.policies import LATE_PENALTY, Edf, Fifo, Paella, Slo, Srpt
from scheduler_daemon.core.queues import FairQueue, HeapQueue
from scheduler_daemon.core.scheduler import SchedulerCore
from scheduler_daemon.devices.fluid import FluidDevice
from scheduler_daemon.simulation import VirtualRun
from scheduler_daemon.wire.kernels import KernelSpec

T4 = gpu_spec("T4")
FULL = dict(grid=40, block=1024)      # the whole T4: share_of(capacity) == 1.0
QUARTER = dict(grid=10, block=1024)   # a quarter of the T4's threads
MS = 1e-3
EPS = 1e-9


# -- helpers ---------------------------------------------------------------------------------
def make_core(policy, max_extra=0, shed=False):
    return SchedulerCore(policy, T4.capacity, max_extra=max_extra, shed=shed)


def model(core, name, ests_us, **shape):
    shape = shape or FULL
    return core.make_model(name, name, [KernelSpec(f"{name}.{i}", est_us=e, **shape)
                                        for i, e in enumerate(ests_us)])


def job(jid, m, arrival=0.0, slo_ms=0.0):
    return Job(jid, "tenant", m, slo_ms, arrival)


def within(used, cap):
    return all(u <= c for u, c in zip(used, cap))


class CheckedDevice(FluidDevice):
    """A FluidDevice that checks Paella's dispatch rule at every launch and logs launches."""

    def __init__(self, spec, core, speed=1.0):
        super().__init__(spec, speed)
        self.core = core
        self.launches: list[tuple[float, object, int]] = []   # (time, job id, kernel)
        self.outstanding: set[int] = set()
        self.max_extra_seen = 0
        self.max_inflight = 0

    def start(self, env, on_complete, on_fail, on_started=None):
        def complete(j, now, d):
            self.outstanding.remove(id(j))
            on_complete(j, now, d)

        def fail(j, now, msg):
            self.outstanding.remove(id(j))
            on_fail(j, now, msg)
        super().start(env, complete, fail, on_started)

    def launch(self, j):
        core = self.core
        assert j.state is JobState.RUNNING
        # at most one kernel per job outstanding
        assert id(j) not in self.outstanding, f"{j} already has a kernel on the device"
        self.outstanding.add(id(j))
        assert core.inflight == len(self.outstanding)
        # at most max_extra kernels beyond free resources
        assert 0 <= core.extra <= core.max_extra
        if j.extra:
            # an extra kernel is one that did not fit in the free resources
            assert not within(core.used, core.capacity)
        else:
            assert within(core.used, core.capacity)
        if core.max_extra == 0:
            assert within(core.used, core.capacity), (core.used, core.capacity)
        self.max_extra_seen = max(self.max_extra_seen, core.extra)
        self.max_inflight = max(self.max_inflight, core.inflight)
        self.launches.append((self.env.now, j.id, j.cur))
        super().launch(j)


def simulate(core, jobs, speed=1.0, device_cls=CheckedDevice):
    dev = device_cls(T4, core, speed)
    run = VirtualRun(core, dev)
    for j in jobs:
        run.submit_at(j)
    run.run()
    return run, dev


def assert_idle(core):
    assert core.used == ZERO
    assert core.inflight == 0
    assert core.extra == 0
    assert len(core) == 0


# -- srpt vs fifo ----------------------------------------------------------------------------
@pytest.mark.parametrize("policy_cls", [Srpt, Fifo])
def test_srpt_short_first_fifo_long_first(policy_cls):
    core = make_core(policy_cls())
    long_ = job("long", model(core, "long", [1000.0] * 5), arrival=0.0)
    short = job("short", model(core, "short", [500.0]), arrival=0.1 * MS)
    simulate(core, [long_, short])
    assert long_.state is JobState.DONE and short.state is JobState.DONE
    if policy_cls is Srpt:
        # the short job takes the GPU as soon as the long job's first kernel ends
        assert short.finish < long_.finish
        assert short.finish == pytest.approx(1.5 * MS)
        assert long_.finish == pytest.approx(5.5 * MS)
    else:
        assert long_.finish < short.finish
        assert long_.finish == pytest.approx(5.0 * MS)
        assert short.finish == pytest.approx(5.5 * MS)
    assert_idle(core)


# -- edf vs fifo -----------------------------------------------------------------------------
def _edf_case(policy):
    core = make_core(policy)
    a = job("loose", model(core, "a", [1000.0] * 3), arrival=0.0, slo_ms=100.0)
    b = job("tight", model(core, "b", [1000.0]), arrival=0.1 * MS, slo_ms=3.0)
    c = job("loose2", model(core, "c", [1000.0]), arrival=0.2 * MS, slo_ms=50.0)
    simulate(core, [a, b, c])
    return a, b, c


def test_edf_meets_deadline_fifo_misses():
    a, b, c = _edf_case(Fifo())
    assert b.total_s > b.slo_s          # fifo runs all of the loose job first: 4.0 - 0.1 ms
    a, b, c = _edf_case(Edf())
    for j in (a, b, c):
        assert j.state is JobState.DONE
        assert j.total_s <= j.slo_s + EPS, (j, j.total_s, j.slo_s)
    assert b.finish == pytest.approx(2.0 * MS)


# -- paella fairness -------------------------------------------------------------------------
STREAM_END = 30 * MS


def _starvation_case(policy):
    core = make_core(policy)
    lm = model(core, "long", [1000.0] * 4)
    sm = model(core, "short", [100.0])
    long_ = job("long", lm, arrival=0.0)
    shorts = []
    t, i = 10e-6, 0
    while t < STREAM_END:   # one short job every 60 us, served in 100 us: the backlog grows
        shorts.append(job(f"s{i}", sm, arrival=t))
        t += 60e-6
        i += 1
    run, dev = simulate(core, [long_] + shorts)
    assert all(j.state is JobState.DONE for j in [long_] + shorts)
    assert_idle(core)
    idx = [n for n, (_, jid, _) in enumerate(dev.launches) if jid == "long"]
    gaps = [b - a - 1 for a, b in zip(idx, idx[1:])]
    return long_, shorts, run, gaps


def test_srpt_starves_long_job_under_short_stream():
    long_, shorts, run, gaps = _starvation_case(Srpt())
    # the long job only gets its remaining kernels after the whole stream has drained
    assert run.finished[-1] is long_
    assert long_.finish > max(s.finish for s in shorts)
    assert long_.finish > STREAM_END
    assert max(gaps) >= len(shorts) - 1


@pytest.mark.parametrize("threshold", [1.0, 2.0, 4.0])
def test_paella_threshold_bounds_starvation(threshold):
    long_, shorts, run, gaps = _starvation_case(Paella(threshold=threshold))
    # two model types: the long one earns 1/2 a credit per short dispatch, so it waits for at
    # most ~2 * threshold short kernels between its own
    assert len(gaps) == 3
    assert max(gaps) <= 2 * threshold + 1, gaps
    assert min(gaps) >= 1                  # still SRPT between fairness turns
    assert long_.finish < STREAM_END       # done long before the stream ends
    assert long_.finish < shorts[-1].finish


def test_paella_with_huge_threshold_is_srpt():
    long_, shorts, run, gaps = _starvation_case(Paella(threshold=1e9))
    assert long_.finish > STREAM_END
    assert run.finished[-1] is long_


# -- slo policy ------------------------------------------------------------------------------
def _hopeless_case(shed):
    core = make_core(Slo(), shed=shed)
    g1 = job("g1", model(core, "g1", [1000.0]), arrival=0.0, slo_ms=5.0)
    # needs 5 ms of work but has 2 ms: hopeless from the start; its slack key (2 - 5 ms) is
    # the smallest, so without flagging it would run before g2 and make g2 miss too
    h = job("h", model(core, "h", [1000.0] * 5), arrival=0.0, slo_ms=2.0)
    g2 = job("g2", model(core, "g2", [1000.0]), arrival=0.0, slo_ms=5.0)
    run, dev = simulate(core, [g1, h, g2])
    assert_idle(core)
    return g1, h, g2, run, dev


def test_slo_flags_hopeless_job_and_runs_it_last():
    g1, h, g2, run, dev = _hopeless_case(shed=False)
    assert h.late is True
    assert not g1.late and not g2.late
    for g in (g1, g2):
        assert g.state is JobState.DONE
        assert g.total_s <= g.slo_s + EPS
    assert h.state is JobState.DONE       # flagged, not dropped
    assert h.first_start >= g2.finish - EPS
    assert run.finished[-1] is h
    assert [jid for _, jid, _ in dev.launches] == ["g1", "g2"] + ["h"] * 5


def test_slo_shed_drops_hopeless_job():
    g1, h, g2, run, dev = _hopeless_case(shed=True)
    assert h.state is JobState.SHED
    assert h in run.finished               # VirtualRun collects core.drain_finished()
    assert h.first_start is None
    assert h.finish == pytest.approx(0.0)
    assert "h" not in [jid for _, jid, _ in dev.launches]
    assert g1.state is JobState.DONE and g2.state is JobState.DONE
    assert g2.finish == pytest.approx(2.0 * MS)


def test_slo_shed_appears_in_drain_finished_directly():
    core = make_core(Slo(), shed=True)
    h = job("h", model(core, "h", [1000.0] * 5), slo_ms=1.0)
    core.add(h, 0.0)
    assert core.next_dispatch(0.0) is None
    assert core.drain_finished() == [h]
    assert core.drain_finished() == []
    assert h.state is JobState.SHED and len(core) == 0


def test_slo_late_key_sorts_after_makeable_jobs():
    core = make_core(Slo())
    m = model(core, "m", [1000.0])
    ok, late = job("ok", m, slo_ms=1000.0), job("late", m, slo_ms=1.0)
    late.late = True
    assert Slo().key(late, 0.0) > Slo().key(ok, 0.0)
    assert Slo().key(late, 0.0) >= LATE_PENALTY


def _slo_vs_srpt(policy):
    core = make_core(policy)
    ym = model(core, "small", [1000.0])
    ys = [job(f"y{i}", ym, arrival=0.0, slo_ms=20.0) for i in range(3)]
    # long work, tight deadline: must run right after the first small job to make it
    x = job("x", model(core, "big", [1000.0] * 5), arrival=0.0, slo_ms=6.5)
    simulate(core, ys + [x])
    jobs = ys + [x]
    assert all(j.state is JobState.DONE for j in jobs)
    return x, sum(j.total_s <= j.slo_s + EPS for j in jobs)


def test_slo_meets_more_slos_than_srpt():
    x_srpt, met_srpt = _slo_vs_srpt(Srpt())
    x_slo, met_slo = _slo_vs_srpt(Slo())
    assert x_srpt.total_s > x_srpt.slo_s
    assert x_slo.total_s <= x_slo.slo_s + EPS
    assert not x_slo.late
    assert (met_srpt, met_slo) == (3, 4)


# -- Paella's dispatch rule --------------------------------------------------------------------
def _random_workload(core, rng, n_jobs=60):
    shapes = [FULL, QUARTER, dict(grid=80, block=1024), dict(grid=3, block=128),
              dict(grid=20, block=512, smem=48 * 1024), dict(grid=16, block=256, regs=255)]
    models = []
    for i in range(5):
        ks = [KernelSpec(f"m{i}.{k}", est_us=rng.uniform(5.0, 400.0), **rng.choice(shapes))
              for k in range(rng.randint(1, 6))]
        models.append(core.make_model(f"m{i}", f"m{i}", ks))
    jobs, t = [], 0.0
    for n in range(n_jobs):
        t += rng.expovariate(1 / 80e-6)
        jobs.append(job(f"j{n}", rng.choice(models), arrival=t, slo_ms=rng.uniform(0.5, 20.0)))
    return jobs


@pytest.mark.parametrize("max_extra", [0, 1, 2])
@pytest.mark.parametrize("policy_cls", [Fifo, Srpt, Edf, Paella, Slo])
def test_dispatch_rule_invariants(policy_cls, max_extra):
    rng = random.Random(1234 + max_extra)
    core = make_core(policy_cls(), max_extra=max_extra)
    jobs = _random_workload(core, rng)
    run, dev = simulate(core, jobs)     # CheckedDevice asserts the rule at every launch
    assert all(j.state is JobState.DONE for j in jobs)
    assert dev.max_extra_seen <= max_extra
    if max_extra:
        assert dev.max_extra_seen == max_extra   # the extra slots were actually used
    assert dev.max_inflight > 1                  # small kernels did run side by side
    assert len(dev.launches) == sum(len(j.model.kernels) for j in jobs)
    assert_idle(core)


@pytest.mark.parametrize("max_extra,expect_at_0", [(0, 1), (1, 2), (2, 3), (5, 4)])
def test_full_gpu_kernels_dispatch_up_to_max_extra(max_extra, expect_at_0):
    core = make_core(Fifo(), max_extra=max_extra)
    m = model(core, "m", [1000.0])
    jobs = [job(f"j{i}", m) for i in range(4)]
    for j in jobs:
        core.add(j, 0.0)
    got = []
    while (j := core.next_dispatch(0.0)) is not None:
        got.append(j)
    assert len(got) == expect_at_0
    assert core.extra == expect_at_0 - 1
    assert core.extra <= max_extra
    assert [j.extra for j in got] == [False] + [True] * (expect_at_0 - 1)
    # the completion of a kernel frees its slot for exactly one more
    if expect_at_0 < 4:
        core.on_complete(got[-1], 1 * MS, 1 * MS)
        assert core.next_dispatch(1 * MS) is jobs[expect_at_0]
        assert core.next_dispatch(1 * MS) is None
        assert core.extra == expect_at_0 - 1


def test_small_kernels_fit_together_without_extra():
    core = make_core(Fifo(), max_extra=0)
    m = model(core, "q", [1000.0], **QUARTER)
    jobs = [job(f"j{i}", m) for i in range(5)]
    for j in jobs:
        core.add(j, 0.0)
    got = []
    while (j := core.next_dispatch(0.0)) is not None:
        got.append(j)
    assert got == jobs[:4]                       # four quarters fill the GPU, the fifth waits
    assert core.used == Resources(*(4 * d for d in m.demands[0]))
    assert within(core.used, core.capacity) and core.extra == 0


def test_one_completion_dispatches_everything_that_fits():
    core = make_core(Fifo(), max_extra=0)
    big = job("big", model(core, "big", [1000.0]))
    qm = model(core, "q", [500.0], **QUARTER)
    quarters = [job(f"q{i}", qm, arrival=0.1 * MS) for i in range(5)]
    run, dev = simulate(core, [big] + quarters)
    # when the full-GPU kernel ends, four quarter-GPU kernels start together; the fifth waits
    assert [q.first_start for q in quarters[:4]] == pytest.approx([1 * MS] * 4)
    assert quarters[4].first_start == pytest.approx(1.5 * MS)
    assert dev.max_inflight == 4
    assert_idle(core)


def test_one_kernel_per_job_outstanding():
    core = make_core(Fifo(), max_extra=8)
    m = model(core, "q", [100.0] * 5, **QUARTER)
    j = job("only", m)
    core.add(j, 0.0)
    assert core.next_dispatch(0.0) is j
    # resources are free and extra slots too, but the job already has a kernel outstanding
    assert core.next_dispatch(0.0) is None
    assert j.state is JobState.RUNNING and core.inflight == 1


# -- estimates -------------------------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(initial=st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=1, max_size=40),
       updates=st.lists(st.tuples(st.integers(0, 10_000), st.floats(0.0, 1.0, allow_nan=False)),
                        max_size=60))
def test_duration_estimates_match_brute_force(initial, updates):
    est = DurationEstimates(initial)
    ref = list(initial)
    for raw_pos, measured in updates:
        pos = raw_pos % len(ref)
        est.observe(pos, measured)
        ref[pos] = (ref[pos] + measured) / 2.0
    assert len(est) == len(ref)
    for pos in range(len(ref)):
        assert est.get(pos) == ref[pos]
    for pos in range(len(ref) + 1):
        assert est.remaining(pos) == pytest.approx(sum(ref[pos:]), rel=1e-9, abs=1e-9)
    assert est.total() == pytest.approx(sum(ref), rel=1e-9, abs=1e-9)


def test_duration_estimates_halving_rule():
    est = DurationEstimates([1.0, 2.0, 3.0])
    est.observe(1, 4.0)
    assert est.get(1) == 3.0
    est.observe(1, 1.0)
    assert est.get(1) == 2.0
    assert est.remaining(0) == pytest.approx(6.0)
    assert est.remaining(2) == pytest.approx(3.0)
    assert est.remaining(3) == 0.0


def test_core_updates_estimates_on_completion():
    core = make_core(Fifo())
    m = model(core, "m", [1000.0, 2000.0, 500.0])
    before = [m.estimates.get(i) for i in range(3)]
    j = job("j", m)
    simulate(core, [j], speed=2.0)     # every kernel takes twice its est_us
    assert j.state is JobState.DONE
    for i, b in enumerate(before):
        measured = 2 * b
        assert m.estimates.get(i) == pytest.approx((b + measured) / 2)
    assert j.exec_s == pytest.approx(2 * sum(before))
    # a second job of the same model moves the estimates again, halfway to the measurement
    j2 = job("j2", m, arrival=1.0)
    simulate(core, [j2], speed=2.0)
    for i, b in enumerate(before):
        assert m.estimates.get(i) == pytest.approx((1.5 * b + 2 * b) / 2)
    assert job("fresh", m).remaining_s() == pytest.approx(1.75 * sum(before))


def test_estimates_change_srpt_order():
    """The learned estimates, not the declared est_us, order SRPT."""
    core = make_core(Srpt())
    a = model(core, "a", [1000.0])     # declared 1 ms, really 4 ms on this device
    b = model(core, "b", [1500.0])
    simulate(core, [job("warm", a)], speed=4.0)
    assert a.estimates.get(0) == pytest.approx(2.5 * MS)
    assert a.estimates.get(0) > b.estimates.get(0)
    ja, jb = job("ja", a, arrival=1.0), job("jb", b, arrival=1.0)
    core.add(ja, 1.0)
    core.add(jb, 1.0)
    assert core.next_dispatch(1.0) is jb


# -- abort -----------------------------------------------------------------------------------
def test_abort_is_idempotent():
    core = make_core(Fifo())
    j = job("j", model(core, "m", [1000.0]))
    core.add(j, 0.0)
    assert core.abort(j, 0.0) is True
    assert j.state is JobState.CANCELLED
    assert core.abort(j, 0.0) is False
    assert core.abort(j, 1.0, JobState.SHED) is False
    assert j.state is JobState.CANCELLED and j.finish == 0.0
    assert len(core) == 0


def test_abort_queued_job_is_never_dispatched():
    core = make_core(Fifo())
    m = model(core, "m", [1000.0] * 2)
    a, b, c = job("a", m), job("b", m, arrival=0.1 * MS), job("c", m, arrival=0.2 * MS)
    dev = CheckedDevice(T4, core)
    run = VirtualRun(core, dev)
    for j in (a, b, c):
        run.submit_at(j)
    results = []
    run.env.schedule_at(0.5 * MS, lambda: results.append(core.abort(b, run.env.now)))
    run.run()
    assert results == [True]
    assert b.state is JobState.CANCELLED and b.first_start is None
    assert "b" not in [jid for _, jid, _ in dev.launches]
    assert b not in run.finished
    assert a.state is JobState.DONE and c.state is JobState.DONE
    assert c.finish == pytest.approx(4 * MS)    # b's slot went to c
    assert_idle(core)


def test_abort_running_job_frees_resources_and_never_completes():
    core = make_core(Fifo())
    m = model(core, "m", [1000.0] * 3)
    a, b = job("a", m), job("b", m, arrival=0.1 * MS)
    dev = CheckedDevice(T4, core)
    run = VirtualRun(core, dev)
    run.submit_at(a)
    run.submit_at(b)
    results = []

    def abort_a():
        assert a.state is JobState.RUNNING and a.cur == 1
        results.append(core.abort(a, run.env.now))
        results.append(core.abort(a, run.env.now))
        # its kernel still runs out: resources stay held until it completes
        assert core.used == a.model.demands[1] and core.inflight == 1
    run.env.schedule_at(1.5 * MS, abort_a)
    run.run()
    assert results == [True, False]
    assert a.state is JobState.CANCELLED
    assert a.done_kernels == 2 and a.finish == pytest.approx(1.5 * MS)
    assert a not in run.finished
    # b starts when a's in-flight kernel completes (2 ms), not before
    assert b.first_start == pytest.approx(2 * MS)
    assert b.state is JobState.DONE and b.finish == pytest.approx(5 * MS)
    assert [jid for _, jid, _ in dev.launches] == ["a", "a", "b", "b", "b"]
    assert_idle(core)


def test_abort_queued_under_paella_fair_queue():
    core = make_core(Paella(threshold=1.0))
    m1, m2 = model(core, "m1", [100.0]), model(core, "m2", [200.0])
    jobs = [job("x", m1), job("y", m2), job("z", m1)]
    for j in jobs:
        core.add(j, 0.0)
    assert len(core) == 3
    assert core.abort(jobs[1], 0.0) and len(core) == 2
    got = []
    while (j := core.next_dispatch(0.0)) is not None:
        got.append(j)
        core.on_complete(j, 0.0, 0.0)
    assert jobs[1] not in got and set(got) == {jobs[0], jobs[2]}


# -- on_fail ---------------------------------------------------------------------------------
class FailingDevice(CheckedDevice):
    """Fails kernel 1 of job "bad" 0.5 ms after launch; runs everything else normally."""

    def launch(self, j):
        if j.id == "bad" and j.cur == 1:
            self.outstanding.add(id(j))
            self.launches.append((self.env.now, j.id, j.cur))
            self.env.schedule(0.5 * MS, lambda: self.on_fail(j, self.env.now, "boom"))
            return
        super().launch(j)


def test_on_fail_fails_only_that_job():
    core = make_core(Fifo())
    m = model(core, "m", [1000.0] * 3)
    bad = job("bad", m)
    goods = [job(f"g{i}", m, arrival=(i + 1) * 0.1 * MS) for i in range(3)]
    run, dev = simulate(core, [bad] + goods, device_cls=FailingDevice)
    assert bad.state is JobState.FAILED
    assert bad.error == "boom"
    assert bad.done_kernels == 1  # kernel 0 completed; kernel 1 failed
    assert bad.finish == pytest.approx(1.5 * MS)
    assert bad in run.finished
    for g in goods:
        assert g.state is JobState.DONE and g.error is None
        assert g in run.finished
    assert goods[0].first_start == pytest.approx(1.5 * MS)   # the failed kernel freed the GPU
    assert_idle(core)


def test_on_fail_after_abort_does_not_refinish():
    core = make_core(Fifo())
    j = job("j", model(core, "m", [1000.0]))
    core.add(j, 0.0)
    assert core.next_dispatch(0.0) is j
    assert core.abort(j, 0.0)
    core.on_fail(j, 1 * MS, "boom")
    assert j.state is JobState.CANCELLED and j.error is None
    assert core.drain_finished() == []
    assert_idle(core)


# -- HeapQueue / FairQueue lazy deletion -----------------------------------------------------
_OPS = st.lists(st.tuples(st.sampled_from(["push", "pop", "discard", "requeue", "peek"]),
                          st.integers(0, 20)), max_size=120)


def _key(j, now):
    return float(j.priority)


def _check_queue(q, ops, strict_order):
    core = make_core(Fifo())
    m = model(core, "m0", [1.0])
    m1 = model(core, "m1", [1.0])
    queued: dict[int, tuple[float, int, Job]] = {}    # reference: id(job) -> (key, seq, job)
    popped: list[Job] = []
    seq = 0
    for op, arg in ops:
        if op == "push":
            j = job(f"j{seq}", m if arg % 2 else m1)
            j.priority = arg % 7
            q.push(j, 0.0)
            queued[id(j)] = (j.priority, seq, j)
            seq += 1
        elif op == "pop":
            got = q.pop()
            if not queued:
                assert got is None
            else:
                assert got is not None and id(got) in queued
                best = min(queued.values(), key=lambda e: (e[0], e[1]))
                if strict_order == "key+fifo":      # ties by push order
                    assert got is best[2]
                elif strict_order == "key":         # ties across model types may go either way
                    assert queued[id(got)][0] == best[0]
                del queued[id(got)]
                got.state = JobState.RUNNING          # what the core does after a pop
                popped.append(got)
        elif op == "discard" and queued:
            victim = sorted(queued.values(), key=lambda e: e[1])[arg % len(queued)][2]
            q.discard(victim)
            victim.state = JobState.CANCELLED         # what core.abort does
            del queued[id(victim)]
        elif op == "requeue" and popped:
            j = popped.pop(arg % len(popped))       # a kernel completed: back in the queue
            j.state = JobState.QUEUED
            j.priority = arg % 5
            q.push(j, 0.0)
            queued[id(j)] = (j.priority, seq, j)
            seq += 1
        elif op == "peek":
            got = q.peek()
            assert (got is None) == (not queued)
            if got is not None:
                assert id(got) in queued
        assert len(q) == len(queued)
        assert {id(j) for j in q.jobs()} == set(queued)
    # drain: every live job comes out exactly once, then the queue is empty
    out = []
    while (j := q.pop()) is not None:
        out.append(j)
    assert sorted(map(id, out)) == sorted(queued)
    assert len(q) == 0 and q.peek() is None


@settings(max_examples=200, deadline=None)
@given(ops=_OPS)
def test_heap_queue_lazy_deletion_len(ops):
    _check_queue(HeapQueue(_key), ops, strict_order="key+fifo")


@settings(max_examples=150, deadline=None)
@given(ops=_OPS, threshold=st.sampled_from([0.5, 2.0, 1e9]))
def test_fair_queue_lazy_deletion_len(ops, threshold):
    _check_queue(FairQueue(_key, threshold), ops,
                 strict_order="key" if threshold >= 1e9 else None)


def test_fair_queue_a_type_whose_queue_empties_starts_again_from_zero():
    """Paella's deficits are reset when a type's queue empties (by pop or discard): credit
    earned for jobs that are gone must not put a later job of that type first."""
    core = make_core(Fifo())
    ma, mb = model(core, "a", [1.0]), model(core, "b", [1.0])

    def j(name, m, prio):
        x = job(name, m)
        x.priority = prio
        return x

    q = FairQueue(_key, 2.0)
    a = j("a0", ma, 5)
    q.push(a, 0.0)
    for i in range(4):
        q.push(j(f"b{i}", mb, 0), 0.0)
    for _ in range(3):                  # b goes first (shorter); a earns 0.5 a dispatch
        assert q.pop().model is mb
    assert q.deficit[ma.type_id] == pytest.approx(1.5)
    q.discard(a)                        # a's queue empties: its credit goes with its job
    a.state = JobState.CANCELLED
    assert q.deficit[ma.type_id] == 0.0
    q.push(j("a1", ma, 5), 0.0)
    q.push(j("b9", mb, 0), 0.0)
    assert q.pop().model is mb          # a: 0 -> 0.5 (with its old 1.5 it would reach 2.0)
    assert q.pop().model is mb          # ... and be served here, ahead of the shorter b
    assert q.pop().model is ma
    assert q.deficit[ma.type_id] == 0.0   # emptied by a pop: reset too
    assert q.pop() is None


def test_heap_queue_repush_of_queued_job_keeps_len():
    q = HeapQueue(_key)
    core = make_core(Fifo())
    j = job("j", model(core, "m", [1.0]))
    q.push(j, 0.0)
    q.push(j, 0.0)              # re-push: the first entry is now stale
    assert len(list(q.jobs())) == 1
    assert len(q) == 1


def test_heap_queue_compacts_dead_entries():
    from scheduler_daemon.core.queues import HeapQueue
    core = make_core(Fifo())
    m = model(core, "m", [10.0])
    q = HeapQueue(lambda j, now: j.arrival)
    jobs = [job(i, m, arrival=i * 1e-6) for i in range(3000)]
    for j in jobs:
        q.push(j, 0.0)
    for j in jobs[:2500]:
        q.discard(j)          # e.g. cancelled jobs: their entries must not pile up
    assert len(q) == 500 and len(q._heap) <= 2 * 500 + 1024
    assert [q.pop().id for _ in range(500)] == list(range(2500, 3000))
