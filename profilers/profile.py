"""Per-model profiles: latency, FLOPs, bytes, compute and memory-bandwidth demand, footprint.

Three sources behind one function, ``profile(model, batch, device)``, with ``device`` written
``SOURCE:TARGET``:

- ``roofline:GPU`` - analytic: the zoo's traced kernels through the roofline of a GPU preset.
  ``latency = sum_k t_k``; ``compute_demand = sum_k comp_frac_k t_k / latency`` (the fraction
  of the GPU's arithmetic the model uses while it runs alone), ``memory_demand`` likewise with
  ``mem_frac``; ``occupancy = sum_k s_k t_k / latency`` with ``s_k`` the share of the SMs'
  thread slots kernel ``k`` holds.
- ``sim:GPU`` - measured on the simulated GPU (virtual time): one job alone; the demands are the
  time averages of the simulator's arithmetic and bandwidth demand while it runs.
- ``torch:DEVICE`` - measured for real: the zoo model's forward pass in torch on ``cpu`` or
  ``cuda`` (median of timed runs; CUDA events on a GPU). On the CPU the demands need hardware
  counters and are left empty (``None``); on a GPU an NVML sampler thread runs beside the timed
  runs (at least ``NVML_MIN_S`` of them) and its mean SM and memory-controller utilisation are
  the demands (``util_samples`` says how many samples; 0 and ``None`` demands where NVML is
  unavailable).

Every profile carries its per-kernel rows (``ops``: one per aten op that launches a kernel, in
launch order, with FLOPs, bytes and time): the roofline's estimates, the simulated GPU's
kernel durations, or torch.profiler's measurement (``op_profile.py``). The store keeps them in
their own table.

``footprint_mb``: weights (FP16 on a GPU preset, the tensors' own dtype in torch) plus the
largest activation a kernel writes.
"""
from __future__ import annotations

import functools
import statistics
import time

import msgspec

from profilers.op_profile import NvmlSampler, OpTiming, roofline_ops, sim_ops, torch_ops

PROFILE_VERSION = 2
NVML_MIN_S = 0.5   # timed runs go on at least this long while NVML samples (it averages ~1/6 s)
SOURCES = ("roofline", "sim", "torch")


class ModelProfile(msgspec.Struct, frozen=True):
    model: str
    batch: int
    device: str            # SOURCE:TARGET, e.g. "sim:T4"
    latency_ms: float
    kernels: int
    flops: float
    bytes: float
    compute_demand: float | None
    memory_demand: float | None
    occupancy: float | None
    footprint_mb: float
    version: int = PROFILE_VERSION
    ops: tuple[OpTiming, ...] = ()   # per-kernel rows (op_profile.py)
    util_samples: int = 0            # NVML samples behind compute/memory demand (torch:cuda)


def parse_device(device: str) -> tuple[str, str]:
    source, _, target = device.partition(":")
    if source not in SOURCES or not target:
        raise ValueError(f"bad device {device!r}: use roofline:GPU, sim:GPU (GPU one of T4, V100, "
                         "A100, H100) or torch:cpu / torch:cuda")
    return source, target


@functools.cache
def _weights_mb(model: str, bytes_per_param: int | None = 2) -> float:
    # cached: building the module on meta tensors is ~0.1 s, and placement asks per batch size
    from profilers.zoo_models import build
    module, _ = build(model, device="meta")
    return sum(p.numel() * (bytes_per_param or p.element_size()) for p in module.parameters()) / 2**20


def profile(model: str, batch: int, device: str, share: float | None = None) -> ModelProfile:
    """``share``: on ``sim:GPU`` only, the model confined to that share of the SMs (an MPS
    partition, simgpu R8): what GSLICE's tuner and gpulet's profiler measure for a partition."""
    source, target = parse_device(device)
    if share is not None and source != "sim":
        raise ValueError(f"a share of the SMs is simulated only (sim:GPU), not {device!r}")
    from profilers import zoo
    if model not in zoo.ZOO_MODELS:
        raise ValueError(f"unknown model {model!r}: zoo models are {', '.join(zoo.ZOO_MODELS)}")
    if not 1 <= batch <= 1024:
        raise ValueError(f"batch {batch} out of range 1..1024")
    profiles = zoo.load_profiles(model, batch)
    flops = float(sum(p.flops for p in profiles))
    nbytes = float(sum(p.bytes for p in profiles))
    act_mb = max(p.bytes_written for p in profiles) / 2**20
    if source == "torch":
        return _torch_profile(model, batch, target, flops, nbytes, len(profiles), act_mb)
    from scheduler_daemon.core.gpu_specs import gpu_spec
    spec = gpu_spec(target)
    kernels = zoo.zoo_kernels(model, batch, spec.name)
    footprint = _weights_mb(model) + act_mb
    if source == "roofline":
        from scheduler_daemon.core.gpu_specs import kernel_demand
        cap = spec.capacity
        total = sum(k.est_us for k in kernels)
        occ = sum(k.est_us * kernel_demand(k.grid, k.block, k.smem, k.regs, cap).share_of(cap)
                  for k in kernels) / total
        return ModelProfile(model, batch, device, total / 1e3, len(kernels), flops, nbytes,
                            sum(k.comp_frac * k.est_us for k in kernels) / total,
                            sum(k.mem_frac * k.est_us for k in kernels) / total,
                            min(1.0, occ), footprint,
                            ops=tuple(roofline_ops(model, batch, spec.name)))
    return _sim_profile(model, batch, device, spec, kernels, flops, nbytes, footprint, share)


def _sim_profile(model, batch, device, spec, kernels, flops, nbytes, footprint,
                 share: float | None = None) -> ModelProfile:
    from scheduler_daemon.core.jobs import Job
    from scheduler_daemon.core.policies import make_policy
    from scheduler_daemon.core.scheduler import SchedulerCore
    from scheduler_daemon.devices.simgpu import SimGpu
    from scheduler_daemon.simulation import VirtualRun

    core = SchedulerCore(make_policy("fifo"), spec.capacity)
    dev = SimGpu(spec, partitions={"p": share} if share is not None else None)
    run = VirtualRun(core, dev)
    durations: list[float] = []
    complete = dev.on_complete

    def on_kernel(job, now, dur):  # one job alone: its kernels finish in launch order
        durations.append(dur)
        complete(job, now, dur)
    dev.on_complete = on_kernel
    run.submit_at(Job(0, "p", core.make_model(model, model, kernels), 0.0, 0.0))
    job = run.run()[0]
    lat = job.total_s
    return ModelProfile(model, batch, device, lat * 1e3, len(kernels), flops, nbytes,
                        dev.comp_s / lat, dev.mem_s / lat, dev.busy_s / lat, footprint,
                        ops=tuple(sim_ops(model, batch, durations)))


def _torch_profile(model, batch, target, flops, nbytes, n_kernels, act_mb) -> ModelProfile:
    import torch

    from profilers.zoo_models import build
    if target.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("torch:cuda needs a GPU; this machine has none: use torch:cpu, sim:GPU "
                         "or roofline:GPU")
    dev = torch.device(target)
    module, inputs = build(model, device=dev)
    x = inputs(batch)
    with torch.no_grad():
        module(*x)  # warm up
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            times, comp, mem, n_util = _timed_with_nvml(
                lambda: _cuda_time_ms(torch, module, x),
                NvmlSampler(dev.index if dev.index is not None else torch.cuda.current_device()))
        else:
            times = _timed_runs(lambda: _cpu_time_ms(module, x), 0.0)
            comp = mem = None
            n_util = 0
    ops = torch_ops(module, x, dev)
    weights = sum(p.numel() * p.element_size() for p in module.parameters()) / 2**20
    return ModelProfile(model, batch, f"torch:{target}", statistics.median(times), len(ops),
                        flops, nbytes, comp, mem, None, weights + act_mb, ops=tuple(ops),
                        util_samples=n_util)


def _timed_with_nvml(run_once, sampler) -> tuple[list[float], float | None,
                                                   float | None, int]:
    """Timed runs while ``sampler`` (an ``NvmlSampler``) samples the GPU: the timings (ms), the
    mean SM and memory utilisation as fractions (``None`` without samples), the sample count."""
    with sampler:
        times = _timed_runs(run_once, NVML_MIN_S if sampler.available else 0.0)
    if not sampler.samples:
        return times, None, None, 0
    return times, sampler.sm_mean / 100, sampler.mem_mean / 100, len(sampler.samples)


def _timed_runs(run_once, min_s: float, runs: int = 5, max_runs: int = 1000) -> list[float]:
    """At least ``runs`` timings (ms), and more until ``min_s`` seconds have passed."""
    times, start = [], time.perf_counter()
    while len(times) < runs or (time.perf_counter() - start < min_s and len(times) < max_runs):
        times.append(run_once())
    return times


def _cpu_time_ms(module, x) -> float:
    t = time.perf_counter()
    module(*x)
    return (time.perf_counter() - t) * 1e3


def _cuda_time_ms(torch, module, x) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    module(*x)
    end.record()
    end.synchronize()
    return start.elapsed_time(end)
