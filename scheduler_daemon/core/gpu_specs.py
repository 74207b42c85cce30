"""Published limits of the GPUs the project models, and SM-resource arithmetic.

Numbers are the vendors' published figures (CUDA occupancy tables and data sheets): SM count,
per-SM threads / resident blocks / 32-bit registers / shared memory, dense FP16 tensor throughput
and DRAM bandwidth.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GpuSpec:
    name: str
    sms: int
    threads_per_sm: int
    blocks_per_sm: int
    regs_per_sm: int
    smem_per_sm: int  # bytes
    fp16_tflops: float  # dense tensor-core throughput
    mem_bw_gbs: float  # DRAM bandwidth, GB/s
    fp32_tflops: float = 0.0  # non-tensor FP32 throughput
    int8_tops: float = 0.0    # dense INT8 throughput
    launch_floor_us: float = 4.5  # smallest forward kernels take ~4-5 us (calibration.md)
    # resident grids per device: 128 for compute capability 7.0-9.0 (CUDA programming guide)
    max_grids: int = 128

    @property
    def capacity(self) -> "Resources":
        return Resources(self.sms * self.threads_per_sm, self.sms * self.blocks_per_sm,
                         self.sms * self.regs_per_sm, self.sms * self.smem_per_sm)


PRESETS: dict[str, GpuSpec] = {
    "T4": GpuSpec("T4", 40, 1024, 16, 65536, 64 * 1024, 65.0, 320.0, 8.1, 130.0),
    "V100": GpuSpec("V100", 80, 2048, 32, 65536, 96 * 1024, 125.0, 900.0, 15.7, 62.0),
    "A100": GpuSpec("A100", 108, 2048, 32, 65536, 164 * 1024, 312.0, 1555.0, 19.5, 624.0),
    "H100": GpuSpec("H100", 132, 2048, 32, 65536, 228 * 1024, 989.0, 3350.0, 67.0, 1979.0),
}


def gpu_spec(name: str) -> GpuSpec:
    try:
        return PRESETS[name.upper()]
    except KeyError:
        raise ValueError(f"unknown GPU spec {name!r}: choose one of {', '.join(PRESETS)}") from None


class Resources(tuple):
    """(threads, blocks, registers, shared memory bytes), summed over SMs."""

    __slots__ = ()

    def __new__(cls, threads: int, blocks: int, regs: int, smem: int):
        return tuple.__new__(cls, (threads, blocks, regs, smem))

    def fits_with(self, used: "Resources", cap: "Resources") -> bool:
        return (used[0] + self[0] <= cap[0] and used[1] + self[1] <= cap[1]
                and used[2] + self[2] <= cap[2] and used[3] + self[3] <= cap[3])

    def plus(self, o: "Resources") -> "Resources":
        return Resources(self[0] + o[0], self[1] + o[1], self[2] + o[2], self[3] + o[3])

    def minus(self, o: "Resources") -> "Resources":
        return Resources(self[0] - o[0], self[1] - o[1], self[2] - o[2], self[3] - o[3])

    def share_of(self, cap: "Resources") -> float:
        """Largest fraction of any capacity dimension this demand takes (1.0 = the whole GPU)."""
        return max(self[0] / cap[0], self[1] / cap[1], self[2] / cap[2], self[3] / cap[3])


ZERO = Resources(0, 0, 0, 0)


def kernel_demand(grid: int, block: int, smem: int, regs: int, cap: Resources) -> Resources:
    """SM resources a kernel holds while resident, clamped to the whole GPU.

    A grid larger than one wave occupies the whole device, so it is counted as exactly the
    capacity in the limiting dimension (it fits only on an idle GPU, as in Paella).
    """
    want = (grid * block, grid, grid * block * regs, grid * smem)
    scale = max(want[i] / cap[i] for i in range(4))
    if scale <= 1.0:
        return Resources(*want)
    return Resources(*(min(cap[i], int(want[i] / scale) + 1) for i in range(4)))
