"""The model zoo as kernel lists for the simulated GPU, and replay of measured V100 traces.

Zoo models (``ZOO_MODELS``) are traced once per batch size by ``tools/build_zoo.py`` into
``profilers/data/zoo/<name>_b<batch>.json`` (batches ``BATCHES``); ``load_profiles`` reads those
and traces on the fly (with a warning) when a file is missing. ``zoo_kernels`` turns profiles
into ``KernelSpec`` s for a GPU preset and precision with the roofline of ``roofline.py``:

    est_us = max(t_c, t_m) + launch_floor_us,  mem_frac = t_m / est_us

``engine="eager"`` (default) keeps PyTorch eager's kernel list; ``engine="fused"`` applies
``kernel_trace.fuse_for_engine`` (TensorRT-style pointwise / attention fusion).

Trace replay (``trace_kernels_v100``) reads the Orion project's measured per-kernel traces
(shared ``data/kernel_traces_v100/*.csv``: ``Name,Profile,Memory_footprint,SM_usage,Duration``):

- ``est_us = Duration / 1000`` (nanoseconds in the file);
- ``SM_usage`` is how many SMs' worth of resources the kernel's grid occupies (its values exceed
  the V100's 80 SMs for big grids: it counts SM-fulls of blocks). Each is replayed as one block
  that fills one SM's register file: ``grid = SM_usage``, ``block = 1024``, ``regs = 64``
  (1024 x 64 = 65,536 registers = one SM), so the simulator's share of the GPU is
  ``SM_usage / sms``, saturating at the whole GPU like any grid larger than one wave;
- ``mem_frac = 0.8`` for ``Profile == 0`` (memory-bound), else ``0.2`` (compute-bound or
  unclassified: their time is mostly not DRAM-bound).
"""
from __future__ import annotations

import csv
import functools
import logging
import os
from pathlib import Path

import msgspec

from profilers.kernel_trace import KernelProfile, fuse_for_engine, trace_kernels
from profilers.roofline import PRECISIONS, kernel_time_fracs
from profilers.zoo_models import ZOO_NAMES, build
from scheduler_daemon.core.gpu_specs import gpu_spec
from scheduler_daemon.wire.kernels import KernelSpec

log = logging.getLogger(__name__)

ZOO_MODELS: tuple[str, ...] = ZOO_NAMES
BATCHES: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
ENGINES = ("eager", "fused")
DATA_DIR = Path(__file__).resolve().parent / "data" / "zoo"
REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_ENV = "GPUSCHED_SHARED"

ORION_TRACES: dict[str, str] = {
    "resnet50-v100": "resnet50_4_fwd",
    "resnet101-v100": "resnet101_4_fwd",
    "mobilenetv2-v100": "mobilenetv2_4_fwd",
    "bert-large-v100": "bert_2_fwd",
    "transformer-xl-v100": "transformer_xl_4_fwd",
}
TRACE_BLOCK, TRACE_REGS = 1024, 64       # one block = one SM's register file
TRACE_MEM_FRAC = {0: 0.8}                # Profile 0 (memory-bound); anything else 0.2
TRACE_MEM_FRAC_OTHER = 0.2

_FIELDS = tuple(KernelProfile.__struct_fields__)


class _ZooFile(msgspec.Struct):
    """On-disk form: one row per kernel, in ``fields`` order (compact JSON)."""

    model: str
    batch: int
    fields: tuple[str, ...]
    kernels: list[tuple]


# --- zoo profiles ------------------------------------------------------------------------
def _check_model(name: str, batch: int) -> None:
    if name not in ZOO_MODELS:
        raise ValueError(f"unknown zoo model {name!r}: choose one of {', '.join(ZOO_MODELS)}")
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")


def data_path(name: str, batch: int) -> Path:
    return DATA_DIR / f"{name}_b{batch}.json"


def trace_profiles(name: str, batch: int) -> list[KernelProfile]:
    """Trace a zoo model at ``batch`` now (on the meta device)."""
    _check_model(name, batch)
    model, inputs = build(name, device="meta")
    return trace_kernels(model, inputs(batch, device="meta"))


def save_profiles(path: Path, name: str, batch: int, profiles: list[KernelProfile]) -> None:
    rows = [msgspec.structs.astuple(p) for p in profiles]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(msgspec.json.encode(_ZooFile(name, batch, _FIELDS, rows)) + b"\n")


def read_profiles(path: Path) -> list[KernelProfile]:
    f = msgspec.json.decode(path.read_bytes(), type=_ZooFile)
    if tuple(f.fields) != _FIELDS:
        raise ValueError(f"{path} has fields {f.fields}, expected {_FIELDS}: regenerate it with "
                         "'python tools/build_zoo.py'")
    return [KernelProfile(*row) for row in f.kernels]


@functools.lru_cache(maxsize=128)
def _profiles(name: str, batch: int) -> tuple[KernelProfile, ...]:
    path = data_path(name, batch)
    if path.exists():
        return tuple(read_profiles(path))
    log.warning("no cached profile %s: tracing %s at batch %d now (run tools/build_zoo.py "
                "to cache it)", path, name, batch)
    return tuple(trace_profiles(name, batch))


def load_profiles(name: str, batch: int) -> list[KernelProfile]:
    """The traced kernels of a zoo model at ``batch`` (cached file, else traced on the fly)."""
    _check_model(name, batch)
    return list(_profiles(name, batch))


def profiles_to_kernels(profiles: list[KernelProfile], gpu: str, precision: str = "fp16",
                        engine: str = "eager") -> list[KernelSpec]:
    """``KernelSpec`` s with ``est_us`` and ``mem_frac`` from the roofline (``op=""``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}: use 'eager' (PyTorch) or 'fused' "
                         "(TensorRT-style)")
    spec = gpu_spec(gpu)
    if engine == "fused":
        profiles = fuse_for_engine(profiles)
    out = []
    for p in profiles:
        us, mem_frac, comp_frac = kernel_time_fracs(p, spec, precision)
        out.append(KernelSpec(name=p.name, est_us=round(us, 3), grid=p.grid, block=p.block,
                              smem=p.smem, regs=p.regs, op="", mem_frac=round(mem_frac, 3),
                              comp_frac=round(comp_frac, 3)))
    return out


def zoo_kernels(name: str, batch: int, gpu: str, precision: str = "fp16", *,
                engine: str = "eager") -> list[KernelSpec]:
    """A zoo model's kernels at ``batch`` on GPU preset ``gpu`` ("T4", "V100", "A100", "H100")."""
    return profiles_to_kernels(load_profiles(name, batch), gpu, precision, engine)



# --- measured V100 traces ----------------------------------------------------------------
def shared_dir() -> Path:
    """``$GPUSCHED_SHARED``, else ``<repo root>/../shared``."""
    env = os.environ.get(SHARED_ENV)
    path = Path(env) if env else REPO_ROOT.parent / "shared"
    if not path.is_dir():
        raise FileNotFoundError(f"shared data directory {path} not found: set {SHARED_ENV} to the "
                                "directory that holds data/kernel_traces_v100/")
    return path


def trace_path(trace_name: str) -> Path:
    stem = ORION_TRACES.get(trace_name, trace_name)
    path = shared_dir() / "data" / "kernel_traces_v100" / f"{stem}.csv"
    if not path.exists():
        raise ValueError(f"no kernel trace {trace_name!r} ({path} is missing): use one of "
                         f"{', '.join(ORION_TRACES)} or a file stem such as 'resnet50_4_fwd'")
    return path


def trace_kernels_v100(trace_name: str) -> list[KernelSpec]:
    """Replay a measured V100 trace (a key of ``ORION_TRACES`` or a file stem) as KernelSpecs."""
    out = []
    with trace_path(trace_name).open(newline="") as fh:
        for row in csv.DictReader(fh):
            profile = int(row["Profile"])
            out.append(KernelSpec(
                name=row["Name"].strip()[:256] or "kernel", est_us=int(row["Duration"]) / 1e3,
                grid=max(1, int(row["SM_usage"])), block=TRACE_BLOCK, regs=TRACE_REGS, op="",
                mem_frac=TRACE_MEM_FRAC.get(profile, TRACE_MEM_FRAC_OTHER)))
    return out
