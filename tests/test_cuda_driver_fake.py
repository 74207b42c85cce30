"""``CudaDriverDevice`` on a stand-in driver (tests/fake_cuda.py): the device's own logic
(buffers, argument packing, streams, waiter threads, completions, progress counters, failures,
freeing) without a GPU. The same paths on real hardware: tests/test_gpu_cuda.py."""
from __future__ import annotations

import gc
import select
import time

import msgspec
import numpy as np
import pytest

pytest.importorskip("cuda.bindings", reason="cuda-python is not installed (pip install "
                    "'gpusched[cuda]')")

from scheduler_daemon.core.jobs import Job, JobState, ModelEntry
from scheduler_daemon.core.policies import make_policy
from scheduler_daemon.core.scheduler import SchedulerCore
from scheduler_daemon.devices.cuda_driver import CudaDriverDevice
from scheduler_daemon.wire.cuda import Buf, CudaBuffer, CudaLaunch, CudaModel, Scalar
from scheduler_daemon.wire.tensors import TensorMeta
from tests.fake_cuda import INSTRUMENTED, KERNELS, FakeDriver, FakeKernel, R, vec_add

N = 1000
SRC = """\
extern "C" __global__ void vec_add(const float* a, const float* b, float* c, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) c[i] = a[i] + b[i];
}
extern "C" __global__ void scale(float* x, float alpha, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= alpha;
}
extern "C" __global__ void fault(float* x) { x[0] = *(float*)0; }
"""
VEC_ARGS = [Buf(0), Buf(1), Buf(2), Scalar("int32", N)]


class Env:
    now = 0.0


def model(launches=None, instrument=False, buffers=None) -> CudaModel:
    return CudaModel(source=SRC, instrument=instrument, buffers=buffers or [
        CudaBuffer("a", "float32", [N], "input"), CudaBuffer("b", "float32", [N], "input"),
        CudaBuffer("c", "float32", [N], "output")],
        launches=launches or [CudaLaunch("vec_add", [4], [256], args=VEC_ARGS)])


@pytest.fixture
def rig():
    made = []

    def make(kernels=KERNELS, **kw):
        fake = FakeDriver(kernels, **kw)
        dev = CudaDriverDevice(0, api=fake, streams=4)
        done, failed = [], []
        dev.start(Env(), lambda j, now, d: done.append((j, d)),
                  lambda j, now, m: failed.append((j, m)))
        made.append(dev)
        return fake, dev, done, failed

    yield make
    for d in made:
        d.close()


def register(dev, m, key=("t", "m")):
    specs = dev.load_cuda(key, m)
    return ModelEntry(key, "m", specs, dev.spec.capacity)


def inputs(seed=0):
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal(N, dtype=np.float32), rng.standard_normal(N, dtype=np.float32)
    meta = TensorMeta(dtype="float32", shape=[N])
    return a, b, [(meta, memoryview(a.tobytes())), (meta, memoryview(b.tobytes()))]


def job(entry, payload, i=0, stream=-1):
    j = Job(f"j{i}", "t", entry, 0.0, 0.0, payload=payload)
    j.stream = stream
    return j


def wait(dev, done, failed, n, timeout=10.0):
    end = time.monotonic() + timeout
    while len(done) + len(failed) < n:
        assert time.monotonic() < end, "completions did not arrive"
        select.select([dev.wake_fd()], [], [], 0.5)
        dev.collect()


@pytest.mark.parametrize("pools", [True, False], ids=["cuMemAllocAsync", "cuMemAlloc"])
def test_vec_add_runs_and_memory_is_freed(rig, pools):
    fake, dev, done, failed = rig(memory_pools=pools)
    assert dev._async_alloc is pools
    entry = register(dev, model())
    assert [(k.name, k.grid, k.block) for k in entry.kernels] == [("vec_add", 4, 256)]
    a, b, payload = inputs()
    j = job(entry, payload)
    dev.prepare(j)
    assert len(fake.live) == 3                      # a, b, c on the device
    dev.launch(j)
    wait(dev, done, failed, 1)
    assert not failed and done[0][0] is j and done[0][1] > 0
    ((meta, out),) = dev.outputs(j)
    assert meta == TensorMeta(dtype="float32", shape=[N])
    assert np.array_equal(np.frombuffer(out, np.float32), a + b)
    assert fake.live == {}                          # freed after the outputs came back
    _name, grid, block, smem, _stream, args = fake.launches[0]
    assert (grid, block, smem) == ((4, 1, 1), (256, 1, 1), 0) and args[3] == N
    assert dev.progress(j) is None                  # not instrumented


def test_launches_run_in_order_with_scalars(rig):
    fake, dev, done, failed = rig()
    m = model(launches=[CudaLaunch("vec_add", [4], [256], args=VEC_ARGS),
                        CudaLaunch("scale", [4], [256], args=[Buf(2), Scalar("float32", 2.5),
                                                               Scalar("int32", N)])])
    entry = register(dev, m)
    a, b, payload = inputs(1)
    j = job(entry, payload)
    dev.prepare(j)
    for k in range(2):
        j.cur = k
        dev.launch(j)
        wait(dev, done, failed, k + 1)
    ((_, out),) = dev.outputs(j)
    assert np.allclose(np.frombuffer(out, np.float32), (a + b) * 2.5)
    assert not failed and fake.live == {}


def test_instrumented_launch_counts_blocks_in_mapped_memory(rig):
    fake, dev, done, failed = rig(kernels=INSTRUMENTED)
    entry = register(dev, model(launches=[CudaLaunch("vec_add", [4, 2], [128], args=VEC_ARGS)],
                                instrument=True))
    a, b, payload = inputs(2)
    j = job(entry, payload)
    dev.prepare(j)
    assert dev.progress(j) is None
    dev.launch(j)
    wait(dev, done, failed, 1)
    assert dev.progress(j) == (8, 8)                # every block of the 4x2 grid
    counter = fake.launches[0][5][4]
    assert any(h <= counter < h + 4096 for h in fake.host)   # a slot of the mapped slab
    ((_, out),) = dev.outputs(j)
    assert np.array_equal(np.frombuffer(out, np.float32), a + b)


def test_two_jobs_go_on_two_streams(rig):
    fake, dev, done, failed = rig()
    entry = register(dev, model())
    jobs = []
    for i in range(2):
        j = job(entry, inputs(i)[2], i, stream=i)
        dev.prepare(j)
        jobs.append(j)
    # hold the first launch "in flight": the waiter has not been told yet
    dev.launch(jobs[0])
    dev.launch(jobs[1])
    wait(dev, done, failed, 2)
    assert fake.launches[0][4] is not fake.launches[1][4]
    for j in jobs:
        dev.outputs(j)
    assert fake.live == {}


def test_a_failing_launch_fails_only_its_job(rig):
    fake, dev, done, failed = rig()
    entry = register(dev, model())
    bad, good = job(entry, inputs()[2], 0), job(entry, inputs()[2], 1)
    dev.prepare(bad)
    dev.prepare(good)
    fake.fail_next["cuLaunchKernel"] = R.CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES
    dev.launch(bad)
    dev.launch(good)
    wait(dev, done, failed, 2)
    assert [j for j, _ in failed] == [bad] and [j for j, _ in done] == [good]
    msg = failed[0][1]
    assert "kernel 0 (vec_add) could not launch" in msg and "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES" in msg
    bad.payload = None                               # the daemon drops a failed job
    dev.outputs(good)
    gc.collect()
    dev.collect()
    assert fake.live == {}


def test_dropped_jobs_free_their_memory(rig):
    fake, dev, _done, _failed = rig()
    entry = register(dev, model())
    j = job(entry, inputs()[2])
    dev.prepare(j)
    assert len(fake.live) == 3
    j.payload = None                                 # cancelled before it ran
    del j
    gc.collect()
    dev.collect()                                    # frees on the daemon's thread
    assert fake.live == {}


def test_a_faulting_kernel_breaks_the_context_for_later_jobs(rig):
    _fake, dev, done, failed = rig()
    m = model(launches=[CudaLaunch("fault", [1], [1], args=[Buf(0)])],
              buffers=[CudaBuffer("x", "float32", [4], "output")])
    entry = register(dev, m)
    j1 = job(entry, None, 1)
    dev.launch(j1)                                   # no inputs: buffers made at launch
    wait(dev, done, failed, 1)
    assert "CUDA_ERROR_ILLEGAL_ADDRESS" in failed[0][1] and "restart the daemon" in failed[0][1]
    j2 = job(entry, None, 2)
    dev.launch(j2)
    wait(dev, done, failed, 2)
    assert failed[1][0] is j2 and "restart the daemon" in failed[1][1]


def test_inputs_are_checked_against_the_buffers(rig):
    fake, dev, _done, _failed = rig()
    entry = register(dev, model())
    _a, _b, payload = inputs()
    with pytest.raises(ValueError, match=r"takes 2 input tensors \(a, b\); 1 were sent"):
        dev.prepare(job(entry, payload[:1]))
    wrong = [(TensorMeta(dtype="float64", shape=[N]), b"\0" * 8 * N), payload[1]]
    with pytest.raises(ValueError, match=r"input 0 \(a\): got float64\[1000\], the model's "
                                         r"buffer is float32\[1000\]"):
        dev.prepare(job(entry, wrong))
    assert fake.live == {}
    other = Job("x", "t", ModelEntry(("t", "other"), "other", entry.kernels, dev.spec.capacity),
                0.0, 0.0, payload=payload)
    with pytest.raises(ValueError, match="not a CUDA model loaded"):
        dev.prepare(other)


def test_load_checks_what_only_the_function_knows(rig):
    small = FakeKernel("vec_add", ["ptr", "ptr", "ptr", "i32"], vec_add, regs=128,
                       max_threads=256)
    fake, dev, _done, _failed = rig(kernels=[small])
    with pytest.raises(ValueError, match=r"launch 0 \(vec_add\): block of 512 threads, the kernel "
                                         r"\(using 128 registers per thread\) allows at most 256"):
        dev.load_cuda(("t", "m"), model(launches=[CudaLaunch("vec_add", [2], [512],
                                                             args=VEC_ARGS)]))
    assert fake.modules == set()                     # unloaded again
    specs = dev.load_cuda(("t", "m"), model(launches=[CudaLaunch("vec_add", [2], [256],
                                                                 smem=100_000, args=VEC_ARGS)]))
    assert specs[0].regs == 128 and specs[0].smem == 100_000
    assert fake.func_attrs[("vec_add", "CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES")] == 100_000
    with pytest.raises(ValueError, match=r"launch 0 \(vec_add\): block 2048x1x1 = 2048 threads"):
        dev.load_cuda(("t", "m2"), model(launches=[CudaLaunch("vec_add", [2], [2048],
                                                              args=VEC_ARGS)]))


def test_forgotten_model_is_unloaded_when_its_jobs_are_gone(rig):
    fake, dev, done, failed = rig()
    entry = register(dev, model())
    j = job(entry, inputs()[2])
    dev.prepare(j)
    dev.forget(entry.key)
    assert len(fake.modules) == 1                    # a job still uses it
    dev.launch(j)
    wait(dev, done, failed, 1)
    dev.outputs(j)
    assert fake.modules == set()


def test_plain_kernel_lists_are_refused_and_close_releases(rig):
    fake, dev, done, failed = rig(kernels=INSTRUMENTED)
    with pytest.raises(ValueError, match="raw CUDA models"):
        dev.validate([])
    assert "Fake H100" in dev.describe() and "cc 9.0" in dev.describe()
    assert dev.spec.name == "H100" and dev.spec.sms == 132 and dev.arch == "sm_90"
    entry = register(dev, model(instrument=True))
    j = job(entry, inputs()[2])
    dev.prepare(j)
    dev.launch(j)
    wait(dev, done, failed, 1)
    assert fake.host                                 # the counter slab
    dev.close()
    dev.close()
    assert fake.host == {} and fake.modules == set()


def test_with_the_scheduler_core(rig):
    """The daemon's loop in small: core dispatches, the device launches and reports."""
    fake, dev, _done, _failed = rig()
    core = SchedulerCore(make_policy("slo-srpt"), dev.spec.capacity)
    m = model(launches=[CudaLaunch("vec_add", [4], [256], args=VEC_ARGS),
                        CudaLaunch("scale", [4], [256], args=[Buf(2), Scalar("float32", -1.0),
                                                               Scalar("int32", N)])])
    specs = dev.load_cuda(("t", "m"), m)
    entry = core.make_model(("t", "m"), "m", specs)
    dev.start(Env(), core.on_complete, core.on_fail)
    want = {}
    for i in range(6):
        a, b, payload = inputs(i)
        j = Job(f"j{i}", "t", entry, 50.0, 0.0, payload=payload)
        dev.prepare(j)
        core.add(j, 0.0)
        want[j.id] = -(a + b)
    finished = []
    end = time.monotonic() + 10
    while len(finished) < 6:
        assert time.monotonic() < end
        while (j := core.next_dispatch(0.0)) is not None:
            dev.launch(j)
        select.select([dev.wake_fd()], [], [], 0.5)
        dev.collect()
        for j in core.drain_finished():
            assert j.state is JobState.DONE, j.error
            ((_, out),) = dev.outputs(j)
            assert np.array_equal(np.frombuffer(out, np.float32), want[j.id])
            j.payload = None
            finished.append(j)
    assert len({ln[4].id for ln in fake.launches}) > 1   # spread over the pool
    gc.collect()
    dev.collect()
    assert fake.live == {}


def test_model_struct_is_what_the_wire_decodes():
    m = model()
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(m), type=CudaModel) == m


def _scale(alpha):
    return CudaLaunch("scale", [4], [256], args=[Buf(2), Scalar("float32", alpha),
                                                 Scalar("int32", N)])


def _launch_run(dev, entry, payload, settle=0.1):
    """Launch a job's three kernels as one run and collect what the device reports:
    (job, completions, failures)."""
    reports, failed = [], []
    dev.start(Env(), lambda j, now, d, per=None: reports.append((j, d, per)),
              lambda j, now, msg, ran=0: failed.append((j, msg, ran)))
    j = job(entry, payload)
    dev.prepare(j)
    j.cur, j.run_len = 0, 3
    dev.launch(j)
    wait(dev, reports, failed, 1)
    time.sleep(settle)           # anything reported late (twice) would come now
    dev.collect()
    return j, reports, failed


def test_a_run_is_queued_on_one_stream_and_reported_once(rig):
    """The core's quantum: one dispatch of three kernels goes on one stream at once, and the
    device reports it once, after the last, with each kernel's duration."""
    fake, dev, _done, _failed = rig()
    entry = register(dev, model(launches=[CudaLaunch("vec_add", [4], [256], args=VEC_ARGS),
                                          _scale(2.5), _scale(2.0)]))
    a, b, payload = inputs(3)
    j, reports, failed = _launch_run(dev, entry, payload)
    assert not failed and len(reports) == 1
    _j, d, per = reports[0]
    assert len(per) == 3 and d == pytest.approx(sum(per))
    assert [ln[0] for ln in fake.launches] == ["vec_add", "scale", "scale"]
    assert len({ln[4].id for ln in fake.launches}) == 1          # one stream: in order
    ((_, out),) = dev.outputs(j)
    assert np.allclose(np.frombuffer(out, np.float32), (a + b) * 5.0)


def test_a_run_whose_second_launch_fails_is_answered_once(rig):
    fake, dev, _done, _failed = rig()
    calls = []
    real = fake.cuLaunchKernel

    def second_fails(*args):
        calls.append(args)
        return (R.CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES,) if len(calls) == 2 else real(*args)
    fake.cuLaunchKernel = second_fails
    entry = register(dev, model(launches=[CudaLaunch("vec_add", [4], [256], args=VEC_ARGS),
                                          _scale(2.5), _scale(2.0)]))
    j, reports, failed = _launch_run(dev, entry, inputs()[2])
    assert reports == [] and len(failed) == 1 and len(calls) == 2   # the third never went
    # answered after the queued kernel 0 ran, counting it
    assert "kernel 1 (scale) could not launch" in failed[0][1] and failed[0][2] == 1
    j.payload = None
    gc.collect()
    time.sleep(0.05)
    dev.collect()
    assert fake.live == {}


def test_a_run_whose_kernel_faults_is_answered_once(rig):
    _fake, dev, _done, _failed = rig()
    entry = register(dev, model(launches=[_scale(2.0), CudaLaunch("fault", [1], [1],
                                                                   args=[Buf(2)]), _scale(3.0)]))
    _j, reports, failed = _launch_run(dev, entry, inputs()[2])
    assert reports == [] and len(failed) == 1
    _j, msg, ran = failed[0]
    # the stand-in faults at the launch, so the run's third launch finds the context broken
    # (a real GPU faults later and the waiter reports kernel 1): one answer either way
    assert ran in (0, 1) and "restart the daemon" in msg
