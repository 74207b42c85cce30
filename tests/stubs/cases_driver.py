"""The CUDA driver backend through cuda-python's real ``cuda.bindings`` over the strict stand-in
driver (cuda_stub.c) and NVML (nvml/pynvml.py). Run in a child process by
tests/test_cuda_stub.py (``stub_env.run_cases``); skipped anywhere else.

Stand-in GPUs (the default list): CUDA device 0 is an A100 (sm_80, PCI 81:00.0), CUDA device 1
an H100 (sm_90, PCI 41:00.0); NVML, in PCI order, has the H100 first. Each case starts from a
clean report and ends by checking it: no violation of the driver's rules, nothing leaked when
the context was released. Cases named after a finding of issue 18 fail without its fix.
"""
from __future__ import annotations

import gc
import select
import threading
import time

import numpy as np
import pytest

from tests.stubs import stub_env

pytestmark = pytest.mark.skipif(not stub_env.on_stub(), reason="runs on the stand-in driver: "
                                "tests/test_cuda_stub.py starts it")

from scheduler_daemon.core.jobs import Job, ModelEntry  # noqa: E402
from scheduler_daemon.devices import cuda_driver  # noqa: E402
from scheduler_daemon.devices.cuda_driver import CudaDriverDevice  # noqa: E402
from scheduler_daemon.wire import protocol as P  # noqa: E402
from scheduler_daemon.wire.cuda import Buf, CudaBuffer, CudaLaunch, CudaModel, Scalar  # noqa: E402
from scheduler_daemon.wire.tensors import TensorMeta  # noqa: E402

A100, H100 = "NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB HBM3"
N = 1000
SRC = """\
extern "C" __global__ void vec_add(const float* a, const float* b, float* c, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    c[i] = a[i] + b[i];
}
extern "C" __global__ void spin(float* out, long long cycles) {
    long long t0 = clock64();
    while (clock64() - t0 < cycles) { }
    if (threadIdx.x == 0) out[blockIdx.x] = 1.0f;
}
extern "C" __global__ void fault(float* x) { x[0] = *(float*)0; }
"""
VEC_BUFS = [CudaBuffer("a", "float32", [N], "input"), CudaBuffer("b", "float32", [N], "input"),
            CudaBuffer("c", "float32", [N], "output")]
VEC_ARGS = [Buf(0), Buf(1), Buf(2), Scalar("int32", N)]
MS = 2000 * 1000   # stand-in clock: 2 GHz, so 2e6 cycles of spin are 1 ms per wave


def vec_model(**kw) -> CudaModel:
    return CudaModel(source=SRC, buffers=VEC_BUFS,
                     launches=[CudaLaunch("vec_add", [4], [256], args=VEC_ARGS)], **kw)


def spin_model(blocks: int, block: int, ms: float, instrument=False, est_us=10.0) -> CudaModel:
    return CudaModel(source=SRC, instrument=instrument,
                     buffers=[CudaBuffer("out", "float32", [blocks], "output")],
                     launches=[CudaLaunch("spin", [blocks], [block], est_us=est_us,
                                          args=[Buf(0), Scalar("int64", int(ms * MS))])])


def vec_inputs(seed=0):
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal(N, dtype=np.float32), rng.standard_normal(N, dtype=np.float32)
    meta = TensorMeta(dtype="float32", shape=[N])
    return a, b, [(meta, memoryview(a.tobytes())), (meta, memoryview(b.tobytes()))]


class Env:
    now = 0.0


@pytest.fixture(autouse=True)
def _clean_report():
    stub_env.clear()
    yield


@pytest.fixture
def rig():
    made = []

    def make(ordinal=0, streams=4):
        dev = CudaDriverDevice(ordinal, streams=streams)
        done, failed = [], []
        dev.start(Env(), lambda j, now, d: done.append((j, d)),
                  lambda j, now, m: failed.append((j, m)))
        made.append(dev)
        return dev, done, failed

    yield make
    for d in made:
        d.close()


def load(dev, key, model):
    return ModelEntry(key, key[1], dev.load_cuda(key, model), dev.spec.capacity)


def wait(dev, done, failed, n, timeout=20.0, on_poll=None):
    end = time.monotonic() + timeout
    while len(done) + len(failed) < n:
        assert time.monotonic() < end, "completions did not arrive"
        if on_poll:
            on_poll()
        if select.select([dev.wake_fd()], [], [], 0.002)[0]:
            dev.collect()


def _synchronize():
    """cuCtxSynchronize on this thread (the device made its context current here)."""
    from cuda.bindings import driver
    assert driver.cuCtxSynchronize()[0] == driver.CUresult.CUDA_SUCCESS


def _settle(dev, timeout=10.0) -> dict:
    """Collect completions and free what dropped jobs held until the device holds no job
    memory (or ``timeout``); the stand-in's live counts then."""
    end = time.monotonic() + timeout
    while True:
        if select.select([dev.wake_fd()], [], [], 0.01)[0]:
            dev.collect()
        gc.collect()
        dev.collect()                  # frees queued by dropped jobs, on this thread
        _synchronize()                 # ... and done (they are stream-ordered)
        live = stub_env.report()["live"]
        if live["pool_bytes"] == 0 or time.monotonic() > end:
            return live


def assert_clean(rep=None):
    """No rule broken, and the context released with nothing left alive in it."""
    rep = rep or stub_env.report()
    assert rep["violations"] == [], rep["violations"]
    assert rep["contexts_released"] >= 1 and rep["live"]["contexts"] == 0
    assert all(v == 0 for v in rep["leaks_at_release"].values()), str(rep["leaks_at_release"])
    live = rep["live"]
    assert (live["allocs"], live["pool_allocs"], live["host_allocs"], live["modules"],
            live["streams"], live["events"]) == (0, 0, 0, 0, 0, 0), live
    return rep


def run_vec_jobs(dev, done, failed, entry, n):
    jobs = []
    for i in range(n):
        a, b, payload = vec_inputs(i)
        j = Job(f"j{i}", "t", entry, 0.0, 0.0, payload=payload)
        j.stream = i
        dev.prepare(j)
        dev.launch(j)
        jobs.append((j, a + b))
    wait(dev, done, failed, n)
    assert not failed, failed
    for j, want in jobs:
        ((meta, out),) = dev.outputs(j)
        assert meta == TensorMeta(dtype="float32", shape=[N])
        assert np.array_equal(np.frombuffer(out, np.float32), want)
        j.payload = None
    return jobs


# -- the backend end to end ---------------------------------------------------------------
def test_jobs_run_through_the_real_bindings_and_close_leaves_nothing(rig):
    """Compile for the GPU, load, copy in, launch, time, copy out, free, close: every call the
    backend makes goes through the real bindings and meets the stand-in's rules."""
    dev, done, failed = rig(0)
    assert dev.gpu.name == A100 and dev.arch == "sm_80" and dev._async_alloc
    entry = load(dev, ("t", "vec"), vec_model())
    run_vec_jobs(dev, done, failed, entry, 3)
    assert dev.progress(done[0][0]) is None                     # not instrumented
    rep = stub_env.report()
    assert rep["loads"] == [{"kind": "cubin", "arch": 80, "result": 0}]
    launches = rep["recent_launches"]
    assert [ln["kernel"] for ln in launches] == ["vec_add"] * 3
    assert all(ln["args"][3] == N and ln["grid"] == [4, 1, 1] for ln in launches)
    assert len({ln["stream"] for ln in launches}) > 1           # spread over the pool
    dev.close()
    assert_clean()


def test_finding6_waiters_sleep_on_blocking_sync_events(rig):
    dev, done, failed = rig(0)
    entry = load(dev, ("t", "vec"), vec_model())
    run_vec_jobs(dev, done, failed, entry, 4)
    rep = stub_env.report()
    assert rep["event_syncs"] >= 4
    assert rep["spin_syncs"] == 0, "a waiter waited on an event that is not blocking-sync"
    dev.close()
    assert_clean()


def test_finding7_close_waits_for_a_kernel_that_outlives_the_waiters(rig, monkeypatch):
    """A kernel still running when close gives up on its waiters (a drain that ended with a
    long kernel in flight): its module, its progress counter and its memory must not be freed
    under it."""
    monkeypatch.setattr(cuda_driver._Waiter, "join",
                        lambda self, timeout=None: threading.Thread.join(self, 0.05))
    dev, done, failed = rig(0)
    entry = load(dev, ("t", "spin"), spin_model(1, 32, ms=400, instrument=True))
    j = Job("long", "t", entry, 0.0, 0.0)
    dev.launch(j)
    time.sleep(0.05)
    dev.close()                       # the kernel runs for another ~350 ms
    rep = stub_env.report()
    assert rep["violations"] == [], rep["violations"]
    del j
    gc.collect()
    assert_clean(rep)


def test_finding8_a_cubin_for_another_gpu_is_loaded_from_its_ptx(rig):
    dev, done, failed = rig(1)
    assert dev.gpu.name == H100 and dev.arch == "sm_90"
    entry = load(dev, ("t", "vec80"), vec_model(options=["-arch=sm_80"]))
    rep = stub_env.report()
    assert rep["loads"] == [{"kind": "cubin", "arch": 80, "result": 209},   # NO_BINARY_FOR_GPU
                            {"kind": "ptx", "arch": 80, "result": 0}]
    run_vec_jobs(dev, done, failed, entry, 1)
    with pytest.raises(ValueError, match=r"its cubin for sm_100 gave CUDA_ERROR_NO_BINARY_FOR_GPU "
                                         r"and its PTX CUDA_ERROR_INVALID_PTX"):
        dev.load_cuda(("t", "vec100"), vec_model(options=["-arch=sm_100"]))
    dev.close()
    assert_clean()


def test_finding10_progress_is_read_while_a_multi_wave_kernel_runs(rig):
    dev, done, failed = rig(0)
    per_wave = 2 * dev.gpu.sms            # 1024-thread blocks: 2 resident per SM
    blocks = 4 * per_wave
    entry = load(dev, ("t", "spin"), spin_model(blocks, 1024, ms=60, instrument=True))
    j = Job("spin", "t", entry, 0.0, 0.0)
    assert dev.progress(j) is None
    dev.launch(j)
    seen = []
    wait(dev, done, failed, 1, on_poll=lambda: seen.append(dev.progress(j)))
    assert not failed
    counts = [p[0] for p in seen if p is not None]
    assert any(0 < c < blocks for c in counts), counts[:50]      # seen mid-kernel
    assert counts == sorted(counts)
    assert dev.progress(j) == (blocks, blocks)
    ((_, out),) = dev.outputs(j)
    assert np.all(np.frombuffer(out, np.float32) == 1.0)
    j.payload = None
    dev.close()
    assert_clean()


# -- through the daemon's Server ----------------------------------------------------------
def _harness(dev, **limits):
    from tests.server_harness import Harness
    return Harness(device=dev, **limits)


def _reg(h, peer, name, model, rid=1):
    m = h.call(peer, P.RegisterCuda(req_id=rid, model=name, cuda=model))
    assert isinstance(m, P.Registered), m


_SEEN: dict = {}   # (harness, peer) -> DONEs that came back with other replies


def _keep(h, peer, replies):
    _SEEN.setdefault((id(h), peer), []).extend(r for r in replies if isinstance(r[0], P.Done))
    return replies


def _submit(h, peer, rid, model, inputs=()):
    metas = [m for m, _ in inputs]
    return _keep(h, peer, h.send(peer, P.Submit(req_id=rid, model=model, inputs=metas),
                                 *[bytes(b) for _, b in inputs]))


def _dones(h, peer):
    got = _SEEN.pop((id(h), peer), []) + h.take(peer)
    return {m.req_id: (m, raw) for m, raw in got if isinstance(m, P.Done)}


def test_finding10_status_tells_what_is_left_of_the_kernel_in_flight(rig):
    dev, _, _ = rig(0)
    h = _harness(dev)
    h.hello(b"a", "prog")
    blocks = 4 * 2 * dev.gpu.sms
    _reg(h, b"a", "spin", spin_model(blocks, 1024, ms=60, instrument=True, est_us=240_000))
    assert not [m for m, _ in _submit(h, b"a", 7, "spin") if isinstance(m, P.Error)]
    left, got, rid = [], {}, 100
    end = time.monotonic() + 20
    while not got:
        assert time.monotonic() < end
        rid += 1
        st = h.call(b"a", P.Status(req_id=rid, target=7))
        assert isinstance(st, P.StatusReply), st
        left.append(st.job.remaining_ms)
        got = _dones(h, b"a")
        if select.select([dev.wake_fd()], [], [], 0.01)[0]:
            dev.collect()
            _keep(h, b"a", h.send(b"a", P.Ping(seq=rid)))
            got = _dones(h, b"a")
    assert got[7][0].status == "done"
    assert left[0] > 0                                  # the kernel in flight is counted
    assert any(0 < x < 240 for x in left), left         # ... and what is left of it shrinks
    assert left == sorted(left, reverse=True)
    h.close()
    assert_clean()


def test_finding2_device_memory_quota_per_tenant_and_back_to_baseline(rig):
    """The cuda backend allocates every buffer of a job at submit: a tenant whose jobs would
    hold more device memory than its quota is refused (its inputs alone are under it), another
    tenant's job runs; after hundreds of jobs, a third of them cancelled, the device holds no
    job memory and the tenants no bytes."""
    dev, _, _ = rig(0)
    per_job = 3 * 4 * N                                   # a, b, c: 12000 bytes on the device
    h = _harness(dev, max_tenant_bytes=3 * per_job)
    h.hello(b"a", "greedy")
    h.hello(b"b", "other")
    _reg(h, b"a", "vec", vec_model())
    _reg(h, b"b", "vec", vec_model())
    want = {}
    for rid in range(1, 5):
        a, b, inputs = vec_inputs(rid)
        want[rid] = a + b
        replies = _submit(h, b"a", rid, "vec", inputs)
        errors = [m for m, _ in replies if isinstance(m, P.Error)]
        if rid < 4:
            assert not errors, errors
    assert errors and errors[0].code == "LIMIT"
    assert h.server.tenants["greedy"].bytes_held == 3 * per_job  # device bytes, not inputs
    a, b, inputs = vec_inputs(99)
    assert not [m for m, _ in _submit(h, b"b", 1, "vec", inputs) if isinstance(m, P.Error)]
    h.run()
    done_a, done_b = _dones(h, b"a"), _dones(h, b"b")
    assert sorted(done_a) == [1, 2, 3] and list(done_b) == [1]
    for rid, (m, raw) in done_a.items():
        assert m.status == "done" and np.array_equal(np.frombuffer(raw[0], np.float32), want[rid])
    assert np.array_equal(np.frombuffer(done_b[1][1][0], np.float32), a + b)
    _synchronize()                                       # the frees are stream-ordered
    base = stub_env.report()["live"]
    assert base["pool_bytes"] == 0
    rid = 100
    for i in range(100):
        for _ in range(3):
            rid += 1
            _submit(h, b"a", rid, "vec", vec_inputs(rid)[2])
        _keep(h, b"a", h.send(b"a", P.Cancel(req_id=10**6 + rid, target=rid)))  # 1 of 3
        h.run()                                          # three jobs fill the quota
    got = _dones(h, b"a")
    outcomes = [m.status for m, _ in got.values()]
    assert len(outcomes) == 300 and outcomes.count("done") >= 200   # none refused
    live = _settle(dev)   # a job cancelled in flight gives its memory back after its kernel

    assert live["pool_bytes"] == base["pool_bytes"] == 0 and live["pool_allocs"] == 0
    assert all(t.bytes_held == 0 for t in h.server.tenants.values())
    h.close()
    assert_clean()


def test_an_illegal_address_fails_every_job_in_flight_and_the_daemon_answers(rig):
    dev, _, _ = rig(0)
    h = _harness(dev)
    h.hello(b"a", "faulty")
    h.hello(b"b", "victim")
    _reg(h, b"a", "fault", CudaModel(source=SRC, buffers=[CudaBuffer("x", "float32", [4],
                                                                      "output")],
                                     launches=[CudaLaunch("fault", [1], [1], args=[Buf(0)])]))
    _reg(h, b"b", "spin", spin_model(8, 64, ms=300))
    _submit(h, b"b", 1, "spin")
    time.sleep(0.02)
    _submit(h, b"a", 1, "fault")
    h.run()
    (ma, _), (mb, _) = _dones(h, b"a")[1], _dones(h, b"b")[1]
    assert ma.status == "failed" and "CUDA_ERROR_ILLEGAL_ADDRESS" in ma.error
    assert mb.status == "failed" and "restart the daemon" in mb.error
    st = h.call(b"b", P.Status(req_id=5))
    assert isinstance(st, P.StatusReply) and st.daemon_id
    _submit(h, b"b", 2, "spin")
    h.run()
    (m2, _) = _dones(h, b"b")[2]
    assert m2.status == "failed" and "restart the daemon" in m2.error
    h.close()                                            # and it shuts down
    rep = stub_env.report()
    assert rep["sticky"] == 700 and rep["violations"] == [] and rep["live"]["contexts"] == 0


# -- NVML and CUDA numbering --------------------------------------------------------------
def test_finding5_spec_and_nvml_follow_cuda_numbering_not_nvml_indices(monkeypatch):
    import pynvml

    from profilers.op_profile import NvmlSampler
    from scheduler_daemon.devices import factory, torch_device
    assert pynvml.__file__.startswith(str(stub_env.NVML_DIR))
    made = []

    class Recorder:
        def __init__(self, spec, device):
            made.append((spec.name, device))
    monkeypatch.setattr(torch_device, "TorchDevice", Recorder)
    monkeypatch.setattr(factory, "_torch_has_cuda", lambda: True)
    assert factory.visible_gpus() == [H100, A100]          # NVML: PCI order
    assert factory.cuda_device_name(0) == A100              # CUDA: the driver's order
    factory.make_device("auto")                             # torch on cuda = cuda:0
    factory.make_device("torch", torch_device="cuda:1")
    assert made == [("A100", "cuda"), ("H100", "cuda:1")]
    for index, util in ((0, 81), (1, 41)):                  # A100 is 81 % busy, H100 41 %
        with NvmlSampler(index, interval_s=0.005) as s:
            time.sleep(0.02)
        assert s.available and s.samples and s.sm_mean == util, (index, s.error)
    dev = CudaDriverDevice(0, streams=1)
    assert dev.utilisation() == pytest.approx(0.81)
    dev.close()
    assert pynvml._stub_state()["inits"] == 0              # every nvmlInit was undone


def test_the_stand_in_driver_refuses_misuse():
    """What the stand-in punishes, through the real bindings (the rules the backend meets)."""
    import ctypes

    from cuda.bindings import driver as d

    from scheduler_daemon.cuda.nvrtc import compile_source
    R = d.CUresult
    assert d.cuInit(0)[0] == R.CUDA_SUCCESS
    _, dev0 = d.cuDeviceGet(0)
    _, ctx = d.cuDevicePrimaryCtxRetain(dev0)
    errs = []
    t = threading.Thread(target=lambda: errs.append(d.cuMemAlloc(64)[0]))
    t.start()
    t.join()
    assert errs == [R.CUDA_ERROR_INVALID_CONTEXT]           # no context on that thread
    assert d.cuCtxSetCurrent(ctx)[0] == R.CUDA_SUCCESS
    src = SRC
    err, mod = d.cuModuleLoadData(compile_source(src, arch="sm_90").cubin)
    assert err == R.CUDA_ERROR_NO_BINARY_FOR_GPU             # an sm_90 cubin on the A100
    _, mod = d.cuModuleLoadData(compile_source(src, arch="sm_80").cubin)
    _, spin = d.cuModuleGetFunction(mod, b"spin")
    _, vec = d.cuModuleGetFunction(mod, b"vec_add")
    _, s1 = d.cuStreamCreate(1)
    _, s2 = d.cuStreamCreate(1)
    _, buf = d.cuMemAllocAsync(4 * N, s1)
    _, out = d.cuMemAllocAsync(4 * N, s1)
    keep = []

    def argv(*values):
        arr = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])
        keep.extend([*values, arr])
        return ctypes.addressof(arr)
    p_spin = argv(ctypes.c_uint64(int(buf)), ctypes.c_int64(200 * MS))   # writes buf, 200 ms
    assert d.cuLaunchKernel(spin, 1, 1, 1, 32, 1, 1, 0, s1, p_spin, 0)[0] == R.CUDA_SUCCESS
    p_vec = argv(ctypes.c_uint64(int(buf)), ctypes.c_uint64(int(buf)),   # reads it on s2
                 ctypes.c_uint64(int(out)), ctypes.c_int32(N))            # with no event between
    assert d.cuLaunchKernel(vec, 4, 1, 1, 256, 1, 1, 0, s2, p_vec, 0)[0] == R.CUDA_SUCCESS
    assert d.cuModuleUnload(mod)[0] == R.CUDA_SUCCESS        # with both in flight
    _, ev = d.cuEventCreate(d.CUevent_flags.CU_EVENT_DISABLE_TIMING)
    d.cuEventRecord(ev, s1)
    assert d.cuEventElapsedTime(ev, ev)[0] == R.CUDA_ERROR_INVALID_HANDLE
    d.cuCtxSynchronize()
    assert d.cuMemFreeAsync(buf, s1)[0] == R.CUDA_SUCCESS
    assert d.cuMemFreeAsync(buf, s1)[0] == R.CUDA_ERROR_INVALID_VALUE   # twice
    rep = stub_env.report()
    v = "\n".join(rep["violations"])
    assert "without a current context on this thread" in v
    assert "race: kernel vec_add" in v and "kernel spin" in v
    assert "cuModuleUnload while kernel" in v
    assert "CU_EVENT_DISABLE_TIMING" in v
    assert "cuMemFreeAsync(%#x)" % int(buf) in v                      # freed twice
    for x in (out,):
        d.cuMemFreeAsync(x, s1)
    d.cuCtxSynchronize()
    for s in (s1, s2):
        d.cuStreamDestroy(s)
    d.cuEventDestroy(ev)
    d.cuDevicePrimaryCtxRelease(dev0)
    rep = stub_env.report()
    assert all(x == 0 for x in rep["leaks_at_release"].values()), rep["leaks_at_release"]
    stub_env.clear()
