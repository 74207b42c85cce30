"""A strict stand-in for ``pynvml`` (nvidia-ml-py), Python-level: NVML as the daemon sees it.

A C libnvidia-ml stand-in would add nothing the daemon can observe: it reaches NVML only
through this module's functions. So this module replaces ``pynvml`` itself, either on
``sys.path`` ahead of the real one (the stand-in driver's subprocess puts tests/stubs/nvml
first) or in ``sys.modules`` (in-process tests).

It numbers GPUs as NVML does, which is not how CUDA does:
- the GPUs are the stand-in driver's (``GPUSCHED_STUB_DEVICES``, the same default list as
  tests/stubs/cuda_stub.c), enumerated in PCI bus order;
- ``CUDA_VISIBLE_DEVICES`` and ``CUDA_DEVICE_ORDER`` are ignored (NVML always sees every GPU);
- bus ids come back in NVML's 8-digit-domain form (``00000000:41:00.0``) and lookups accept
  that and CUDA's 4-digit form (``0000:41:00.0``);
- each GPU's utilisation is its own (the bus number read as decimal: bus 41 is 41 %, 81 is
  81 %), so sampling the wrong GPU shows.

Strict: every call but ``nvmlInit`` raises ``NVMLError_Uninitialized`` before ``nvmlInit`` (or
after the matching ``nvmlShutdown``); a handle must be one this module made (an index or a
string is ``NVMLError_InvalidArgument``); unknown bus ids and UUIDs are ``NVMLError_NotFound``.
``_stub_state()`` tells a test how many ``nvmlInit`` are not yet matched by a shutdown.
"""
from __future__ import annotations

import os
import threading
from types import SimpleNamespace

DEFAULT_DEVICES = (
    "NVIDIA A100-SXM4-80GB|8.0|108|81920|0000:81:00.0|GPU-a1000000-0000-4000-8000-000000000081;"
    "NVIDIA H100 80GB HBM3|9.0|132|81920|0000:41:00.0|GPU-91000000-0000-4000-8000-000000000041")

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_FOUND = 6


class NVMLError(Exception):
    def __init__(self, value: int, msg: str = ""):
        super().__init__(value, msg)
        self.value = value
        self.msg = msg

    def __str__(self) -> str:
        return self.msg or f"NVML error {self.value}"


class NVMLError_Uninitialized(NVMLError):  # noqa: N801 (pynvml's names)
    def __init__(self, msg="Uninitialized"):
        super().__init__(NVML_ERROR_UNINITIALIZED, msg)


class NVMLError_InvalidArgument(NVMLError):  # noqa: N801
    def __init__(self, msg="Invalid Argument"):
        super().__init__(NVML_ERROR_INVALID_ARGUMENT, msg)


class NVMLError_NotFound(NVMLError):  # noqa: N801
    def __init__(self, msg="Not Found"):
        super().__init__(NVML_ERROR_NOT_FOUND, msg)


class _Handle:
    __slots__ = ("gpu",)

    def __init__(self, gpu):
        self.gpu = gpu

    def __repr__(self) -> str:
        return f"<stub nvmlDevice {self.gpu.bus}>"


_lock = threading.Lock()
_inits = 0
_gpus: list = []
calls: list[str] = []   # every call made, in order (tests read it)


def _norm_bus(bus: str) -> str:
    """'0000:41:00.0' / '00000000:41:00.0' / '41:00.0' -> (domain, bus, device, function)."""
    parts = bus.strip().lower().replace(".", ":").split(":")
    try:
        nums = [int(p, 16) for p in parts]
    except ValueError:
        raise NVMLError_InvalidArgument(f"bad PCI bus id {bus!r}") from None
    if len(nums) == 3:
        nums = [0, *nums]
    if len(nums) != 4:
        raise NVMLError_InvalidArgument(f"bad PCI bus id {bus!r}")
    return "{:08x}:{:02x}:{:02x}.{:x}".format(*nums)


def _load() -> list:
    spec = os.environ.get("GPUSCHED_STUB_DEVICES") or DEFAULT_DEVICES
    gpus = []
    for item in spec.split(";"):
        f = item.split("|")
        if len(f) < 6:
            continue
        name, cc, sms, mem, bus, uuid = f[:6]
        gpus.append(SimpleNamespace(name=name, bus=_norm_bus(bus), uuid=uuid,
                                    mem=int(mem) << 20, util=int(_norm_bus(bus).split(":")[1])))
    return sorted(gpus, key=lambda g: g.bus)   # NVML: PCI order, whatever CUDA says


def _need() -> None:
    if _inits <= 0:
        raise NVMLError_Uninitialized()


def _gpu(handle):
    _need()
    if not isinstance(handle, _Handle):
        raise NVMLError_InvalidArgument(f"not an NVML device handle: {handle!r}")
    return handle.gpu


def _call(name: str) -> None:
    calls.append(name)


def nvmlInit() -> None:  # noqa: N802 (pynvml's names)
    global _inits, _gpus
    _call("nvmlInit")
    with _lock:
        if _inits == 0:
            _gpus = _load()
        _inits += 1


nvmlInitWithFlags = lambda flags=0: nvmlInit()  # noqa: E731


def nvmlShutdown() -> None:  # noqa: N802
    global _inits
    _call("nvmlShutdown")
    with _lock:
        _need()
        _inits -= 1


def nvmlDeviceGetCount() -> int:  # noqa: N802
    _call("nvmlDeviceGetCount")
    _need()
    return len(_gpus)


def nvmlDeviceGetHandleByIndex(index: int) -> _Handle:  # noqa: N802
    _call("nvmlDeviceGetHandleByIndex")
    _need()
    if not isinstance(index, int) or not 0 <= index < len(_gpus):
        raise NVMLError_InvalidArgument(f"no NVML GPU {index!r}")
    return _Handle(_gpus[index])


def nvmlDeviceGetHandleByPciBusId(bus) -> _Handle:  # noqa: N802
    _call("nvmlDeviceGetHandleByPciBusId")
    _need()
    want = _norm_bus(bus.decode() if isinstance(bus, bytes) else bus)
    for g in _gpus:
        if g.bus == want:
            return _Handle(g)
    raise NVMLError_NotFound(f"no GPU at {bus}")


def nvmlDeviceGetHandleByUUID(uuid) -> _Handle:  # noqa: N802
    _call("nvmlDeviceGetHandleByUUID")
    _need()
    want = (uuid.decode() if isinstance(uuid, bytes) else uuid).lower()
    for g in _gpus:
        if g.uuid.lower() == want:
            return _Handle(g)
    raise NVMLError_NotFound(f"no GPU {uuid}")


def nvmlDeviceGetName(handle) -> str:  # noqa: N802
    _call("nvmlDeviceGetName")
    return _gpu(handle).name


def nvmlDeviceGetUUID(handle) -> str:  # noqa: N802
    _call("nvmlDeviceGetUUID")
    return _gpu(handle).uuid


def nvmlDeviceGetPciInfo(handle):  # noqa: N802
    _call("nvmlDeviceGetPciInfo")
    g = _gpu(handle)
    d, b, rest = g.bus.split(":")
    return SimpleNamespace(busId=g.bus, busIdLegacy=f"{int(d, 16):04x}:{b}:{rest}",
                           domain=int(d, 16), bus=int(b, 16), device=int(rest.split(".")[0], 16))


def nvmlDeviceGetUtilizationRates(handle):  # noqa: N802
    _call("nvmlDeviceGetUtilizationRates")
    g = _gpu(handle)
    return SimpleNamespace(gpu=g.util, memory=g.util // 2)


def nvmlDeviceGetMemoryInfo(handle):  # noqa: N802
    _call("nvmlDeviceGetMemoryInfo")
    g = _gpu(handle)
    return SimpleNamespace(total=g.mem, free=g.mem, used=0)


def _stub_state() -> dict:
    """For tests: how many nvmlInit are unmatched, and the GPUs in NVML's order."""
    return {"inits": _inits, "gpus": [(g.name, g.bus) for g in _gpus]}


def _stub_reset() -> None:
    global _inits
    _inits = 0
    calls.clear()
