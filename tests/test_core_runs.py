"""The core's scheduling quantum: one dispatch may be a run of a job's consecutive kernels.

Driven by hand (no device): ``next_dispatch`` says what to launch, the test plays the device
and reports completions, so every assertion is about the core's decisions alone.
"""
from __future__ import annotations

import pytest

from scheduler_daemon.core.gpu_specs import gpu_spec
from scheduler_daemon.core.jobs import Job, JobState
from scheduler_daemon.core.policies import Fifo, Srpt
from scheduler_daemon.core.scheduler import SchedulerCore
from scheduler_daemon.wire.kernels import KernelSpec

T4 = gpu_spec("T4")
US = 1e-6


def core_with(quantum_us, stoppable=False, policy=None):
    return SchedulerCore(policy or Fifo(), T4.capacity, max_extra=0,
                         quantum_s=quantum_us * US, stoppable=stoppable)


def model(core, name, ests_us):
    # one block each: they all fit together, the SM test never holds a job back
    return core.make_model(name, name, [KernelSpec(f"{name}.{i}", est_us=e, grid=1, block=32)
                                        for i, e in enumerate(ests_us)])


def run_job(core, j, durations_us, now=0.0):
    """Play the device: complete every dispatch of ``j`` with the given kernel durations;
    returns the run lengths the core dispatched."""
    core.add(j, now)
    runs = []
    while j.state is not JobState.DONE:
        d = core.next_dispatch(now)
        assert d is j
        runs.append(j.run_len)
        per = [durations_us[k] * US for k in range(j.cur, j.cur + j.run_len)]
        core.on_complete(j, now, sum(per), per if j.run_len > 1 else None)
    return runs


def dispatched_after_one_job(quantum_us, ests_us):
    """A model whose first job has run (durations as declared) and a second job of it just
    dispatched: (core, model, job)."""
    core = core_with(quantum_us)
    m = model(core, "m", ests_us)
    run_job(core, Job("warm", "t", m, 0, 0), ests_us)
    j = Job("j", "t", m, 0, 0)
    core.add(j, 0.0)
    assert core.next_dispatch(0.0) is j
    return core, m, j


def test_no_quantum_dispatches_kernel_by_kernel():
    core = core_with(0)
    m = model(core, "m", [10] * 6)
    assert run_job(core, Job("a", "t", m, 0, 0), [10] * 6) == [1] * 6
    assert run_job(core, Job("b", "t", m, 0, 0), [10] * 6) == [1] * 6


def test_first_job_goes_kernel_by_kernel_then_runs_fill_the_quantum():
    core = core_with(100)
    m = model(core, "m", [30, 30, 30, 30, 200, 5, 5])
    # before any measurement the estimates are the registration's guesses: no runs
    assert run_job(core, Job("a", "t", m, 0, 0), [30, 30, 30, 30, 200, 5, 5]) == [1] * 7
    assert m.jobs_done == 1
    # measured: 30+30+30 fit 100, the fourth does not; the 200 us kernel goes alone (the
    # first of a run always goes); the two 5 us ones share a run
    assert run_job(core, Job("b", "t", m, 0, 0), [30, 30, 30, 30, 200, 5, 5]) == [3, 1, 1, 2]


def test_a_run_reports_each_kernels_duration_into_the_estimates():
    core, m, j = dispatched_after_one_job(1000, [10, 10, 10])
    assert j.run_len == 3
    core.on_complete(j, 0.0, 60 * US, [10 * US, 20 * US, 30 * US])
    assert [m.estimates.get(i) / US for i in range(3)] == pytest.approx([10, 15, 20])
    assert j.state is JobState.DONE and j.done_kernels == 3
    assert j.exec_s == pytest.approx(60 * US)


def test_a_wrong_completion_count_is_refused_before_anything_changes():
    core, _, j = dispatched_after_one_job(1000, [10, 10, 10])
    with pytest.raises(ValueError, match="run of 3"):
        core.on_complete(j, 0.0, 20 * US, [10 * US, 10 * US])   # not asked to stop
    with pytest.raises(ValueError, match="run of 3"):
        core.on_complete(j, 0.0, 10 * US)
    assert j.outstanding == 1 and core.inflight == 1 and j.done_kernels == 0


def test_stoppable_alone_gets_everything_and_an_arrival_stops_it_at_the_next_kernel():
    core = core_with(100, stoppable=True, policy=Srpt())
    long_m = model(core, "long", [50] * 8)
    short_m = model(core, "short", [50])
    a = Job("a", "t1", long_m, 0, 0)
    core.add(a, 0.0)
    assert core.next_dispatch(0.0) is a
    # alone in the queue: the rest of the job is one run, even before any measurement
    assert a.run_len == 8 and a.next_kernel == 8 and not a.stop
    b = Job("b", "t2", short_m, 0, 0)
    core.add(b, 1.0)
    assert a.stop   # the device ends a's run at its next kernel boundary
    # the device ran 2 of the 8 kernels when it saw the flag
    core.on_complete(a, 2.0, 100 * US, [50 * US, 50 * US])
    assert a.done_kernels == 2 and a.next_kernel == 2 and a.state is JobState.QUEUED
    # now the policy decides with b in the queue: SRPT takes the short job first
    assert core.next_dispatch(2.0) is b
    core.on_complete(b, 2.1, 50 * US)
    assert core.next_dispatch(2.1) is a and a.cur == 2
    assert a.run_len == 6 and not a.stop   # alone again
    core.on_complete(a, 3.0, 300 * US, [50 * US] * 6)
    assert a.state is JobState.DONE and a.done_kernels == 8


def test_stoppable_with_others_queued_the_quantum_bounds_the_run():
    core = core_with(100, stoppable=True)
    m = model(core, "m", [30] * 6)
    run_job(core, Job("warm", "t", m, 0, 0), [30] * 6)
    a, b = Job("a", "t", m, 0, 0), Job("b", "t", m, 0, 0)
    core.add(a, 0.0)
    core.add(b, 0.0)
    assert core.next_dispatch(0.0) is a
    assert a.run_len == 3           # b waits: a quantum's worth, not the whole job


def test_abort_stops_a_run_and_the_stopped_run_completes_the_job_as_cancelled():
    core = core_with(100, stoppable=True)
    m = model(core, "m", [50] * 5)
    a = Job("a", "t", m, 0, 0)
    core.add(a, 0.0)
    core.next_dispatch(0.0)
    assert a.run_len == 5
    assert core.abort(a, 1.0)
    assert a.stop
    core.on_complete(a, 1.0, 50 * US, [50 * US])
    assert a.state is JobState.CANCELLED and core.inflight == 0
    assert core.next_dispatch(1.0) is None


def test_a_failure_inside_a_run_names_the_kernel_that_failed():
    core, _, j = dispatched_after_one_job(1000, [10] * 4)
    assert j.run_len == 4
    core.on_fail(j, 0.0, "boom", ran=2)   # kernels 0 and 1 ran, kernel 2 failed
    assert j.state is JobState.FAILED and j.done_kernels == 2 and core.inflight == 0


def test_hardware_order_baselines_never_get_runs():
    from scheduler_daemon.core.policies import CudaMultiStream
    core = SchedulerCore(CudaMultiStream(), T4.capacity, quantum_s=1.0, stoppable=True)
    assert core.quantum_s == 0.0


def test_policies_that_must_go_kernel_by_kernel_get_no_runs():
    from scheduler_daemon.core.policies import FifoKernelByKernel, Paella
    for pol in (Paella(), FifoKernelByKernel()):   # deficits choose, not keys; the ablation
        assert SchedulerCore(pol, T4.capacity, quantum_s=1e-3, stoppable=True).quantum_s == 0.0


def test_a_run_that_cannot_be_stopped_is_capped_in_kernels_whatever_the_estimates():
    """Estimates are learned: cheap requests can make them tiny before a costly one. Where a
    run cannot be stopped (CUDA), its kernel count bounds it."""
    from scheduler_daemon.core.scheduler import MAX_RUN
    core = core_with(10_000)
    m = model(core, "m", [1] * (3 * MAX_RUN))
    run_job(core, Job("warm", "t", m, 0, 0), [0.001] * (3 * MAX_RUN))
    assert run_job(core, Job("a", "t", m, 0, 0), [0.001] * (3 * MAX_RUN)) == [MAX_RUN] * 3


def test_a_run_out_of_a_job_the_policy_ranks_first_is_not_stopped_by_a_later_job():
    core = core_with(100, stoppable=True, policy=Srpt())
    short_m, long_m = model(core, "short", [50] * 3), model(core, "long", [50] * 8)
    a = Job("a", "t", short_m, 0, 0)
    core.add(a, 0.0)
    core.next_dispatch(0.0)
    assert a.run_len == 3
    core.add(Job("b", "t", long_m, 0, 0), 0.0)   # longer: SRPT would not choose it first
    assert not a.stop


def test_a_run_holds_the_largest_sm_demand_of_its_kernels_until_it_completes():
    """The core hears of none of a run's kernels until the last has finished, so the fit test
    and the resources it counts as used are each resource's largest over the run: a small
    kernel 0 cannot carry larger ones past the test."""
    core = SchedulerCore(Fifo(), T4.capacity, max_extra=0, quantum_s=1000 * US)
    small = KernelSpec("small", est_us=10, grid=1, block=32)
    big = KernelSpec("big", est_us=10, grid=40, block=1024)
    m = core.make_model("m", "m", [small, small, big, small])
    run_job(core, Job("warm", "t", m, 0, 0), [10] * 4)
    big_demand = m.demands[2]
    j = Job("j", "t", m, 0, 0)
    core.add(j, 0.0)
    assert core.next_dispatch(0.0) is j and j.run_len == 4
    assert core.used.threads == big_demand.threads > m.demands[0].threads
    # a second job whose kernel 0 would fit beside the small one does not fit beside the big
    other = Job("o", "t", core.make_model("n", "n", [big]), 0, 0)
    core.add(other, 0.0)
    assert core.next_dispatch(0.0) is None          # max_extra 0: it waits
    core.on_complete(j, 0.0, 40 * US, [10 * US] * 4)
    assert core.used.threads == 0
    assert core.next_dispatch(0.0) is other


def test_where_dispatches_overlap_the_quantum_is_per_run_out():
    """Ten 10 us kernels, quantum 25 us: two kernels a run with nothing else out; with one
    other job's run out on a device that overlaps them, 50 us (five); not on one that does
    not (the torch backend runs one dispatch at a time)."""
    for overlapping, want in ((True, 5), (False, 2)):
        core = SchedulerCore(Fifo(), T4.capacity, max_extra=2, quantum_s=25 * US,
                             overlapping=overlapping)
        m = model(core, "m", [10] * 10)
        run_job(core, Job("warm", "t", m, 0, 0), [10] * 10)
        a, b = Job("a", "t", m, 0, 0), Job("b", "t", m, 0, 0)
        core.add(a, 0.0)
        core.add(b, 0.0)
        assert core.next_dispatch(0.0) is a and a.run_len == 2
        assert core.next_dispatch(0.0) is b and b.run_len == want
