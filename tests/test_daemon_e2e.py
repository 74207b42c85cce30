"""End to end: a daemon subprocess, client processes and raw protocol peers."""
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from client_lib import (
    Client,
    DaemonUnavailable,
    JobCancelled,
    JobShed,
    KernelSpec,
    RequestError,
)
from gpusched.loadgen import run_load
from scheduler_daemon.wire import protocol as P
from tests.wire import RawPeer


def kernels(n, us, grid=40, block=1024, op=None):
    return [KernelSpec(name=f"k{i}", est_us=us, grid=grid, block=block, op=op or f"sleep:{us:g}")
            for i in range(n)]


def test_three_client_processes_every_job_answered(daemon):
    res = run_load(daemon, "mixed", clients=3, rate=40, duration=2.0, seed=1)
    assert not res["client_errors"]
    assert {t["tenant"] for t in res["tenants"]} == {"short", "medium", "long"}
    for t in res["tenants"]:
        assert t["submitted"] > 0
        assert t["completed"] == t["submitted"], t
        assert t["failed"] == 0
    with Client(daemon, tenant="observer") as c:
        st = c.status()
    by_tenant = {t.tenant: t for t in st.tenants}
    for t in res["tenants"]:  # the daemon counted the same jobs the clients saw answered
        assert by_tenant[t["tenant"]].completed == t["completed"]
        assert by_tenant[t["tenant"]].queued == 0


def test_each_submit_gets_exactly_one_answer(daemon):
    peer = RawPeer(daemon)
    peer.hello("exact")
    peer.send_msg(P.Register(req_id=1, model="m", kernels=kernels(3, 50)))
    assert isinstance(peer.recv()[0], P.Registered)
    ids = list(range(10, 310))
    for rid in ids:
        peer.send_msg(P.Submit(req_id=rid, model="m", slo_ms=1000.0))
    for rid in ids[::10]:  # cancel some; their SUBMIT still gets exactly one DONE
        peer.send_msg(P.Cancel(req_id=rid + 100000, target=rid))
    replies = peer.recv_all(quiet_ms=1500)
    done = [m.req_id for m, _ in replies if isinstance(m, P.Done)]
    assert sorted(done) == ids  # one terminal answer per submit, no duplicates, none lost
    cancels = [m for m, _ in replies if isinstance(m, P.CancelReply)]
    assert len(cancels) == len(ids[::10])
    statuses = {m.req_id: m.status for m, _ in replies if isinstance(m, P.Done)}
    for c in cancels:
        assert (statuses[c.target] == "cancelled") == c.cancelled
    peer.close()


def test_torch_backend_outputs_match_local(daemon_factory):
    torch = pytest.importorskip("torch")
    from scheduler_daemon.devices.torch_ops import linear_weight
    _, ep = daemon_factory("--backend", "torch", "--torch-device", "cpu")
    ks = [KernelSpec(name="fc1", est_us=50, op="linear:32,1"), KernelSpec(name="act", est_us=5, op="relu"),
          KernelSpec(name="fc2", est_us=50, op="linear:10,2"), KernelSpec(name="sm", est_us=5, op="softmax")]
    x = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)
    t = torch.from_numpy(x)
    t = t @ linear_weight(16, 32, 1, t.device, t.dtype).T
    t = torch.relu(t)
    t = t @ linear_weight(32, 10, 2, t.device, t.dtype).T
    want = torch.softmax(t, dim=-1).numpy()
    with Client(ep, tenant="a") as a, Client(ep, tenant="b") as b:
        a.register_model("mlp", ks)
        b.register_model("mlp", ks)
        futs = [(c.submit("mlp", [x], slo_ms=1000)) for c in (a, b) for _ in range(5)]
        for f in futs:
            out = f.result(30).outputs
            assert len(out) == 1 and out[0].dtype == np.float32 and out[0].shape == (4, 10)
            assert np.array_equal(out[0], want)  # bit-identical to local execution


def test_failing_kernel_fails_only_its_job(daemon_factory):
    _, ep = daemon_factory("--backend", "torch", "--torch-device", "cpu")
    with Client(ep, tenant="t") as c:
        c.register_model("bad", [KernelSpec(name="boom", est_us=1, op="fail:kaput")])
        c.register_model("good", [KernelSpec(name="ok", est_us=1, op="relu")])
        bad = c.submit("bad", [np.ones(3, np.float32)])
        good = c.submit("good", [-np.ones(3, np.float32)])
        with pytest.raises(Exception, match="kaput"):
            bad.result(10)
        assert np.array_equal(good.result(10).outputs[0], np.zeros(3, np.float32))
        with pytest.raises(RequestError) as e:
            c.register_model("nope", [KernelSpec(name="x", est_us=1, op="conv9d")])
        assert e.value.code == "BAD_MODEL" and "conv9d" in e.value.message


def test_cancel_is_idempotent(daemon):
    with Client(daemon, tenant="c") as c:
        c.register_model("long", kernels(50, 2000))
        f = c.submit("long", slo_ms=10_000)
        time.sleep(0.05)
        assert c.cancel(f) is True
        with pytest.raises(JobCancelled):
            f.result(5)
        assert c.cancel(f) is False  # already ended: nothing happens
        g = c.submit("long", slo_ms=10_000)
        with Client(daemon, tenant="other") as o:  # another tenant cannot name a live job
            assert o.cancel(g.req_id) is False
        assert c.status(g).state in ("queued", "running")
        assert c.cancel(g) is True


def test_shed_hopeless_jobs(daemon_factory):
    _, ep = daemon_factory("--backend", "sim", "--policy", "slo", "--shed")
    with Client(ep, tenant="s") as c:
        c.register_model("slow", kernels(10, 1000))  # 10 ms of work
        with pytest.raises(JobShed):
            c.run("slow", slo_ms=2.0, timeout=5)      # cannot make 2 ms
        r = c.run("slow", slo_ms=500.0, timeout=5)
        assert r.slo_met and r.exec_ms >= 9.0


BAD_CASES = [
    # (frames after identity, expected error code)
    ([b"SUBMIT"], "BAD_FRAME"),
    ([b"NOPE", b"\x80"], "BAD_FRAME"),
    ([b"SUBMIT", b"\xc1\xc1garbage"], "BAD_MESSAGE"),
    ([b"SUBMIT", b"\x81\xa6req_id\xa3abc"], "BAD_MESSAGE"),
    ([b"REGISTER", b"\x80"], "BAD_MESSAGE"),
]


def test_bad_input_is_answered_and_daemon_survives(daemon):
    peer = RawPeer(daemon)
    # before HELLO
    peer.send_msg(P.Submit(req_id=5, model="m"))
    m, _ = peer.recv()
    assert isinstance(m, P.Error) and m.code == "NOT_CONNECTED" and m.req_id == 5
    peer.send_msg(P.Hello(version=99, tenant="x"))
    assert peer.recv()[0].code == "VERSION"
    peer.hello("hostile")
    for frames, code in BAD_CASES:
        peer.send(*frames)
        m, _ = peer.recv()
        assert isinstance(m, P.Error) and m.code == code, (frames, m)
    peer.send_msg(P.Submit(req_id=7, model="ghost"))
    m, _ = peer.recv()
    assert m.code == "UNKNOWN_MODEL" and m.req_id == 7 and "ghost" in m.message
    peer.send_msg(P.Register(req_id=8, model="m", kernels=kernels(1, 10)))
    assert isinstance(peer.recv()[0], P.Registered)
    # inputs that do not match their frames
    peer.send_msg(P.Submit(req_id=9, model="m", inputs=[P.TensorMeta(dtype="float32", shape=[4])]))
    assert peer.recv()[0].code == "BAD_INPUT"
    peer.send_msg(P.Submit(req_id=10, model="m", inputs=[P.TensorMeta(dtype="float32", shape=[4])]),
                  b"\0" * 15)
    assert peer.recv()[0].code == "BAD_INPUT"
    peer.send_msg(P.Submit(req_id=11, model="m", inputs=[P.TensorMeta(dtype="complex64", shape=[1])]),
                  b"\0" * 8)
    assert peer.recv()[0].code == "BAD_INPUT"
    # a model with more kernels than the limit is refused
    peer.send_msg(P.Register(req_id=12, model="huge", kernels=[KernelSpec(name="k", est_us=1)] * 100_001))
    assert peer.recv()[0].code == "TOO_LARGE"
    # the same req_id twice while the first is unfinished
    peer.send_msg(P.Register(req_id=13, model="slow", kernels=kernels(20, 5000)))
    peer.recv()
    peer.send_msg(P.Submit(req_id=14, model="slow"))
    peer.send_msg(P.Submit(req_id=14, model="slow"))
    m, _ = peer.recv()
    assert m.code == "DUPLICATE"
    peer.close()
    # another tenant is served correctly afterwards
    with Client(daemon, tenant="good") as c:
        c.register_model("m", kernels(2, 100))
        assert c.run("m", slo_ms=100, timeout=5).slo_met


def test_client_disappearing_cancels_its_jobs(daemon_factory):
    """A SIGKILLed client (default 5 s silence timeout): its closed connection is seen at once,
    its jobs are cancelled and the input bytes held for them freed, while another tenant's jobs
    run on untouched."""
    _, daemon = daemon_factory("--backend", "sim")
    code = (
        "import sys, time\n"
        "import numpy as np\n"
        "from client_lib import Client, KernelSpec\n"
        f"c = Client({daemon!r}, tenant='doomed')\n"
        "c.register_model('long', [KernelSpec(name='k', est_us=20000, grid=40, block=1024)] * 20)\n"
        "x = np.zeros(1 << 18, dtype=np.float32)\n"
        "fs = [c.submit('long', [x]) for _ in range(50)]\n"
        "c.status()\n"
        "print('submitted', flush=True)\n"
        "time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    with Client(daemon, tenant="observer") as c:
        c.register_model("m", kernels(3, 200))
        assert p.stdout.readline().strip() == "submitted"
        doomed = {x.tenant: x for x in c.status().tenants}["doomed"]
        assert doomed.bytes_held == 50 << 20            # 50 inputs of 1 MiB held
        mine = [c.submit("m", slo_ms=0) for _ in range(20)]
        p.send_signal(signal.SIGKILL)
        p.wait()
        t0 = time.time()
        deadline = t0 + 3  # well under the 5 s silence timeout; typically ~0.1 s
        while time.time() < deadline:
            t = {x.tenant: x for x in c.status().tenants}["doomed"]
            if t.queued == 0 and t.running == 0 and t.bytes_held == 0:
                break
            time.sleep(0.05)
        print(f"killed client cleaned up in {time.time() - t0:.2f} s")
        assert t.queued == 0 and t.running == 0 and t.bytes_held == 0
        assert t.cancelled + t.completed == 50 and t.cancelled >= 40  # its work was dropped
        assert all(f.result(10).exec_ms > 0 for f in mine)          # the other tenant's ran


def test_daemon_death_fails_pending_futures(daemon_factory):
    proc, ep = daemon_factory("--backend", "sim")
    with Client(ep, tenant="t", timeout=1.0) as c:
        c.register_model("long", kernels(100, 10_000))
        f = c.submit("long")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        t0 = time.time()
        with pytest.raises(DaemonUnavailable):
            f.result(10)
        assert time.time() - t0 < 5  # failed fast, did not hang


def test_daemon_restart_client_reconnects(daemon_factory):
    proc, ep = daemon_factory("--backend", "sim")
    with Client(ep, tenant="t", timeout=1.0) as c:
        c.register_model("m", kernels(2, 100))
        c.register_model("long", kernels(100, 10_000))
        assert c.run("m", timeout=5)
        pending = c.submit("long")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with pytest.raises(DaemonUnavailable):  # fails fast instead of hanging
            pending.result(15)
        daemon_factory("--backend", "sim", endpoint=ep)
        deadline = time.time() + 15
        while True:  # the client notices the new daemon, says HELLO and re-registers "m"
            try:
                r = c.run("m", timeout=3)
                break
            except (DaemonUnavailable, RequestError, TimeoutError):
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        assert r.exec_ms > 0


def test_sigterm_drains_and_answers_everything(daemon_factory):
    proc, ep = daemon_factory("--backend", "sim")
    with Client(ep, tenant="t", timeout=2.0) as c:
        c.register_model("m", kernels(5, 2000))
        futs = [c.submit("m") for _ in range(30)]
        time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        outcomes = {"done": 0, "cancelled": 0}
        for f in futs:
            try:
                f.result(20)
                outcomes["done"] += 1
            except JobCancelled:
                outcomes["cancelled"] += 1
        assert proc.wait(20) == 0
    assert outcomes["done"] >= 1 and outcomes["cancelled"] >= 1
    assert sum(outcomes.values()) == 30


def test_async_client(daemon):
    import asyncio

    from client_lib import AsyncClient

    async def go():
        async with AsyncClient(daemon, tenant="aio") as c:
            await c.register_model("m", kernels(2, 100))
            rs = await asyncio.gather(*(c.submit("m", slo_ms=1000) for _ in range(20)))
            st = await c.status()
            return rs, st
    rs, st = asyncio.run(go())
    assert len(rs) == 20 and all(r.exec_ms > 0 for r in rs)
    assert {t.tenant: t for t in st.tenants}["aio"].completed == 20


def test_connect_error_is_clear(tmp_path):
    from client_lib import ConnectError
    with pytest.raises(ConnectError, match="no daemon answered"):
        Client(f"ipc://{tmp_path}/none.sock", timeout=0.3)


def test_tenant_limits_refuse_with_clear_errors(daemon_factory):
    _, ep = daemon_factory("--backend", "sim", "--max-queued", "3", "--max-tenant-bytes", "1000")
    with Client(ep, tenant="greedy") as c, Client(ep, tenant="other") as o:
        c.register_model("slow", kernels(5, 100_000))
        futs = [c.submit("slow") for _ in range(3)]
        with pytest.raises(RequestError) as e:
            c.run("slow", timeout=5)
        assert e.value.code == "LIMIT" and "unfinished jobs" in e.value.message
        o.register_model("m", kernels(1, 10, op="relu"))
        with pytest.raises(RequestError) as e:  # 1200 bytes > the tenant's 1000
            o.run("m", [np.zeros(300, np.float32)], timeout=5)
        assert e.value.code == "LIMIT" and "input bytes" in e.value.message
        assert o.run("m", [np.zeros(100, np.float32)], timeout=5).exec_ms > 0  # within quota
        assert o.run("m", [np.zeros(200, np.float32)], timeout=5).exec_ms > 0  # bytes released
        for f in futs:
            c.cancel(f)
        c.register_model("quick", kernels(1, 10))
        assert c.run("quick", timeout=5).exec_ms > 0  # cancelled jobs released the count


def test_async_client_survives_daemon_restart(daemon_factory):
    import asyncio

    from client_lib import AsyncClient

    proc, ep = daemon_factory("--backend", "sim")

    async def go():
        async with AsyncClient(ep, tenant="aio", timeout=1.0) as c:
            await c.register_model("m", kernels(2, 100))
            await c.register_model("long", kernels(100, 10_000))
            await c.submit("m")
            pending = c.submit_nowait("long")
            proc.send_signal(signal.SIGKILL)
            await asyncio.get_running_loop().run_in_executor(None, proc.wait)
            with pytest.raises(DaemonUnavailable):
                await asyncio.wait_for(pending, 15)
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: daemon_factory("--backend", "sim", endpoint=ep))
            deadline = time.time() + 15
            while True:  # it notices the new daemon, says HELLO and re-registers "m"
                try:
                    return await asyncio.wait_for(c.submit("m"), 3)
                except (DaemonUnavailable, RequestError, asyncio.TimeoutError):
                    if time.time() > deadline:
                        raise
                    await asyncio.sleep(0.2)
    assert asyncio.run(go()).exec_ms > 0


def test_sigterm_cancels_jobs_parked_behind_a_gate(daemon_factory):
    proc, ep = daemon_factory("--backend", "sim", "--policy", "triton")  # one job per model
    with Client(ep, tenant="t", timeout=2.0) as c:
        c.register_model("m", kernels(5, 5000))
        futs = [c.submit("m") for _ in range(10)]
        time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        cancelled = 0
        for f in futs:
            try:
                f.result(20)
            except JobCancelled:
                cancelled += 1
        assert proc.wait(20) == 0
    # the jobs parked behind the model's running one are queued work: cancelled at once, not
    # started during the grace period
    assert cancelled >= 5


def test_async_client_cancel_status_admit_and_register_cuda(daemon_factory):
    """What the sync client could do and the async one could not (issue "One house")."""
    import asyncio

    from client_lib import AsyncClient

    _, ep = daemon_factory("--backend", "sim", "--gpu-spec", "H100", "--policy", "slo")
    try:
        import cuda.bindings  # noqa: F401  (NVRTC compiles REGISTER_CUDA on every backend)
        nvrtc = True
    except ImportError:
        nvrtc = False

    async def go():
        async with AsyncClient(ep, tenant="aio") as c:
            await c.register_model("long", kernels(50, 2000))
            f = c.submit_nowait("long", slo_ms=10_000)
            await asyncio.sleep(0.05)
            assert (await c.status(f)).state in ("queued", "running")
            assert await c.cancel(f) is True
            with pytest.raises(JobCancelled):
                await asyncio.wait_for(f, 5)
            assert await c.cancel(f) is False  # already ended: nothing happens
            got = await c.admit([("tiny", "squeezenet1.1", 1, 5.0, 20.0)])
            assert [g["name"] for g in got] == ["tiny"] and got[0]["predicted_latency_ms"] > 0
            if nvrtc:
                src = 'extern "C" __global__ void f(float* a) { a[threadIdx.x] = 1.0f; }'
                with pytest.raises(RequestError, match="cannot launch CUDA kernels"):
                    await c.register_cuda(
                        "va", src, [{"name": "a", "dtype": "float32", "shape": [4],
                                     "role": "output"}],
                        [{"kernel": "f", "grid": [1], "block": [4],
                          "args": [{"type": "buf", "index": 0}]}])
    asyncio.run(go())


def test_async_client_replays_a_torch_module_after_daemon_restart(daemon_factory):
    """The async client registers a captured module too, and sends graph and weights again
    to a restarted daemon, like the sync one (tests/test_models_daemon.py)."""
    import asyncio

    torch = pytest.importorskip("torch")
    from client_lib import AsyncClient
    from tests import tiny_models

    args = ("--backend", "torch", "--torch-device", "cpu")
    proc, ep = daemon_factory(*args)
    mlp, x = tiny_models.mlp(), torch.randn(2, 16)
    want = tiny_models.local(mlp, x).numpy()

    async def go():
        async with AsyncClient(ep, tenant="aio", timeout=1.0) as c:
            assert await c.register_model("mlp", mlp, [x]) >= 3
            assert np.array_equal((await c.submit("mlp", [x])).outputs[0], want)
            proc.send_signal(signal.SIGKILL)
            await asyncio.get_running_loop().run_in_executor(None, proc.wait)
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: daemon_factory(*args, endpoint=ep))
            deadline = time.time() + 15
            while True:  # it says HELLO again and re-sends graph and weights
                try:
                    return await asyncio.wait_for(c.submit("mlp", [x]), 3)
                except (DaemonUnavailable, RequestError, TimeoutError):
                    if time.time() > deadline:
                        raise
                    await asyncio.sleep(0.2)
    assert np.array_equal(asyncio.run(go()).outputs[0], want)
