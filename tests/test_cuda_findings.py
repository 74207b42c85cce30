"""Issue 18's findings that an in-process test can show (no GPU, no subprocess): the GPU test
helper, per-op CUDA profile times, NVML by bus id, the torch backend's CUDA paths (a stand-in
``torch`` module: a CPU build cannot run them), and the device-memory quota through the Server
with the driver backend on the pure-Python driver double. The rest run on the strict stand-in
driver: tests/test_cuda_stub.py. Each test here fails without its fix."""
from __future__ import annotations

import contextlib
import gc
import importlib.util
import select
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

STUB_NVML = Path(__file__).resolve().parent / "stubs" / "nvml" / "pynvml.py"


def _stub_pynvml():
    """The strict stand-in NVML as its own module (sys.modules' pynvml is left alone)."""
    spec = importlib.util.spec_from_file_location("stub_pynvml", STUB_NVML)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# -- finding 1 ----------------------------------------------------------------------------
def test_finding1_the_torch_cuda_helper_of_the_gpu_tests_does_not_recurse():
    import torch

    from tests.test_gpu import _torch_cuda
    if torch.cuda.is_available():
        assert _torch_cuda() is torch
    else:
        with pytest.raises(pytest.skip.Exception, match="CPU build"):
            _torch_cuda()


# -- finding 3 ----------------------------------------------------------------------------
def test_finding3_per_op_cuda_time_counts_the_cpu_side_event_only():
    """Kineto reports each record_function range twice on CUDA: the CPU-side event (whose
    device time is that of the kernels launched inside it) and a device-side
    gpu_user_annotation of the same name (pytorch#144613)."""
    from torch.autograd import DeviceType

    from profilers.op_profile import RANGE_PREFIX, _range_times_us

    def ev(name, dt, device_us, cpu_us):
        return SimpleNamespace(name=name, device_type=dt, device_time_total=device_us,
                               cpu_time_total=cpu_us)
    events = [ev(f"{RANGE_PREFIX}0/addmm", DeviceType.CPU, 40.0, 12.0),
              ev(f"{RANGE_PREFIX}0/addmm", DeviceType.CUDA, 40.0, 0.0),
              ev(f"{RANGE_PREFIX}1/relu", DeviceType.CPU, 5.0, 3.0),
              ev(f"{RANGE_PREFIX}1/relu", DeviceType.CUDA, 5.0, 0.0),
              ev("aten::addmm", DeviceType.CPU, 40.0, 10.0)]
    prof = SimpleNamespace(events=lambda: events)
    assert _range_times_us(prof, cuda=True) == {0: 40.0, 1: 5.0}
    assert _range_times_us(prof, cuda=False) == {0: 12.0, 1: 3.0}


# -- finding 5 ----------------------------------------------------------------------------
def test_finding5_nvml_sampler_finds_the_cuda_device_by_its_bus_id():
    """CUDA device 1 here is the A100 at 81:00.0, which NVML (PCI order) calls GPU 1 too,
    while NVML's GPU 0 is the H100: asked by bus id, the sampler reads the A100."""
    from profilers.op_profile import NvmlSampler
    nvml = _stub_pynvml()
    with NvmlSampler(0, interval_s=0.002, nvml=nvml, bus_id="0000:81:00.0") as s:
        pass
    assert s.available and s.samples and s.sm_mean == 81 and s.mem_mean == 40
    assert "nvmlDeviceGetHandleByIndex" not in nvml.calls
    assert nvml._stub_state()["inits"] == 0
    with NvmlSampler(0, nvml=nvml, bus_id="0000:99:00.0") as s:   # no such GPU
        pass
    assert not s.available and "NotFound" in s.error and nvml._stub_state()["inits"] == 0


# -- findings 6 and 9: the torch backend on CUDA --------------------------------------------
class _FakeCuda:
    """``torch.cuda`` as the torch backend uses it, recording which device each thread set."""

    def __init__(self):
        self.local = threading.local()
        self.set_on: dict[str, str] = {}
        self.events: list = []
        self.streams: list = []

    def set_device(self, d):
        self.local.device = str(d)
        self.set_on[threading.current_thread().name] = str(d)

    def current(self):
        return getattr(self.local, "device", "cuda:0")   # an unset thread: GPU 0

    def Event(self, enable_timing=False, blocking=False, interprocess=False):  # noqa: N802
        cuda = self

        class Ev:
            waited_on = None

            def record(self):
                pass

            def synchronize(self):
                self.waited_on = cuda.current()

            def elapsed_time(self, other):
                return 1.5
        e = Ev()
        e.blocking, e.timing = blocking, enable_timing
        self.events.append(e)
        return e

    def Stream(self, device=None):  # noqa: N802
        self.streams.append((str(device), self.current()))
        return object()

    def stream(self, s):
        return contextlib.nullcontext()


class _FakeTensor:
    def __init__(self):
        self.calls = []

    def pin_memory(self, *a, **k):
        self.calls.append("pin_memory")
        return self

    def to(self, device, non_blocking=False):
        self.calls.append(("to", str(device), non_blocking))
        return self


def test_findings6_and_9_torch_on_cuda_sets_its_device_everywhere_and_waits_blocking():
    import torch

    from scheduler_daemon.core.gpu_specs import gpu_spec
    from scheduler_daemon.core.jobs import Job, ModelEntry
    from scheduler_daemon.devices.torch_device import TorchDevice
    from scheduler_daemon.wire.kernels import KernelSpec
    cuda = _FakeCuda()
    fake_torch = SimpleNamespace(device=torch.device, cuda=cuda)
    dev = TorchDevice(gpu_spec("H100"), "cuda:1", workers=2, torch_module=fake_torch)
    try:
        assert cuda.set_on[threading.current_thread().name] == "cuda:1"   # the daemon's thread
        t = _FakeTensor()
        assert dev._to_device(t) is t
        assert t.calls == [("to", "cuda:1", False)]       # no pin_memory (GPU 0, a 2nd copy)
        done, failed = [], []
        dev.start(SimpleNamespace(now=0.0), lambda j, now, d: done.append((j, d)),
                  lambda j, now, m: failed.append((j, m)))
        entry = ModelEntry(("t", "m"), "m", [KernelSpec(name="k", est_us=1)],
                           gpu_spec("H100").capacity)

        class Work:      # an intercepted op batch: the op runs on the worker's stream
            def kernel(self, i):
                return lambda payload: payload
        jobs = [Job(f"j{i}", "t", entry, 0.0, 0.0, payload=Work()) for i in range(6)]
        for j in jobs:
            dev.launch(j)
        while len(done) + len(failed) < len(jobs):
            assert select.select([dev.wake_fd()], [], [], 10)[0], "workers did not finish"
            dev.collect()
        assert not failed and all(d == pytest.approx(1.5e-3) for _, d in done)
        workers = {n: d for n, d in cuda.set_on.items() if n.startswith("gpusched-torch")}
        assert workers and set(workers.values()) == {"cuda:1"}   # every worker set it
        assert all(cur == "cuda:1" for _, cur in cuda.streams)
        waited = [e for e in cuda.events if e.waited_on is not None]
        assert len(waited) == len(jobs)
        assert all(e.blocking for e in waited)             # the worker sleeps, not spins
        assert all(e.waited_on == "cuda:1" for e in waited)
    finally:
        dev.close()


# -- finding 2, in process: the Server with the driver backend on the Python double ----------
def test_finding2_jobs_without_inputs_count_their_device_memory():
    """A job without inputs holds device memory too (its buffers are made at its first
    launch): before, it counted nothing against the tenant's quota."""
    pytest.importorskip("cuda.bindings")
    from scheduler_daemon.devices.cuda_driver import CudaDriverDevice
    from scheduler_daemon.wire import protocol as P
    from scheduler_daemon.wire.cuda import Buf, CudaBuffer, CudaLaunch, CudaModel, Scalar
    from tests.fake_cuda import KERNELS, FakeDriver
    from tests.server_harness import Harness
    from tests.test_cuda_driver_fake import SRC
    fake = FakeDriver(KERNELS)
    dev = CudaDriverDevice(0, api=fake, streams=2)
    n = 1000
    model = CudaModel(source=SRC, buffers=[CudaBuffer("x", "float32", [n], "output"),
                                           CudaBuffer("tmp", "float32", [n], "scratch")],
                      launches=[CudaLaunch("scale", [4], [256],
                                           args=[Buf(0), Scalar("float32", 2.0),
                                                 Scalar("int32", n)])])
    per_job = 2 * 4 * n
    h = Harness(device=dev, max_tenant_bytes=2 * per_job)
    try:
        h.hello(b"a", "greedy")
        h.hello(b"b", "other")
        for peer in (b"a", b"b"):
            assert isinstance(h.call(peer, P.RegisterCuda(req_id=1, model="s", cuda=model)),
                              P.Registered)
        replies = []
        for rid in (1, 2, 3):
            replies += h.send(b"a", P.Submit(req_id=rid, model="s"))
        errors = [m for m, _ in replies if isinstance(m, P.Error)]
        assert [e.req_id for e in errors] == [3] and errors[0].code == "LIMIT"
        assert f"{per_job} bytes of device memory" in errors[0].message
        assert h.server.tenants["greedy"].bytes_held == 2 * per_job
        assert not [m for m, _ in h.send(b"b", P.Submit(req_id=1, model="s"))
                    if isinstance(m, P.Error)]
        h.run()
        done = [m for m, _ in replies + h.take(b"a") + h.take(b"b") if isinstance(m, P.Done)]
        assert sorted(m.status for m in done) == ["done"] * 3
        assert all(t.bytes_held == 0 for t in h.server.tenants.values())
        gc.collect()
        dev.collect()
        assert fake.live == {}
    finally:
        h.close()
