"""The environments (virtual and real time) and the simulated fluid GPU."""
from __future__ import annotations

import random
import time

import pytest

from scheduler_daemon.clock import Environment, RealtimeEnvironment
from scheduler_daemon.core.gpu_specs import ZERO, gpu_spec
from scheduler_daemon.core.jobs import Job, JobState
from scheduler_daemon.core.policies import Fifo, Paella, Slo, Srpt
from scheduler_daemon.core.scheduler import SchedulerCore
from scheduler_daemon.devices.fluid import FluidDevice
from scheduler_daemon.simulation import VirtualRun
from scheduler_daemon.wire.kernels import KernelSpec

T4 = gpu_spec("T4")
FULL = dict(grid=40, block=1024)      # the whole T4
QUARTER = dict(grid=10, block=1024)   # share 0.25
MS = 1e-3


# -- Environment -----------------------------------------------------------------------------
def test_environment_runs_events_in_time_order():
    env = Environment()
    log = []
    for t in (3.0, 1.0, 2.0):
        env.schedule_at(t, lambda t=t: log.append((t, env.now)))
    env.run()
    assert log == [(1.0, 1.0), (2.0, 2.0), (3.0, 3.0)]
    assert env.now == 3.0
    assert env.step() is False


def test_environment_ties_run_in_insertion_order():
    env = Environment()
    log = []
    for i in range(50):
        env.schedule_at(1.0, lambda i=i: log.append(i))
    env.schedule(1.0, lambda: log.append("relative"))     # same time through schedule()
    env.run()
    assert log == list(range(50)) + ["relative"]


def test_environment_events_scheduled_during_a_callback_at_now_run_after_pending_ties():
    env = Environment()
    log = []

    def first():
        log.append("first")
        env.schedule(0.0, lambda: log.append("spawned"))
    env.schedule_at(1.0, first)
    env.schedule_at(1.0, lambda: log.append("second"))
    env.run()
    assert log == ["first", "second", "spawned"]
    assert env.now == 1.0


def test_environment_cancel_prevents_callback():
    env = Environment()
    log = []
    t1 = env.schedule(1.0, lambda: log.append("cancelled"))
    env.schedule(2.0, lambda: log.append("kept"))
    t1.cancel()
    t1.cancel()                     # idempotent
    assert env.peek() == 2.0        # a cancelled head is skipped
    env.run()
    assert log == ["kept"]


def test_environment_cancel_from_an_earlier_callback():
    env = Environment()
    log = []
    later = env.schedule(2.0, lambda: log.append("later"))
    env.schedule(1.0, later.cancel)
    env.run()
    assert log == []
    assert env.peek() == float("inf")


def test_environment_run_until_stops_at_until():
    env = Environment()
    log = []
    for t in (1.0, 2.0, 4.0, 6.0):
        env.schedule_at(t, lambda t=t: log.append(t))
    env.run(until=3.0)
    assert log == [1.0, 2.0]
    assert env.now == 3.0
    assert env.peek() == 4.0
    env.run(until=5.0)
    assert log == [1.0, 2.0, 4.0] and env.now == 5.0
    env.run()
    assert log == [1.0, 2.0, 4.0, 6.0] and env.now == 6.0


def test_environment_run_until_with_no_events_advances_time():
    env = Environment(start=10.0)
    env.run(until=12.5)
    assert env.now == 12.5


def test_environment_negative_delay_and_past_events_never_move_time_back():
    env = Environment()
    env.run(until=5.0)
    seen = []
    env.schedule(-1.0, lambda: seen.append(env.now))
    env.schedule_at(2.0, lambda: seen.append(env.now))
    env.run()
    assert seen == [5.0, 5.0]


def test_environment_run_due():
    env = Environment()
    log = []
    env.schedule(0.0, lambda: log.append("a"))
    env.schedule(0.0, lambda: log.append("b"))
    env.schedule(1.0, lambda: log.append("c"))
    assert env.run_due() == 2
    assert log == ["a", "b"] and env.now == 0.0


# -- RealtimeEnvironment ---------------------------------------------------------------------
def test_realtime_step_waits_until_the_event():
    t0 = time.monotonic()           # before the environment's own clock starts
    env = RealtimeEnvironment()
    delay = 0.05
    fired = []
    env.schedule(delay, lambda: fired.append(time.monotonic()))
    assert env.step() is True
    assert fired and fired[0] - t0 >= delay * 0.999
    assert env.now >= delay * 0.999
    assert env.step() is False


def test_realtime_factor_scales_the_wait():
    t0 = time.monotonic()
    env = RealtimeEnvironment(factor=10.0)   # virtual time runs 10x faster than the wall
    fired = []
    env.schedule(0.5, lambda: fired.append(env.now))
    env.run()
    elapsed = time.monotonic() - t0
    assert elapsed >= 0.05 * 0.999
    assert fired[0] >= 0.5 * 0.999
    assert elapsed < 0.5                     # generous: it did not wait the virtual 0.5 s


def test_realtime_order_and_cancel():
    env = RealtimeEnvironment()
    log = []
    env.schedule(0.02, lambda: log.append("b"))
    env.schedule(0.01, lambda: log.append("a"))
    dead = env.schedule(0.015, lambda: log.append("dead"))
    env.schedule(0.02, lambda: log.append("c"))
    dead.cancel()
    env.run()
    assert log == ["a", "b", "c"]


# -- FluidDevice -----------------------------------------------------------------------------
def _model(name, ests_us, **shape):
    core = SchedulerCore(Fifo(), T4.capacity)
    return core.make_model(name, name, [KernelSpec(f"{name}.{i}", est_us=e, **(shape or FULL))
                                        for i, e in enumerate(ests_us)])


def _device(speed=1.0, start=0.0):
    env = Environment(start=start)
    dev = FluidDevice(T4, speed=speed)
    done = []
    dev.start(env, lambda j, now, d: done.append((j.id, now, d)),
              lambda j, now, msg: pytest.fail(f"unexpected failure {msg}"))
    return env, dev, done


@pytest.mark.parametrize("speed", [1.0, 0.5, 2.5])
@pytest.mark.parametrize("shape", [FULL, QUARTER, dict(grid=1, block=32)])
def test_fluid_lone_kernel_takes_est_times_speed(speed, shape):
    env, dev, done = _device(speed)
    dev.launch(Job("a", "t", _model("m", [700.0], **shape), 0, 0.0))
    env.run()
    assert len(done) == 1
    jid, at, dur = done[0]
    assert at == pytest.approx(700e-6 * speed)
    assert dur == pytest.approx(700e-6 * speed)
    assert dev.utilisation() == 0.0


def test_fluid_two_full_kernels_share_the_gpu():
    env, dev, done = _device()
    m = _model("m", [1000.0])
    dev.launch(Job("a", "t", m, 0, 0.0))
    dev.launch(Job("b", "t", m, 0, 0.0))
    assert dev.utilisation() == 1.0
    env.run()
    assert sorted(j for j, _, _ in done) == ["a", "b"]
    for _, at, dur in done:
        assert at == pytest.approx(2 * MS)         # each takes twice as long
        assert dur == pytest.approx(2 * MS)


def test_fluid_processor_sharing_unequal_lengths():
    env, dev, done = _device()
    dev.launch(Job("short", "t", _model("s", [1000.0]), 0, 0.0))
    dev.launch(Job("long", "t", _model("l", [2000.0]), 0, 0.0))
    env.run()
    got = {j: (at, dur) for j, at, dur in done}
    # both at half speed until 2 ms (short done); long has 1 ms of work left, alone at full speed
    assert got["short"] == pytest.approx((2 * MS, 2 * MS))
    assert got["long"] == pytest.approx((3 * MS, 3 * MS))


def test_fluid_late_launch_slows_the_running_kernel():
    env, dev, done = _device()
    m = _model("m", [1000.0])
    dev.launch(Job("a", "t", m, 0, 0.0))
    env.schedule_at(0.5 * MS, lambda: dev.launch(Job("b", "t", m, 0, 0.0)))
    env.run()
    got = {j: (at, dur) for j, at, dur in done}
    # a: 0.5 ms alone + 0.5 ms of work at half speed = 1.5 ms
    assert got["a"] == pytest.approx((1.5 * MS, 1.5 * MS))
    # b: 0.5 ms of work shared (1 ms) then 0.5 ms alone: done at 2.0 ms
    assert got["b"] == pytest.approx((2.0 * MS, 1.5 * MS))
    assert dev.busy_s == pytest.approx(2.0 * MS)


def test_fluid_small_kernels_side_by_side_are_not_slowed():
    env, dev, done = _device()
    m = _model("q", [800.0], **QUARTER)
    assert m.demands[0].share_of(T4.capacity) < 0.5
    dev.launch(Job("a", "t", m, 0, 0.0))
    dev.launch(Job("b", "t", m, 0, 0.0))
    assert dev.utilisation() == pytest.approx(0.5)
    env.run()
    for _, at, dur in done:
        assert at == pytest.approx(800e-6)
        assert dur == pytest.approx(800e-6)
    assert dev.busy_s == pytest.approx(0.5 * 800e-6)


def test_fluid_speed_zero_completes_immediately():
    env, dev, done = _device(speed=0.0)
    dev.launch(Job("a", "t", _model("m", [5000.0]), 0, 0.0))
    dev.launch(Job("b", "t", _model("m", [9000.0]), 0, 0.0))
    env.run()
    assert [(at, dur) for _, at, dur in done] == [(0.0, 0.0), (0.0, 0.0)]
    assert env.now == 0.0


def test_fluid_speed_zero_under_virtual_run():
    core = SchedulerCore(Srpt(), T4.capacity, max_extra=0)
    m = core.make_model("m", "m", [KernelSpec(f"k{i}", est_us=1000.0, **FULL) for i in range(4)])
    jobs = [Job(f"j{i}", "t", m, 10.0, 1.0 + i) for i in range(3)]
    run = VirtualRun(core, FluidDevice(T4, speed=0.0))
    for j in jobs:
        run.submit_at(j)
    run.run()
    for j in jobs:
        assert j.state is JobState.DONE
        assert j.finish == j.arrival and j.exec_s == 0.0 and j.total_s == 0.0
    assert core.used == ZERO


def _scenario(policy):
    rng = random.Random(42)
    core = SchedulerCore(policy, T4.capacity, max_extra=2)
    shapes = [FULL, QUARTER, dict(grid=3, block=256), dict(grid=25, block=512, smem=16384)]
    models = [core.make_model(f"m{i}", f"m{i}",
                              [KernelSpec(f"m{i}.{k}", est_us=rng.uniform(4.5, 600.0),
                                          **rng.choice(shapes))
                               for k in range(rng.randint(1, 8))])
              for i in range(4)]
    dev = FluidDevice(T4)
    run = VirtualRun(core, dev)
    t = 0.0
    for n in range(150):
        t += rng.expovariate(1 / 150e-6)
        run.submit_at(Job(n, "t", rng.choice(models), rng.uniform(1.0, 10.0), t))
    finished = run.run()
    return [(j.id, j.state, j.first_start, j.finish, j.exec_s) for j in finished], dev.busy_s


@pytest.mark.parametrize("policy_cls", [Fifo, Srpt, Paella, Slo])
def test_virtual_run_is_deterministic(policy_cls):
    a, busy_a = _scenario(policy_cls())
    b, busy_b = _scenario(policy_cls())
    assert len(a) == 150
    assert a == b                 # identical order and bit-identical times
    assert busy_a == busy_b


def test_fluid_lone_kernel_completes_at_large_virtual_time():
    t0 = 30000.0
    env, dev, done = _device(start=t0)
    dev.launch(Job("a", "t", _model("m", [333.3]), 0, t0))
    steps = 0
    while env.step():
        steps += 1
        if steps > 1000:
            break
    assert steps <= 2, f"{steps} timer events for one kernel"
    assert len(done) == 1 and done[0][1] == pytest.approx(t0 + 333.3e-6)
