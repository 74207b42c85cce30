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
    KernelSpec,
    RequestError,
)
from gpusched.loadgen import run_load


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
    with pytest.raises(ConnectError, match="no daemon at .*none.sock does not exist"):
        Client(f"ipc://{tmp_path}/none.sock", timeout=0.3)



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
