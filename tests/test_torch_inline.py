"""The torch backend on the CPU runs short ops on the daemon's own thread (no two thread
wake-ups per op) and long ones on its worker, keeps each job's order, fails only the failing
job, and goes back to its sockets after a budget of inline work so other tenants get in."""
import select
import threading
import time

import pytest

torch = pytest.importorskip("torch")

from client_lib import Client, KernelSpec  # noqa: E402
from scheduler_daemon.clock import RealtimeEnvironment  # noqa: E402
from scheduler_daemon.devices import torch_device as td  # noqa: E402
from scheduler_daemon.gpu_specs import gpu_spec  # noqa: E402
from scheduler_daemon.jobs import Job, KernelSpec as CoreKernel, ModelEntry  # noqa: E402


class _Ops:
    """A job payload whose kernels record the thread they ran on (the EagerWork hook)."""

    def __init__(self, sleep_s=0.0, fail_at=None):
        self.threads, self.sleep_s, self.fail_at = [], sleep_s, fail_at

    def kernel(self, i):
        def run(payload):
            self.threads.append(threading.get_ident())
            if i == self.fail_at:
                raise RuntimeError("boom")
            if self.sleep_s:
                time.sleep(self.sleep_s)
            return payload
        return run


@pytest.fixture
def rig():
    dev = td.TorchDevice(gpu_spec("T4"), "cpu")
    env = RealtimeEnvironment()
    done, failed = [], []
    dev.start(env, lambda j, now, d: done.append((j, d)), lambda j, now, m: failed.append((j, m)))
    yield dev, done, failed
    dev.close()


def _job(est_us, payload, n=1, model=None):
    model = model or ModelEntry(("t", "m", object()), "m",
                                [CoreKernel(name=f"k{i}", est_us=est_us) for i in range(n)],
                                gpu_spec("T4").capacity)
    return Job(1, "t", model, 0.0, 0.0, payload=payload)


def _warm_job(dev, est_us, payload):
    """A job whose op has run once already (an op's first run always goes to the worker)."""
    first = _job(est_us, _Ops())
    dev.launch(first)
    assert not dev.ready() and _wake(dev)
    dev.collect()
    return _job(est_us, payload, model=first.model)


def _wake(dev, timeout=5.0):
    r, _, _ = select.select([dev.wake_fd()], [], [], timeout)
    return bool(r)


def test_short_op_runs_on_the_callers_thread_and_is_ready_without_a_wakeup(rig):
    dev, done, _ = rig
    ops = _Ops()
    job = _warm_job(dev, 10, ops)
    done.clear()
    dev.launch(job)
    assert ops.threads == [threading.get_ident()]       # ran already, here
    assert dev.ready() and not _wake(dev, 0.05)         # no trip through poll needed
    dev.collect()
    assert [j for j, _ in done] == [job] and done[0][1] >= 0


def test_an_ops_first_run_goes_to_the_worker(rig):
    """A cold op (torch's lazy initialisation) must not make the loop deaf for seconds."""
    dev, done, _ = rig
    ops = _Ops()
    job = _job(10, ops)
    dev.launch(job)
    assert not dev.ready() and _wake(dev)
    dev.collect()
    assert [j for j, _ in done] == [job] and ops.threads[0] != threading.get_ident()


def test_inline_off_sends_every_op_to_the_worker():
    dev = td.TorchDevice(gpu_spec("T4"), "cpu", inline_s=0)
    env = RealtimeEnvironment()
    done = []
    dev.start(env, lambda j, now, d: done.append(j), lambda j, now, m: None)
    try:
        ops = _Ops()
        job = _job(10, ops)
        dev.launch(job)
        assert not dev.ready() and _wake(dev)
        dev.collect()
        assert done == [job] and ops.threads[0] != threading.get_ident()
    finally:
        dev.close()


def test_long_op_goes_to_the_worker_and_a_short_one_waits_behind_it(rig):
    dev, done, _ = rig
    slow, quick = _Ops(sleep_s=0.05), _Ops()
    a, b = _job(td.INLINE_S * 1e6 * 10, slow), _job(10, quick)
    dev.launch(a)
    dev.launch(b)        # a worker is busy: b goes to the worker too, after a (order kept)
    assert not dev.ready()
    deadline = time.monotonic() + 5
    while len(done) < 2 and time.monotonic() < deadline:
        if _wake(dev, 1.0):
            dev.collect()
    assert [j for j, _ in done] == [a, b]
    assert slow.threads[0] != threading.get_ident() and quick.threads[0] != threading.get_ident()


def test_failing_inline_op_fails_its_job_only(rig):
    dev, done, failed = rig
    bad, good = _warm_job(dev, 10, _Ops(fail_at=0)), _warm_job(dev, 10, _Ops())
    done.clear()
    dev.launch(bad)
    dev.launch(good)
    assert dev.ready()
    dev.collect()
    assert [j for j, _ in failed] == [bad] and "RuntimeError: boom" in failed[0][1]
    assert [j for j, _ in done] == [good]


def test_after_the_inline_budget_the_loop_is_sent_back_to_its_sockets(rig):
    dev, done, _ = rig
    ops = _Ops(sleep_s=td.INLINE_BUDGET_S / 2)
    jobs = [_warm_job(dev, 10, ops) for _ in range(3)]
    done.clear()
    for j in jobs:
        dev.launch(j)
    assert not dev.ready()          # budget spent: "look at your sockets first"
    assert _wake(dev, 1.0)          # and the wake fd makes poll come back at once
    dev.collect()
    assert [j for j, _ in done] == jobs
    assert all(t == threading.get_ident() for t in ops.threads)


def test_another_tenants_job_gets_in_during_a_long_run_of_inline_ops(daemon_factory):
    """20,000 tiny ops of one (warm) job run inline; a 1-kernel job of another tenant submitted while
    they run finishes first (the loop reads its socket between budgets). Ordering, not time."""
    _, ep = daemon_factory("--backend", "torch", "--torch-device", "cpu", "--client-timeout", "10")
    x = torch.zeros(4)
    with Client(ep, tenant="long") as a, Client(ep, tenant="short") as b:
        a.register_model("many", [KernelSpec(name=f"k{i}", est_us=5, op="scale:1.0")
                                  for i in range(20_000)])
        b.register_model("one", [KernelSpec(name="k", est_us=5, op="scale:2.0")])
        a.submit("many", [x]).result(timeout=120)   # first runs go to the worker: now warm
        b.submit("one", [x]).result(timeout=10)
        fa = a.submit("many", [x], ack=True)
        deadline = time.monotonic() + 10
        while fa.job_id is None and time.monotonic() < deadline:  # accepted: it is running
            time.sleep(0.001)
        assert fa.job_id is not None
        rb = b.submit("one", [x + 1]).result(timeout=10)
        assert not fa.done(), "the short job waited for all 20,000 ops of the long one"
        assert torch.equal(torch.from_numpy(rb.outputs[0]), (x + 1) * 2)
        ra = fa.result(timeout=60)
        assert torch.equal(torch.from_numpy(ra.outputs[0]), x)
