"""A raw-CUDA model as it goes on the wire (checked against a GPU in ``cuda/checks.py``).

A model is CUDA C++ source (or PTX), the buffers one job works on (inputs copied in from the
request's tensors in order, outputs copied back, scratch left on the device) and the launches
one job makes, in order: each names a kernel, its grid/block/shared memory and its arguments
(buffers by index, or typed scalars).
"""
from __future__ import annotations

import math
from typing import Annotated, Literal

import msgspec

from scheduler_daemon.wire.tensors import DTYPES

_Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z_$][\w$]*$")]
_Dim = Annotated[int, msgspec.Meta(ge=1, le=2**32 - 1)]
_Dims = Annotated[list[_Dim], msgspec.Meta(min_length=1, max_length=3)]
BufferDtype = Literal["float16", "float32", "float64", "int8", "int16", "int32", "int64",
                      "uint8", "bool"]
ScalarDtype = Literal["int32", "uint32", "int64", "uint64", "float32", "float64"]


class CudaBuffer(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Device memory a job gets: inputs are filled from the request's tensors (in order),
    outputs are zeroed and sent back, scratch is zeroed and stays on the device."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    dtype: BufferDtype
    shape: Annotated[list[Annotated[int, msgspec.Meta(ge=0, le=2**40)]],
                     msgspec.Meta(max_length=8)]
    role: Literal["input", "output", "scratch"]

    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPES[self.dtype]


class Buf(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="buf"):
    """A pointer argument: the device address of buffer ``index`` of the job."""

    index: Annotated[int, msgspec.Meta(ge=0, le=255)]


class Scalar(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="scalar"):
    """A by-value argument of one of CUDA's scalar types."""

    dtype: ScalarDtype
    value: int | float


CudaArg = Buf | Scalar


class CudaLaunch(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One kernel launch of a job: ``grid``/``block`` are [x, y, z] (missing dims are 1)."""

    kernel: _Name
    grid: _Dims
    block: _Dims
    smem: Annotated[int, msgspec.Meta(ge=0, le=16 * 2**20)] = 0  # dynamic shared memory bytes
    args: Annotated[list[CudaArg], msgspec.Meta(max_length=256)] = msgspec.field(
        default_factory=list)
    est_us: Annotated[float, msgspec.Meta(ge=0.0, le=60e6)] = 10.0

    def dims(self) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        return _pad(self.grid), _pad(self.block)


class CudaModel(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """CUDA C++ ``source`` or ``ptx`` (exactly one), NVRTC ``options``, whether to count
    finished blocks (``instrument``, source only), the buffers and the launches of one job."""

    source: Annotated[str, msgspec.Meta(max_length=1 << 20)] = ""
    ptx: Annotated[str, msgspec.Meta(max_length=4 << 20)] = ""
    options: Annotated[list[Annotated[str, msgspec.Meta(max_length=256)]],
                       msgspec.Meta(max_length=32)] = msgspec.field(default_factory=list)
    instrument: bool = False
    buffers: Annotated[list[CudaBuffer], msgspec.Meta(max_length=64)]
    launches: Annotated[list[CudaLaunch], msgspec.Meta(min_length=1, max_length=4096)]

    def inputs(self) -> list[int]:
        return [i for i, b in enumerate(self.buffers) if b.role == "input"]

    def outputs(self) -> list[int]:
        return [i for i, b in enumerate(self.buffers) if b.role == "output"]


def _pad(d) -> tuple[int, int, int]:
    d = list(d) + [1] * (3 - len(d))
    return d[0], d[1], d[2]
