"""What launch shapes a device accepts: CUDA's fixed limits and the per-GPU shared memory.

The fixed limits hold for every GPU since compute capability 3.0 (1024 threads per block; block
dims 1024 x 1024 x 64; grid dims 2^31-1 x 65535 x 65535). Shared memory per block is 48 KiB
without opt-in on all of them, and with opt-in (``cuFuncSetAttribute``) what the GPU's SM has
less the 1 KiB the driver reserves per block on sm_80+. The driver backend reads the real
values from the device; without one the numbers below stand in for the presets.
"""
from __future__ import annotations

from dataclasses import dataclass

from scheduler_daemon.core.gpu_specs import GpuSpec

KiB = 1024
# opt-in shared memory per block of the presets (CUDA programming guide, compute capabilities)
SMEM_OPTIN = {"T4": 64 * KiB, "V100": 96 * KiB, "A100": 163 * KiB, "H100": 227 * KiB}


@dataclass(frozen=True)
class LaunchLimits:
    device: str = "a CUDA GPU"
    max_threads_per_block: int = 1024
    max_block: tuple[int, int, int] = (1024, 1024, 64)
    max_grid: tuple[int, int, int] = (2**31 - 1, 65535, 65535)
    smem_per_block: int = 48 * KiB   # without opt-in
    smem_optin: int = 48 * KiB       # with cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)
    max_param_bytes: int = 4096      # kernel parameter space (4 KiB on every driver)
    max_job_bytes: int = 1 << 40     # device memory one job's buffers may take


def limits_for_spec(spec: GpuSpec | str) -> LaunchLimits:
    """Limits of a preset (``GpuSpec`` or its name); unknown names get the 48 KiB default."""
    name = spec if isinstance(spec, str) else spec.name
    optin = SMEM_OPTIN.get(name.upper(), 48 * KiB)
    return LaunchLimits(device=name, smem_optin=optin)
