"""Which GPU a daemon owns: the one Ray gave its actor (``CUDA_VISIBLE_DEVICES``), identified
through NVML by UUID or by physical index (NVML ignores ``CUDA_VISIBLE_DEVICES``, so the entry is
mapped, never taken as NVML's own numbering). A logical GPU (Ray's ``num_gpus`` on a machine
without one) has the type its node declares and the preset's memory.
"""
from __future__ import annotations

import os

PRESET_MEMORY_GB = {"T4": 16.0, "V100": 16.0, "A100": 40.0, "H100": 80.0}


def preset_of(name: str) -> str | None:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"H100"``; None when no preset matches."""
    up = name.upper()
    for p in ("H100", "A100", "V100", "T4"):
        if p in up:
            return p
    return None


def node_gpu_type(resources: dict, labels: dict, default: str) -> str:
    """A node's GPU type: Ray's ``accelerator_type:X`` resource (detected on real GPUs, or
    given with ``ray start --resources``), else its ``gpu-type`` label, else ``default``."""
    for r in resources:
        if r.startswith("accelerator_type:"):
            t = preset_of(r.split(":", 1)[1]) or r.split(":", 1)[1]
            return t
    return labels.get("gpu-type") or default


def owned_gpu(default_type: str, env=None) -> dict:
    env = os.environ if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES", "")
    first = visible.split(",")[0].strip() if visible else ""
    out = {"visible": visible, "uuid": "", "name": "", "type": default_type,
           "memory_mb": PRESET_MEMORY_GB.get(default_type, 0.0) * 1024, "physical": False}
    if not first:
        return out
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001
        return out   # no driver: a logical GPU
    try:
        if first.startswith(("GPU-", "MIG-")):
            h = pynvml.nvmlDeviceGetHandleByUUID(first)
        else:
            h = pynvml.nvmlDeviceGetHandleByIndex(int(first))
        name = pynvml.nvmlDeviceGetName(h)
        name = name.decode() if isinstance(name, bytes) else name
        uuid = pynvml.nvmlDeviceGetUUID(h)
        uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
        mem = pynvml.nvmlDeviceGetMemoryInfo(h).total / 2**20
        out.update(uuid=uuid, name=name, memory_mb=round(mem, 1), physical=True,
                   type=preset_of(name) or name)
    except Exception:  # noqa: BLE001, S110
        pass
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001, S110
            pass
    return out
