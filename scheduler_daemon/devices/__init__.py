"""Device backends and the choice of the default one.

``auto`` picks a real GPU through the torch backend when NVML sees one, and the embedded
simulated GPU (``sim``: SMs, hardware queues, bandwidth) otherwise, and says which it chose.
``fluid`` is the simplest stand-in: kernels share the GPU as a fluid (used to measure the
daemon's own overhead with zero-duration kernels).
"""
from __future__ import annotations

import logging

from ..gpu_specs import gpu_spec
from .base import Device
from .fluid import FluidDevice
from .simgpu import SimGpu

log = logging.getLogger("gpusched.device")

BACKENDS = ("auto", "sim", "fluid", "torch")


def visible_gpus() -> list[str]:
    """Names of the NVIDIA GPUs NVML can see (empty without a driver or a GPU)."""
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception:
        return []
    try:
        names = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            n = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))
            names.append(n.decode() if isinstance(n, bytes) else n)
        return names
    except Exception:
        return []
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def preset_for(gpu_name: str) -> str:
    up = gpu_name.upper()
    for key in ("H100", "A100", "V100", "T4"):
        if key in up:
            return key
    return "A100"


def make_device(backend: str = "auto", spec_name: str = "T4", speed: float = 1.0,
                torch_device: str | None = None, hw_queues: int = 8) -> Device:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    gpus = visible_gpus() if backend in ("auto", "torch") else []
    if backend == "auto":
        if gpus:
            backend = "torch"
        else:
            log.info("device: no GPU visible (NVML found none): using the simulated GPU, %s preset",
                     spec_name)
            backend = "sim"
    if backend == "sim":
        return SimGpu(gpu_spec(spec_name), hw_queues=hw_queues, speed=speed)
    if backend == "fluid":
        return FluidDevice(gpu_spec(spec_name), speed=speed)
    try:
        from .torch_device import TorchDevice
    except ImportError as e:
        raise ValueError(f"the torch backend needs torch: pip install 'gpusched[torch]' ({e})") from None
    dev = torch_device or ("cuda" if gpus else "cpu")
    spec = gpu_spec(preset_for(gpus[0])) if gpus else gpu_spec(spec_name)
    log.info("device: torch backend on %s (%s)", dev, gpus[0] if gpus else "CPU worker pool")
    return TorchDevice(spec, dev)


__all__ = ["Device", "FluidDevice", "SimGpu", "make_device", "visible_gpus", "BACKENDS"]
