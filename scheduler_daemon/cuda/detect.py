"""Which NVIDIA GPUs this machine has, as NVML and the CUDA driver see them.

NVML (``nvidia-ml-py``) gives names without a CUDA context; the driver (``cuInit``,
``cuDeviceGetCount`` and the device attributes) gives what launching needs: compute
capability, SM count and per-SM resources, shared memory per block with and without opt-in.
The two number GPUs differently (NVML in PCI order, blind to ``CUDA_VISIBLE_DEVICES``; CUDA
fastest first, after ``CUDA_VISIBLE_DEVICES``): a CUDA device is found in NVML by its PCI bus
id (``cuda_bus_id``, ``nvml_handle``), never by its index.
Neither raises: a machine without a driver, a GPU or cuda-python reports none, and ``reason``
says why. The scheduler's ``GpuSpec`` of a detected GPU is the nearest preset's throughput
figures with the SM resources the driver reports.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

from scheduler_daemon.core.gpu_specs import GpuSpec, gpu_spec
from scheduler_daemon.cuda.limits import LaunchLimits

log = logging.getLogger("gpusched.device.cuda.detect")


@dataclass(frozen=True)
class CudaGpu:
    ordinal: int
    name: str
    cc: tuple[int, int]
    sms: int
    total_mem: int
    max_threads_per_block: int = 1024
    max_block: tuple[int, int, int] = (1024, 1024, 64)
    max_grid: tuple[int, int, int] = (2**31 - 1, 65535, 65535)
    smem_per_block: int = 48 * 1024
    smem_optin: int = 48 * 1024
    smem_per_sm: int = 0
    threads_per_sm: int = 0
    blocks_per_sm: int = 0
    regs_per_sm: int = 0
    pci_bus_id: str = ""
    memory_pools: bool = False  # cuMemAllocAsync / cuMemFreeAsync
    can_map_host: bool = True

    @property
    def preset(self) -> str:
        return preset_for(self.name, self.cc)

    def limits(self) -> LaunchLimits:
        return LaunchLimits(device=self.name, max_threads_per_block=self.max_threads_per_block,
                            max_block=self.max_block, max_grid=self.max_grid,
                            smem_per_block=self.smem_per_block,
                            smem_optin=max(self.smem_optin, self.smem_per_block),
                            max_job_bytes=max(1, self.total_mem // 2))

    def spec(self) -> GpuSpec:
        """The nearest preset with this GPU's SM resources (the name stays the preset's:
        profiles and admission are keyed by it)."""
        base = gpu_spec(self.preset)
        return dataclasses.replace(
            base, sms=self.sms or base.sms,
            threads_per_sm=self.threads_per_sm or base.threads_per_sm,
            blocks_per_sm=self.blocks_per_sm or base.blocks_per_sm,
            regs_per_sm=self.regs_per_sm or base.regs_per_sm,
            smem_per_sm=self.smem_per_sm or base.smem_per_sm)


@dataclass(frozen=True)
class Detection:
    nvml: list[str] = field(default_factory=list)     # GPU names NVML sees
    cuda: list[CudaGpu] = field(default_factory=list)  # GPUs the CUDA driver sees
    driver_version: int | None = None                   # e.g. 12040 for CUDA 12.4
    reason: str = ""                                    # why ``cuda`` is empty

    def summary(self) -> str:
        if self.cuda:
            return "; ".join(f"GPU {g.ordinal}: {g.name} (cc {g.cc[0]}.{g.cc[1]}, {g.sms} SMs, "
                             f"{g.total_mem / 2**30:.0f} GiB)" for g in self.cuda)
        return f"no CUDA GPU ({self.reason})" + (f"; NVML sees {', '.join(self.nvml)}"
                                                  if self.nvml else "")


def preset_for(gpu_name: str, cc: tuple[int, int] | None = None) -> str:
    """The GpuSpec preset nearest to a GPU: by name, else by compute capability."""
    up = gpu_name.upper()
    for key, preset in (("H100", "H100"), ("H200", "H100"), ("GH200", "H100"), ("H800", "H100"),
                        ("A100", "A100"), ("A800", "A100"), ("V100", "V100"), ("T4", "T4")):
        if key in up:
            return preset
    if cc is not None:
        if cc >= (9, 0):
            return "H100"
        if cc >= (8, 0):
            return "A100"
        if cc >= (7, 5):
            return "T4"
        if cc >= (7, 0):
            return "V100"
    return "A100"


def nvml_gpus() -> list[str]:
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


def cuda_bus_id(ordinal: int, api=None) -> str:
    """The PCI bus id ("0000:41:00.0") of CUDA device ``ordinal`` as the CUDA driver numbers it
    (after ``CUDA_VISIBLE_DEVICES`` and ``CUDA_DEVICE_ORDER``); "" without a driver or such a
    device. NVML numbers GPUs its own way (PCI order, ignoring ``CUDA_VISIBLE_DEVICES``), so a
    CUDA device is found in NVML by this id, never by its index."""
    from scheduler_daemon.cuda.driverapi import driver_module, init
    try:
        chk = init(api or driver_module())
        bus = chk.cuDeviceGetPCIBusId(64, chk.cuDeviceGet(ordinal))
    except Exception:
        return ""
    return (bus.split(b"\0", 1)[0].decode() if isinstance(bus, bytes) else str(bus)).strip()


def nvml_handle(nvml, bus_id: str):
    """The NVML handle of the GPU at PCI ``bus_id`` (``nvml``: the pynvml module, initialised)."""
    return nvml.nvmlDeviceGetHandleByPciBusId(bus_id)


def query(chk, ordinal: int) -> CudaGpu:
    """One device's attributes through an initialised ``driverapi.Checked``."""
    api = chk.api
    dev = chk.cuDeviceGet(ordinal)
    A = api.CUdevice_attribute

    def attr(name: str, default: int = 0) -> int:
        a = getattr(A, name, None)
        if a is None:
            return default
        try:
            return int(chk.cuDeviceGetAttribute(a, dev))
        except Exception:
            return default

    raw = chk.cuDeviceGetName(256, dev)
    name = raw.split(b"\0", 1)[0].decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    try:
        bus = chk.cuDeviceGetPCIBusId(64, dev)
        bus = bus.split(b"\0", 1)[0].decode() if isinstance(bus, bytes) else str(bus)
    except Exception:
        bus = ""
    P = "CU_DEVICE_ATTRIBUTE_"
    return CudaGpu(
        ordinal=ordinal, name=name.strip(),
        cc=(attr(P + "COMPUTE_CAPABILITY_MAJOR"), attr(P + "COMPUTE_CAPABILITY_MINOR")),
        sms=attr(P + "MULTIPROCESSOR_COUNT"), total_mem=int(chk.cuDeviceTotalMem(dev)),
        max_threads_per_block=attr(P + "MAX_THREADS_PER_BLOCK", 1024),
        max_block=(attr(P + "MAX_BLOCK_DIM_X", 1024), attr(P + "MAX_BLOCK_DIM_Y", 1024),
                   attr(P + "MAX_BLOCK_DIM_Z", 64)),
        max_grid=(attr(P + "MAX_GRID_DIM_X", 2**31 - 1), attr(P + "MAX_GRID_DIM_Y", 65535),
                  attr(P + "MAX_GRID_DIM_Z", 65535)),
        smem_per_block=attr(P + "MAX_SHARED_MEMORY_PER_BLOCK", 48 * 1024),
        smem_optin=attr(P + "MAX_SHARED_MEMORY_PER_BLOCK_OPTIN", 0),
        smem_per_sm=attr(P + "MAX_SHARED_MEMORY_PER_MULTIPROCESSOR"),
        threads_per_sm=attr(P + "MAX_THREADS_PER_MULTIPROCESSOR"),
        blocks_per_sm=attr(P + "MAX_BLOCKS_PER_MULTIPROCESSOR"),
        regs_per_sm=attr(P + "MAX_REGISTERS_PER_MULTIPROCESSOR"),
        pci_bus_id=bus, memory_pools=bool(attr(P + "MEMORY_POOLS_SUPPORTED")),
        can_map_host=bool(attr(P + "CAN_MAP_HOST_MEMORY", 1)))


def cuda_gpus(api=None) -> tuple[list[CudaGpu], int | None, str]:
    """(GPUs, driver version, reason when none) through the CUDA driver; never raises."""
    from scheduler_daemon.cuda.driverapi import driver_module, init
    from scheduler_daemon.cuda.errors import CudaError, CudaUnavailable
    try:
        api = api or driver_module()
        chk = init(api)
    except CudaUnavailable as e:
        return [], None, str(e)
    except CudaError as e:  # CUDA_ERROR_NO_DEVICE, CUDA_ERROR_INSUFFICIENT_DRIVER, ...
        return [], None, f"the CUDA driver found no usable GPU: {e}"
    except Exception as e:
        return [], None, f"cuInit failed: {type(e).__name__}: {e}"
    try:
        version = int(chk.cuDriverGetVersion())
        gpus = [query(chk, i) for i in range(int(chk.cuDeviceGetCount()))]
    except Exception as e:
        return [], None, f"querying the CUDA devices failed: {type(e).__name__}: {e}"
    return gpus, version, "" if gpus else "the CUDA driver reports no device"


def detect(api=None) -> Detection:
    gpus, version, reason = cuda_gpus(api)
    det = Detection(nvml=nvml_gpus(), cuda=gpus, driver_version=version, reason=reason)
    log.debug("device: detection: %s", det.summary())
    return det
