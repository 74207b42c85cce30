"""A captured model on the wire: a msgspec struct of aten ops whose args reference values by id.

Values are numbered: the request inputs first, then the weights (shipped once as raw frames),
then each op's outputs in order. Nothing here is pickled; ``decode_graph`` validates every field.
"""
from __future__ import annotations

from typing import Annotated, Union

import msgspec

MAX_OPS = 20000
MAX_VALUES = 200000
MAX_IO = 1024   # inputs and outputs of one graph (a KV cache's tensors are outputs)
_Name = Annotated[str, msgspec.Meta(max_length=128)]


class V(msgspec.Struct, tag="v", frozen=True, forbid_unknown_fields=True):
    """A reference to value ``id`` (input, weight or an earlier op's output)."""
    id: Annotated[int, msgspec.Meta(ge=0, lt=MAX_VALUES)]


class C(msgspec.Struct, tag="c", frozen=True, forbid_unknown_fields=True):
    """A scalar constant."""
    value: Union[bool, int, float, None]


class L(msgspec.Struct, tag="l", frozen=True, forbid_unknown_fields=True):
    """A list/tuple argument (e.g. a shape, or a list of tensors for cat)."""
    items: Annotated[list["Arg"], msgspec.Meta(max_length=4096)]


class S(msgspec.Struct, tag="s", frozen=True, forbid_unknown_fields=True):
    """A string argument (``gelu(approximate='tanh')``, an ``einsum`` equation)."""
    value: Annotated[str, msgspec.Meta(max_length=256)]


class D(msgspec.Struct, tag="d", frozen=True, forbid_unknown_fields=True):
    """A torch dtype by name (float32, int64, ...)."""
    name: _Name


class K(msgspec.Struct, tag="k", frozen=True, forbid_unknown_fields=True):
    """A torch enum-like constant: device / layout / memory_format, by name."""
    kind: Annotated[str, msgspec.Meta(pattern="^(device|layout|memory_format)$")]
    name: _Name


Arg = Union[V, C, L, D, K, S]


class OpNode(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    op: _Name                                    # "aten::addmm.default"
    args: Annotated[list[Arg], msgspec.Meta(max_length=64)]
    kwargs: Annotated[dict[_Name, Arg], msgspec.Meta(max_length=32)] = {}
    n_out: Annotated[int, msgspec.Meta(ge=0, le=64)] = 1


class WeightSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: _Name
    dtype: _Name
    shape: Annotated[list[Annotated[int, msgspec.Meta(ge=0)]], msgspec.Meta(max_length=16)]


class Graph(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``outputs`` may be empty (a model whose outputs are all inputs handed back or
    constants: the client rebuilds them). ``inputs``: the dtype and shape of each input the
    graph was captured for; a request with other shapes is refused at submit, naming both."""
    n_inputs: Annotated[int, msgspec.Meta(ge=0, le=MAX_IO)]
    weights: Annotated[list[WeightSpec], msgspec.Meta(max_length=MAX_VALUES)]
    ops: Annotated[list[OpNode], msgspec.Meta(min_length=1, max_length=MAX_OPS)]
    outputs: Annotated[list[Annotated[int, msgspec.Meta(ge=0)]], msgspec.Meta(max_length=MAX_IO)]
    inputs: Annotated[list[WeightSpec], msgspec.Meta(max_length=MAX_IO)] = []


_ENC = msgspec.msgpack.Encoder()
_DEC = msgspec.msgpack.Decoder(Graph)


def encode_graph(g: Graph) -> bytes:
    return _ENC.encode(g)


def decode_graph(buf) -> Graph:
    """Bytes -> Graph with every value reference checked to name an earlier value."""
    g = _DEC.decode(buf)
    n = g.n_inputs + len(g.weights)

    def check(a, i):
        if isinstance(a, V) and a.id >= n:
            raise ValueError(f"op {i} ({g.ops[i].op}) references value {a.id} before it exists")
        if isinstance(a, L):
            for b in a.items:
                check(b, i)
    for i, node in enumerate(g.ops):
        for a in node.args:
            check(a, i)
        for a in node.kwargs.values():
            check(a, i)
        n += node.n_out
    if g.inputs and len(g.inputs) != g.n_inputs:
        raise ValueError(f"graph declares {g.n_inputs} inputs but describes {len(g.inputs)}")
    for o in g.outputs:
        if o >= n:
            raise ValueError(f"graph output {o} names no value")
    return g
