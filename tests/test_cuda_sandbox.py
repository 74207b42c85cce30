"""Tenants' CUDA compiles (issue 14, finding 3 and 7): in a sandboxed child with time and memory
limits and no file access, and off the daemon's loop, so a compile that runs for minutes blocks
no one and a missed ``#include`` reads nothing."""
import importlib.util
import subprocess
import sys
import threading
import time

import pytest

from scheduler_daemon.server.compiler import Compiler
from scheduler_daemon.wire import protocol as P
from scheduler_daemon.wire.cuda import CudaModel
from tests.server_harness import Harness

SRC = r'''extern "C" __global__ void vec_add(const float* a, const float* b, float* c, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) c[i] = a[i] + b[i];
}'''
# 2^40 tokens once expanded: NVRTC would work until it runs out of time or memory
BOMB = "\n".join(["#define A0 x+"] + [f"#define A{i} A{i - 1} A{i - 1}" for i in range(1, 41)]) \
    + '\nextern "C" __global__ void vec_add(float* x) { x[0] = A40 0; }\n'
BUFS = [{"name": "a", "dtype": "float32", "shape": [1024], "role": "input"},
        {"name": "b", "dtype": "float32", "shape": [1024], "role": "input"},
        {"name": "c", "dtype": "float32", "shape": [1024], "role": "output"}]
ARGS = [{"type": "buf", "index": 0}, {"type": "buf", "index": 1}, {"type": "buf", "index": 2},
        {"type": "scalar", "dtype": "int32", "value": 1024}]
LAUNCH = {"kernel": "vec_add", "grid": [4], "block": [256], "args": ARGS}


def _model(source=SRC) -> CudaModel:
    import msgspec
    return msgspec.convert({"source": source, "buffers": BUFS, "launches": [LAUNCH]}, CudaModel)


# -- the server: compiles answered when they end, one per tenant, the loop never waits ---------
class Gate:
    """A compile function that waits until the test lets it finish (or fail)."""

    def __init__(self):
        self.release = threading.Event()
        self.started = threading.Event()
        self.error: Exception | None = None

    def __call__(self, model, arch):
        from scheduler_daemon.cuda.nvrtc import Compiled
        from scheduler_daemon.cuda.ptx import PtxParam
        self.started.set()
        assert self.release.wait(10)
        if self.error:
            raise self.error
        params = tuple(PtxParam(f"p{i}", "u", 64, 1) for i in range(3)) + (
            PtxParam("p3", "s", 32, 1),)
        return Compiled(ptx=b"", log="", kernels=["vec_add"], arch="compute_80",
                        params={"vec_add": params})


def _hello(h, peer, tenant):
    h.hello(peer, tenant)


def _msgs(replies) -> list:
    return [m for m, _ in replies]


def _wait_answer(h, peer, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = _msgs(_advance(h, peer))
        if got:
            return got
        time.sleep(0.01)
    raise AssertionError("no answer")


def _advance(h, peer):
    h._deliver(h.server.advance())
    return h.take(peer)


def test_a_running_compile_blocks_no_one_and_is_answered_when_it_ends():
    gate = Gate()
    compiler = Compiler(gate, inline=False)
    h = Harness(compiler=compiler)
    _hello(h, b"a", "ta")
    _hello(h, b"b", "tb")
    assert h.send(b"a", P.RegisterCuda(req_id=2, model="m", cuda=_model())) == []
    assert gate.started.wait(5)
    # the loop goes on: the other tenant is answered while a's compile runs
    assert type(h.call(b"b", P.Status(req_id=2))) is P.StatusReply
    # one compile at a time per tenant
    err = h.call(b"a", P.RegisterCuda(req_id=3, model="m2", cuda=_model()))
    assert err.code == P.Code.LIMIT and "compile running" in err.message
    gate.release.set()
    [answer] = _wait_answer(h, b"a")
    # the sim backend compiles, checks, then says it cannot launch: one answer, to a only
    assert type(answer) is P.Error and answer.req_id == 2
    assert "compiled (1 launches), but backend 'sim'" in answer.message
    assert h.take(b"b") == []
    compiler.close()


def test_a_compile_error_comes_back_to_its_client():
    from scheduler_daemon.cuda.errors import CudaCompileError
    gate = Gate()
    gate.error = CudaCompileError("the CUDA compiler stopped (its CPU time limit): simplify")
    gate.release.set()
    h = Harness(compiler=Compiler(gate, inline=True))
    _hello(h, b"a", "ta")
    err = h.call(b"a", P.RegisterCuda(req_id=2, model="m", cuda=_model()))
    assert err.code == P.Code.BAD_MODEL and "CPU time limit" in err.message
    # the tenant may compile again: its slot was freed with the answer
    err = h.call(b"a", P.RegisterCuda(req_id=3, model="m", cuda=_model()))
    assert err.req_id == 3 and err.code == P.Code.BAD_MODEL


def test_a_compile_of_an_ended_session_is_answered_to_no_one():
    gate = Gate()
    compiler = Compiler(gate, inline=False)
    h = Harness(compiler=compiler)
    _hello(h, b"a", "ta")
    h.send(b"a", P.RegisterCuda(req_id=2, model="m", cuda=_model()))
    assert gate.started.wait(5)
    h.close_connection(b"a")
    gate.release.set()
    deadline = time.monotonic() + 5
    while compiler.busy() and time.monotonic() < deadline:
        _advance(h, b"a")
        time.sleep(0.01)
    assert not compiler.busy() and h.take(b"a") == []
    compiler.close()


def test_a_stopping_daemon_answers_compiles_still_running():
    gate = Gate()
    compiler = Compiler(gate, inline=False)
    h = Harness(compiler=compiler)
    _hello(h, b"a", "ta")
    h.send(b"a", P.RegisterCuda(req_id=2, model="m", cuda=_model()))
    assert gate.started.wait(5)
    h._deliver(h.server.begin_drain(h.env.now))
    assert not h.server.drained()         # the compile holds an unanswered request
    h._deliver(h.server.end_drain(h.env.now))
    [err] = _msgs(h.take(b"a"))
    assert err.req_id == 2 and err.code == P.Code.DRAINING
    gate.release.set()
    time.sleep(0.05)
    assert _advance(h, b"a") == []        # and its late result is dropped
    compiler.close()


# -- the sandbox itself (starts processes) -------------------------------------------------------
needs_nvrtc = pytest.mark.skipif(importlib.util.find_spec("cuda") is None,
                                 reason="cuda-python is installed by 'make setup'")


@pytest.mark.slow
@needs_nvrtc
def test_the_sandbox_compiles_what_the_process_would():
    from scheduler_daemon.cuda.nvrtc import compile_source
    from scheduler_daemon.cuda.sandbox import compile_isolated
    inside = compile_isolated(_model(), "sm_80")
    here = compile_source(SRC, arch="sm_80")
    assert inside.kernels == here.kernels == ["vec_add"]
    assert inside.params == here.params and inside.arch == "sm_80" and inside.cubin


@pytest.mark.slow
@needs_nvrtc
def test_a_macro_bomb_is_stopped_at_the_time_limit():
    from scheduler_daemon.cuda.errors import CudaCompileError
    from scheduler_daemon.cuda.sandbox import compile_isolated
    t = time.monotonic()
    with pytest.raises(CudaCompileError, match="limit"):
        compile_isolated(_model(BOMB), None, time_s=2)
    assert time.monotonic() - t < 20


@pytest.mark.slow
def test_the_sandbox_child_cannot_open_files():
    code = ("from scheduler_daemon.cuda.sandbox import _landlock\n"
            "ok = _landlock()\n"
            "try:\n    open('/etc/hostname').read(); print(ok, 'read')\n"
            "except PermissionError:\n    print(ok, 'denied')\n")
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()
    if out[0] == "False":
        pytest.skip("this kernel has no Landlock (the source check and limits remain)")
    assert out == ["True", "denied"]


@pytest.mark.slow
@needs_nvrtc
def test_a_daemon_answers_others_while_a_tenant_compiles_a_bomb(daemon_factory):
    from client_lib import Client
    from client_lib.errors import RequestError
    _, endpoint = daemon_factory("--backend", "sim", "--max-compile-s", "3")
    errors = []

    def bomb():
        with Client(endpoint, tenant="attacker") as c:
            try:
                c.register_cuda("bomb", BOMB, BUFS, [LAUNCH])
            except RequestError as e:
                errors.append(e)

    t = threading.Thread(target=bomb)
    t.start()
    time.sleep(0.5)                       # the compile is running
    with Client(endpoint, tenant="victim") as v:
        start = time.monotonic()
        v.status()
        assert time.monotonic() - start < 1.0
    t.join(30)
    assert not t.is_alive() and len(errors) == 1 and "limit" in str(errors[0])


def test_a_submit_that_fails_leaves_nothing_pending_and_the_tenant_not_locked_out():
    """The compile pool already gone (the daemon closing): the submit raises, nothing is
    counted as out (take_done, on every loop pass, returns at once), and the tenant's
    one-compile-at-a-time slot is not taken."""
    compiler = Compiler(Gate(), inline=False)
    h = Harness(compiler=compiler)
    _hello(h, b"a", "ta")
    compiler.close()
    (answer, _), = h.send(b"a", P.RegisterCuda(req_id=2, model="m", cuda=_model()))
    assert answer.req_id == 2 and isinstance(answer, P.Error), answer   # one answer, an error
    assert not compiler.busy() and compiler.take_done() == []
    assert not h.server.tenants["ta"].compiling
