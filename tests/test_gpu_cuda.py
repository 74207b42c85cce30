"""The CUDA driver backend on a real GPU (`make test-gpu`); skipped without one.

Compile with NVRTC for the GPU's architecture, load, launch on the device's streams, time with
events, refuse impossible shapes. Progress counted in host-mapped memory while a multi-wave
kernel runs, and the other GPU paths of issue 18: tests/test_gpu_paths.py.
"""
from __future__ import annotations

import select
import time

import numpy as np
import pytest

pytest.importorskip("cuda.bindings", reason="cuda-python is not installed (pip install "
                    "'gpusched[cuda]')")

from scheduler_daemon.core.jobs import Job, ModelEntry
from scheduler_daemon.cuda.detect import cuda_gpus
from scheduler_daemon.wire.cuda import Buf, CudaBuffer, CudaLaunch, CudaModel, Scalar
from scheduler_daemon.wire.tensors import TensorMeta

_GPUS, _, _WHY = cuda_gpus()
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not _GPUS, reason=f"needs a CUDA GPU ({_WHY}); run "
                                 "'make test-gpu' on a GPU machine")]

N = 1 << 16
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
extern "C" __global__ void __launch_bounds__(256) bounded(float* x) { x[threadIdx.x] = 1.0f; }
extern "C" __global__ void reverse(const float* x, float* y, int n) {
    extern __shared__ float buf[];
    for (int i = threadIdx.x; i < n; i += blockDim.x) buf[i] = x[i];
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) y[i] = buf[n - 1 - i];
}
"""
VEC = [CudaBuffer("a", "float32", [N], "input"), CudaBuffer("b", "float32", [N], "input"),
       CudaBuffer("c", "float32", [N], "output")]
VEC_ARGS = [Buf(0), Buf(1), Buf(2), Scalar("int32", N)]


class Env:
    now = 0.0


@pytest.fixture(scope="module")
def rig():
    from scheduler_daemon.devices.cuda_driver import CudaDriverDevice
    from scheduler_daemon.devices.factory import make_device
    dev = make_device("cuda")
    assert isinstance(dev, CudaDriverDevice)
    done, failed = [], []
    dev.start(Env(), lambda j, now, d: done.append((j, d)), lambda j, now, m: failed.append((j, m)))
    yield dev, done, failed
    dev.close()


def load(dev, key, model):
    return ModelEntry(key, key[1], dev.load_cuda(key, model), dev.spec.capacity)


def wait_for(dev, done, failed, jobs, timeout=30.0, on_poll=None):
    end = time.monotonic() + timeout
    ids = {j.id for j in jobs}
    while ids - {j.id for j, _ in done} - {j.id for j, _ in failed}:
        assert time.monotonic() < end, "completions did not arrive"
        if on_poll:
            on_poll()
        select.select([dev.wake_fd()], [], [], 0.01)
        dev.collect()
    bad = [(j.id, m) for j, m in failed if j.id in ids]
    assert not bad, bad


def vec_inputs(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal(N, dtype=np.float32), rng.standard_normal(N, dtype=np.float32)
    meta = TensorMeta(dtype="float32", shape=[N])
    return a, b, [(meta, memoryview(a.tobytes())), (meta, memoryview(b.tobytes()))]


def test_detection_and_backend(rig):
    dev, _, _ = rig
    g = _GPUS[0]
    assert g.sms > 0 and g.cc >= (5, 0) and g.total_mem > 0 and g.smem_optin >= 48 * 1024
    assert g.name in dev.describe() and dev.arch.startswith(("sm_", "compute_"))


def test_vec_add_on_the_gpu_with_event_timing(rig):
    dev, done, failed = rig
    entry = load(dev, ("t", "vec"), CudaModel(source=SRC, buffers=VEC, launches=[
        CudaLaunch("vec_add", [N // 256], [256], args=VEC_ARGS)]))
    a, b, payload = vec_inputs(0)
    j = Job("vec", "t", entry, 0.0, 0.0, payload=payload)
    dev.prepare(j)
    dev.launch(j)
    wait_for(dev, done, failed, [j])
    dur = next(d for jj, d in done if jj is j)
    assert 0 < dur < 1.0
    ((meta, out),) = dev.outputs(j)
    assert meta.shape == [N] and np.array_equal(np.frombuffer(out, np.float32), a + b)


def test_impossible_shapes_are_refused(rig):
    dev, _, _ = rig
    with pytest.raises(ValueError, match=r"launch 0 \(vec_add\): block 2048x1x1 = 2048 threads"):
        dev.load_cuda(("t", "big"), CudaModel(source=SRC, buffers=VEC, launches=[
            CudaLaunch("vec_add", [1], [2048], args=VEC_ARGS)]))
    with pytest.raises(ValueError, match=r"launch 0 \(bounded\): block of 512 threads, the "
                                         r"kernel .* allows at most 256"):
        dev.load_cuda(("t", "lb"), CudaModel(
            source=SRC, buffers=[CudaBuffer("x", "float32", [512], "output")],
            launches=[CudaLaunch("bounded", [1], [512], args=[Buf(0)])]))
    too_much = dev.limits.smem_optin + 1
    with pytest.raises(ValueError, match=r"launch 0 \(reverse\): smem"):
        dev.load_cuda(("t", "smem"), CudaModel(source=SRC, buffers=VEC, launches=[
            CudaLaunch("reverse", [1], [256], smem=too_much,
                       args=[Buf(0), Buf(2), Scalar("int32", 16)])]))


def test_opt_in_shared_memory(rig):
    dev, done, failed = rig
    n = min(dev.limits.smem_optin, 96 * 1024) // 4
    if n * 4 <= 48 * 1024:
        pytest.skip("this GPU has no opt-in shared memory beyond 48 KiB")
    entry = load(dev, ("t", "rev"), CudaModel(
        source=SRC, buffers=[CudaBuffer("x", "float32", [n], "input"),
                             CudaBuffer("y", "float32", [n], "output")],
        launches=[CudaLaunch("reverse", [1], [256], smem=n * 4,
                             args=[Buf(0), Buf(1), Scalar("int32", n)])]))
    x = np.arange(n, dtype=np.float32)
    j = Job("rev", "t", entry, 0.0, 0.0,
            payload=[(TensorMeta(dtype="float32", shape=[n]), memoryview(x.tobytes()))])
    dev.prepare(j)
    dev.launch(j)
    wait_for(dev, done, failed, [j])
    ((_, out),) = dev.outputs(j)
    assert np.array_equal(np.frombuffer(out, np.float32), x[::-1])


def test_two_jobs_on_two_streams_at_once(rig):
    dev, done, failed = rig
    blocks = dev.gpu.sms // 2 or 1
    entry = load(dev, ("t", "spin2"), CudaModel(
        source=SRC, buffers=[CudaBuffer("out", "float32", [blocks], "output")],
        launches=[CudaLaunch("spin", [blocks], [64], args=[Buf(0), Scalar("int64", 100_000_000)])]))
    jobs = [Job(f"s{i}", "t", entry, 0.0, 0.0) for i in range(2)]
    for i, j in enumerate(jobs):
        j.stream = i
        dev.launch(j)
    assert jobs[0].payload.stream != jobs[1].payload.stream
    t0 = time.perf_counter()
    wait_for(dev, done, failed, jobs)
    wall = time.perf_counter() - t0
    durs = [d for j, d in done if j in jobs]
    assert wall < 0.75 * sum(durs)                  # they overlapped (each takes half the SMs)
    for j in jobs:
        dev.outputs(j)
