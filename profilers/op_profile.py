"""Per-kernel profiles (one row per aten op that launches a kernel), from all three sources,
and NVML sampling of a GPU's SM and memory utilisation while a profile runs.

Rows (``OpTiming``) are in launch order with the op's FLOPs and bytes (``kernel_trace.py``'s
rules) and its time:

- ``roofline:GPU`` - the kernel's roofline estimate (``est_us`` of ``zoo.zoo_kernels``);
- ``sim:GPU`` - the kernel's duration on the simulated GPU, the model alone;
- ``torch:DEVICE`` - measured for real with ``torch.profiler``: the forward pass runs inside a
  ``TorchDispatchMode`` that wraps every aten op that launches a kernel (the same ops, by the
  same rules, as the meta-device trace the zoo is built from) in a ``record_function`` range
  ``gpusched.op/<i>/<name>``. On the CPU an op's time is that range's CPU time; on CUDA it is
  the device time of the kernels launched inside it (the profiler's CUDA activity, CUPTI). The
  FLOPs and bytes are counted on the real tensors. Each row is the median over ``runs`` profiled
  passes after a warm-up. The Python mode and the profiler cost a few microseconds per op, so
  the whole-model latency is timed separately, without them (``profile.py``).

``NvmlSampler`` polls ``nvmlDeviceGetUtilizationRates`` on a thread (every ``interval_s``)
while the timed runs of a ``torch:cuda`` profile go on; the means become the profile's
``compute_demand`` (SM busy %) and ``memory_demand`` (memory-controller busy %), with the
number of samples in ``util_samples``. Without pynvml or a GPU it records nothing and says why
(``error``); nothing fails.
"""
from __future__ import annotations

import contextlib
import statistics
import threading
import time
from typing import Self

import msgspec

RANGE_PREFIX = "gpusched.op/"


class OpTiming(msgspec.Struct, frozen=True):
    index: int          # launch order within one forward pass
    name: str           # aten op, e.g. "convolution", "addmm", "relu_"
    kind: str           # kernel_trace kinds: conv | gemm | attention | ... | gather
    time_us: float      # its time in one forward pass
    flops: float
    bytes: float


# --- roofline and simulated GPU ----------------------------------------------------------
def roofline_ops(model: str, batch: int, gpu: str) -> list[OpTiming]:
    from profilers import zoo
    traced, kernels = zoo.load_profiles(model, batch), zoo.zoo_kernels(model, batch, gpu)
    return [OpTiming(i, p.name, p.kind, k.est_us, float(p.flops), float(p.bytes))
            for i, (p, k) in enumerate(zip(traced, kernels))]


def sim_ops(model: str, batch: int, durations_s: list[float]) -> list[OpTiming]:
    """Rows from the simulated GPU's per-kernel durations (launch order, one job alone)."""
    from profilers import zoo
    traced = zoo.load_profiles(model, batch)
    return [OpTiming(i, p.name, p.kind, d * 1e6, float(p.flops), float(p.bytes))
            for i, (p, d) in enumerate(zip(traced, durations_s))]


# --- real measurement with torch.profiler ------------------------------------------------
def _op_mode():
    from torch.profiler import record_function
    from torch.utils._python_dispatch import TorchDispatchMode

    from profilers.kernel_trace import profile_op

    class _Labeller(TorchDispatchMode):
        """Runs each aten op inside a profiler range named after it; records its counts."""

        def __init__(self):
            super().__init__()
            self.ops: list[tuple[str, str, float, float]] = []  # name, kind, flops, bytes

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = func.overloadpacket.__name__
            if func.is_view:
                return func(*args, **kwargs)
            with record_function(f"{RANGE_PREFIX}{len(self.ops)}/{name}"):
                out = func(*args, **kwargs)
            p = profile_op(func, args, kwargs, out)
            if p is None:  # allocates or makes a view: no kernel, no row (its range is ignored)
                self.ops.append(("", "", 0.0, 0.0))
            else:
                self.ops.append((p.name, p.kind, float(p.flops), float(p.bytes)))
            return out
    return _Labeller()


def _range_times_us(prof, cuda: bool) -> dict[int, float]:
    """index -> time (us) of each ``gpusched.op/<i>/...`` range in one profiled pass.

    Only the CPU-side event of a range counts: on CUDA, Kineto also reports each range as a
    device-side ``gpu_user_annotation`` event of the same name (pytorch#144613), and adding both
    doubled every op's time. The CPU-side event's device time is that of the kernels launched
    inside the range."""
    out = {}
    for ev in prof.events():
        if not ev.name.startswith(RANGE_PREFIX) or not _cpu_side(ev):
            continue
        i = int(ev.name[len(RANGE_PREFIX):].split("/", 1)[0])
        if cuda:
            t = getattr(ev, "device_time_total", None)
            if t is None:
                t = ev.cuda_time_total
        else:
            t = ev.cpu_time_total
        out[i] = out.get(i, 0.0) + float(t)
    return out


def _cpu_side(ev) -> bool:
    """Whether a profiler event is the CPU-side record of a range (not Kineto's device-side
    ``gpu_user_annotation`` copy of it)."""
    dt = getattr(ev, "device_type", None)
    if dt is None:
        return True
    return getattr(dt, "name", str(dt)).upper().endswith("CPU")


def torch_ops(module, inputs: tuple, device, runs: int = 3) -> list[OpTiming]:
    """Per-op times of ``module(*inputs)`` measured with torch.profiler (see the module doc).

    ``module`` and ``inputs`` must already be on ``device`` and warmed up."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    cuda = torch.device(device).type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    per_run: list[dict[int, float]] = []
    ops = None
    with torch.no_grad():
        for _ in range(runs):
            mode = _op_mode()
            with tprofile(activities=activities) as prof:
                with mode:
                    module(*inputs)
                if cuda:
                    torch.cuda.synchronize()
            per_run.append(_range_times_us(prof, cuda))
            ops = mode.ops
    assert ops is not None
    rows, k = [], 0
    for i, (name, kind, flops, nbytes) in enumerate(ops):
        if not name:
            continue
        t = statistics.median(r.get(i, 0.0) for r in per_run)
        rows.append(OpTiming(k, name, kind, t, flops, nbytes))
        k += 1
    return rows


def summarise(ops: list[OpTiming]) -> dict[str, dict]:
    """Per aten op name: calls, total time (us), FLOPs, bytes (largest total time first)."""
    acc: dict[str, dict] = {}
    for o in ops:
        a = acc.setdefault(o.name, {"calls": 0, "time_us": 0.0, "flops": 0.0, "bytes": 0.0})
        a["calls"] += 1
        a["time_us"] += o.time_us
        a["flops"] += o.flops
        a["bytes"] += o.bytes
    return dict(sorted(acc.items(), key=lambda kv: -kv[1]["time_us"]))


# --- NVML sampling -----------------------------------------------------------------------
class NvmlSampler:
    """Samples a GPU's SM and memory-controller utilisation (%) on a thread while in use.

    ``with NvmlSampler(0) as s: ...`` then ``s.samples`` ([(t, sm %, mem %)]), ``s.sm_mean``,
    ``s.mem_mean`` (None without samples) and ``s.error`` (why nothing was sampled).

    ``index`` is the CUDA device (``cuda:N``, numbered as CUDA numbers it, after
    ``CUDA_VISIBLE_DEVICES``); NVML numbers GPUs in PCI order and ignores
    ``CUDA_VISIBLE_DEVICES``, so the GPU is found in NVML by its PCI bus id (``bus_id``, or
    asked of the CUDA driver, else of torch), never by that index. Only where no bus id can be
    had (no CUDA driver: nothing to disagree with) is NVML asked by index."""

    def __init__(self, index: int = 0, interval_s: float = 0.02, nvml=None,
                 bus_id: str | None = None):
        self.index, self.interval_s = index, interval_s
        self.bus_id = bus_id
        self.samples: list[tuple[float, float, float]] = []
        self.error: str | None = None
        self._nvml, self._handle, self._thread = nvml, None, None
        self._stop = threading.Event()
        self._inited = False
        self.available = False  # NVML opened and the GPU found

    def _open(self) -> None:
        try:
            if self._nvml is None:
                import pynvml
                self._nvml = pynvml
            self._nvml.nvmlInit()
            self._inited = True
            bus = self.bus_id if self.bus_id is not None else cuda_bus_id_of(self.index)
            by_bus = getattr(self._nvml, "nvmlDeviceGetHandleByPciBusId", None)
            if bus and by_bus is not None:
                self._handle = by_bus(bus)
            else:
                self._handle = self._nvml.nvmlDeviceGetHandleByIndex(self.index)
            self.available = True
        except Exception as e:  # noqa: BLE001 - no pynvml, driver or GPU: profile without it
            self.error = f"NVML unavailable: {type(e).__name__}: {e}"
            self._handle = None

    def _sample(self) -> None:
        u = self._nvml.nvmlDeviceGetUtilizationRates(self._handle)
        self.samples.append((time.perf_counter(), float(u.gpu), float(u.memory)))

    def _loop(self) -> None:
        while True:
            try:
                self._sample()
            except Exception as e:  # noqa: BLE001 - any NVML failure ends sampling, said in .error
                self.error = f"NVML sampling stopped: {type(e).__name__}: {e}"
                return
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self) -> Self:
        self._open()
        if self.available:
            self._thread = threading.Thread(target=self._loop, name="nvml-sampler", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        self._handle = None
        if self._inited:   # every nvmlInit that succeeded is matched, found GPU or not
            self._inited = False
            with contextlib.suppress(Exception):  # a failed shutdown leaves nothing to undo
                self._nvml.nvmlShutdown()

    @property
    def sm_mean(self) -> float | None:
        return statistics.mean(s[1] for s in self.samples) if self.samples else None

    @property
    def mem_mean(self) -> float | None:
        return statistics.mean(s[2] for s in self.samples) if self.samples else None


def cuda_bus_id_of(index: int) -> str:
    """PCI bus id of CUDA device ``index``: from the CUDA driver (cuda-python), else from torch's
    device properties; "" when neither knows (no GPU)."""
    from scheduler_daemon.cuda.detect import cuda_bus_id
    bus = cuda_bus_id(index)
    if bus:
        return bus
    try:
        import torch
        if not torch.cuda.is_available():
            return ""
        p = torch.cuda.get_device_properties(index)
        return (f"{int(p.pci_domain_id):04x}:{int(p.pci_bus_id):02x}:"
                f"{int(p.pci_device_id):02x}.0")
    except Exception:  # noqa: BLE001 - no torch, no CUDA, an old torch: "" (no GPU known)
        return ""
