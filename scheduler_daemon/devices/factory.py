"""The choice of a device backend (``make_device``), and the default one.

``auto`` picks a real GPU through the torch backend when NVML sees one, and the embedded
simulated GPU (``sim``: SMs, hardware queues, bandwidth) otherwise, and says which it chose.
The scheduler's spec of a torch device on ``cuda:N`` is that CUDA device's (named by the CUDA
driver, so ``CUDA_VISIBLE_DEVICES`` is honoured), not NVML's GPU N.
``cuda`` runs raw CUDA models (source or PTX) through the CUDA driver API (cuda-python) on the
GPU the driver reports (ordinal from ``cuda_device``, or ``torch_device`` such as ``cuda:1``).
``fluid`` is the simplest stand-in: kernels share the GPU as a fluid (used to measure the
daemon's own overhead with zero-duration kernels).
"""
from __future__ import annotations

import logging
import re

from scheduler_daemon.core.gpu_specs import gpu_spec
from scheduler_daemon.cuda.detect import nvml_gpus, preset_for
from scheduler_daemon.devices.base import Device
from scheduler_daemon.devices.fluid import FluidDevice
from scheduler_daemon.devices.simgpu import SimGpu

log = logging.getLogger("gpusched.device")

BACKENDS = ("auto", "sim", "fluid", "torch", "cuda")


def visible_gpus() -> list[str]:
    """Names of the NVIDIA GPUs NVML can see (empty without a driver or a GPU)."""
    return nvml_gpus()


def make_device(backend: str = "auto", spec_name: str = "T4", speed: float = 1.0,
                torch_device: str | None = None, hw_queues: int = 32,
                cuda_device: int | None = None) -> Device:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "cuda":
        return _cuda_device(_cuda_ordinal(cuda_device, torch_device))
    gpus = visible_gpus() if backend in ("auto", "torch") else []
    if backend == "auto":
        if gpus:
            backend = "torch"
        else:
            log.info("device: auto: no GPU visible (NVML found none): using the simulated GPU "
                     "(sim backend, %s preset)", gpu_spec(spec_name).name)
            backend = "sim"
    if backend == "sim":
        return SimGpu(gpu_spec(spec_name), hw_queues=hw_queues, speed=speed)
    if backend == "fluid":
        return FluidDevice(gpu_spec(spec_name), speed=speed)
    try:
        from scheduler_daemon.devices.torch_device import TorchDevice
    except ImportError as e:
        raise ValueError(f"the torch backend needs torch: pip install 'gpusched[torch]' ({e})") from None
    dev = torch_device or ("cuda" if gpus and _torch_has_cuda() else "cpu")
    if gpus and dev == "cpu" and not torch_device:
        log.warning("device: NVML sees %s but this torch build has no CUDA: the torch backend "
                    "runs on the CPU (install a CUDA build of torch for the GPU, or use "
                    "--backend cuda for raw CUDA kernels)", gpus[0])
        gpus = []
    name = cuda_device_name(_cuda_ordinal(None, dev)) if dev.startswith("cuda") else ""
    spec = gpu_spec(preset_for(name)) if name else gpu_spec(spec_name)
    log.info("device: torch backend on %s (%s), scheduler spec %s", dev,
             name or ("a GPU" if dev.startswith("cuda") else "CPU worker pool"), spec.name)
    return TorchDevice(spec, dev)


def cuda_device_name(ordinal: int) -> str:
    """The name of CUDA device ``ordinal`` as CUDA numbers it (``cuda:N`` after
    ``CUDA_VISIBLE_DEVICES``): from the CUDA driver, else from torch; "" if neither knows.
    Never NVML's GPU ``ordinal``: NVML numbers GPUs in PCI order and ignores
    ``CUDA_VISIBLE_DEVICES``."""
    from scheduler_daemon.cuda.detect import cuda_gpus
    gpus, _, _ = cuda_gpus()
    if 0 <= ordinal < len(gpus):
        return gpus[ordinal].name
    try:
        import torch
        return str(torch.cuda.get_device_name(ordinal))
    except Exception:
        return ""


def _torch_has_cuda() -> bool:
    import torch
    return bool(torch.backends.cuda.is_built()) and torch.cuda.is_available()


def _cuda_ordinal(cuda_device: int | None, torch_device: str | None) -> int:
    if cuda_device is not None:
        return int(cuda_device)
    m = re.fullmatch(r"cuda(?::(\d+))?", torch_device or "")
    return int(m.group(1) or 0) if m else 0


def _cuda_device(ordinal: int) -> Device:
    from scheduler_daemon.cuda.detect import cuda_gpus
    from scheduler_daemon.cuda.errors import CudaError, CudaUnavailable
    gpus, version, reason = cuda_gpus()
    if not gpus:
        raise ValueError(f"no CUDA GPU visible ({reason}): the cuda backend needs an NVIDIA GPU "
                         "and its driver; use --backend sim or torch")
    if not 0 <= ordinal < len(gpus):
        raise ValueError(f"CUDA device {ordinal} does not exist: the driver sees {len(gpus)} "
                         f"({', '.join(f'{g.ordinal}: {g.name}' for g in gpus)})")
    gpu = gpus[ordinal]
    try:
        from scheduler_daemon.devices.cuda_driver import CudaDriverDevice
        dev = CudaDriverDevice(ordinal, gpu)
    except (CudaUnavailable, CudaError) as e:
        raise ValueError(f"the cuda backend could not open GPU {ordinal} ({gpu.name}): {e}") from None
    log.info("device: cuda backend on GPU %d: %s (cc %d.%d, %d SMs, driver %s), scheduler spec "
             "%s", ordinal, gpu.name, gpu.cc[0], gpu.cc[1], gpu.sms,
             f"{version // 1000}.{version % 1000 // 10}" if version else "?", dev.spec.name)
    return dev
