"""Tensors on the wire: a small typed header (dtype, shape) plus one raw zero-copy frame.

Shared by the daemon and the client library; nothing here is pickled. The conversions
from and to numpy/torch live on the client side (``client_lib/tensors.py``).
"""
from __future__ import annotations

import math
from typing import Annotated

import msgspec

# dtype name -> bytes per element; names match both numpy and torch
DTYPES = {"float16": 2, "float32": 4, "float64": 8, "int8": 1, "int16": 2, "int32": 4,
          "int64": 8, "uint8": 1, "bool": 1}


class TensorMeta(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    dtype: str
    shape: Annotated[list[Annotated[int, msgspec.Meta(ge=0)]], msgspec.Meta(max_length=16)]

    def nbytes(self) -> int:
        if self.dtype not in DTYPES:
            raise ValueError(f"unsupported dtype {self.dtype!r}; use one of {', '.join(DTYPES)}")
        return math.prod(self.shape) * DTYPES[self.dtype]
