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


class Resources:
    """(threads, blocks, registers, shared memory bytes), summed over SMs: a small immutable
    value that unpacks, indexes and compares like the 4-tuple it stands for."""

    __slots__ = ("threads", "blocks", "regs", "smem")

    def __init__(self, threads: int, blocks: int, regs: int, smem: int):
        self.threads = threads
        self.blocks = blocks
        self.regs = regs
        self.smem = smem

    def _tuple(self) -> tuple:
        return (self.threads, self.blocks, self.regs, self.smem)

    def __iter__(self):
        return iter(self._tuple())

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i):
        return self._tuple()[i]

    def __eq__(self, other) -> bool:
        if isinstance(other, (Resources, tuple)):
            return self._tuple() == tuple(other)
        return NotImplemented

    def __ne__(self, other) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    def __hash__(self) -> int:
        return hash(self._tuple())

    def __repr__(self) -> str:
        return f"Resources{self._tuple()!r}"

    def __reduce__(self):
        return (Resources, self._tuple())

    def share_of(self, cap: "Resources") -> float:
        """Largest fraction of any capacity dimension this demand takes (1.0 = the whole GPU)."""
        return max(self.threads / cap.threads, self.blocks / cap.blocks, self.regs / cap.regs,
                   self.smem / cap.smem)


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
