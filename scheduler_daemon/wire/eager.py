"""Intercepted eager ops on the wire (issue 4, the intercept path): ops whose tensor arguments
are handles to tensors that live in the daemon.

A handle is a positive integer chosen by the client, scoped to its connection: the daemon keeps
one table per client session, so a handle of one client can never name another's tensor.
Scalars, dtypes and devices reuse the registered-graph encoding (``graph_spec``).
"""
from __future__ import annotations

from typing import Annotated, Union

import msgspec

from scheduler_daemon.wire.graph import C, D, K

# the ops a client may run eagerly beyond the registered-graph allowlist: sync points
SYNC_OPS = frozenset({"_local_scalar_dense", "is_nonzero", "equal", "nonzero", "masked_select",
                      "unique", "_unique2"})

MAX_HANDLE = 2**53
HandleId = Annotated[int, msgspec.Meta(ge=1, lt=MAX_HANDLE)]
_Name = Annotated[str, msgspec.Meta(max_length=128)]


class H(msgspec.Struct, tag="h", frozen=True, forbid_unknown_fields=True):
    """A tensor of this client that lives in the daemon."""
    id: HandleId


class S(msgspec.Struct, tag="s", frozen=True, forbid_unknown_fields=True):
    """A string argument (``gelu(approximate='tanh')``, ``div(rounding_mode='floor')``)."""
    value: Annotated[str, msgspec.Meta(max_length=64)]


class EL(msgspec.Struct, tag="el", frozen=True, forbid_unknown_fields=True):
    """A list/tuple argument (a shape, the tensors of ``cat``)."""
    items: Annotated[list["EArg"], msgspec.Meta(max_length=4096)]


EArg = Union[H, C, S, EL, D, K]


class EagerOp(msgspec.Struct, frozen=True, forbid_unknown_fields=True, array_like=True):
    """One aten op. ``outs``: a handle for each (flattened) tensor output, 0 for an output the
    client does not keep (an in-place op's result is its input)."""
    op: _Name
    args: Annotated[list[EArg], msgspec.Meta(max_length=64)]
    kwargs: Annotated[dict[_Name, EArg], msgspec.Meta(max_length=32)] = {}
    outs: Annotated[list[Annotated[int, msgspec.Meta(ge=0, lt=MAX_HANDLE)]],
                    msgspec.Meta(max_length=256)] = []


class TensorLayout(msgspec.Struct, frozen=True, forbid_unknown_fields=True, array_like=True):
    """A tensor's shape, strides and storage offset (an upload or a result's metadata)."""
    dtype: _Name
    shape: Annotated[list[Annotated[int, msgspec.Meta(ge=0)]], msgspec.Meta(max_length=16)]
    stride: Annotated[list[Annotated[int, msgspec.Meta(ge=0)]], msgspec.Meta(max_length=16)]
    offset: Annotated[int, msgspec.Meta(ge=0)] = 0


class Upload(msgspec.Struct, frozen=True, forbid_unknown_fields=True, array_like=True):
    """A client tensor copied into the daemon as handle ``id``: its storage bytes arrive in
    ``frames`` raw frames (more than one when over the frame limit) and are viewed with
    ``layout``, so strides (and the kernels they select) match the client's."""
    id: HandleId
    layout: TensorLayout
    nbytes: Annotated[int, msgspec.Meta(ge=0)]
    frames: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 1
