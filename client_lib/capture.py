"""Capture a module's aten op sequence with a TorchDispatchMode trace.

Why a dispatch-mode trace and not torch.export/FX: it records exactly the aten ops eager
execution runs (including fast paths such as the fused transformer encoder layer), needs no
graph-breaking rewrites, and is the same mechanism the intercept path uses, so both paths run
identical kernels and give bit-identical results. The price: data-dependent control flow and
shapes are frozen at the example inputs (a ``ModelHandle`` captures again for other shapes;
docs/models.md).

Inputs and outputs may be any structure (client_lib/structure.py): the tensors in the inputs
(positional and keyword) become the graph's inputs, in order; everything else in them is a
constant of this capture. The outputs' tensors are graph outputs, or, when the model hands an
input back unchanged, that input (rebuilt on the client, never sent); a tensor the forward
returns without making it by an op (a buffer, a constant) is shipped once as a weight.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from client_lib.structure import StructureError, flatten, signature
from scheduler_daemon.wire.graph import C, D, Graph, K, L, OpNode, S, V, WeightSpec

log = logging.getLogger("gpusched.capture")


class CaptureError(ValueError):
    """The module could not be captured (names the reason)."""


def _key(t):
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()),
            t.dtype)


@dataclass
class Captured:
    """One capture: the graph, its weights, and how to build the module's result from the
    tensors the daemon sends back (``out_refs``: ("out", k) the k-th graph output, ("in", i)
    the i-th input handed back unchanged)."""
    graph: Graph
    weights: list
    weight_keys: list            # (storage key, version) per weight: reused by later captures
    in_spec: object
    out_spec: object
    out_refs: list
    signature: tuple


def capture(module, example_inputs) -> tuple[Graph, list]:
    """-> (graph, weight tensors in graph order). Raises CaptureError."""
    c = trace(module, tuple(example_inputs))
    return c.graph, c.weights


def _enc_name(a) -> str:
    return str(a).removeprefix("torch.")


def trace(module, args=(), kwargs=None) -> Captured:
    """Run ``module(*args, **kwargs)`` once under a trace. Raises CaptureError naming what
    could not be captured."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    kwargs = dict(kwargs or {})
    try:
        inputs, in_spec = flatten((tuple(args), kwargs))
    except StructureError as e:
        raise CaptureError(f"inputs: {e}") from None
    params = {_key(t): n for n, t in list(module.named_parameters()) + list(module.named_buffers())}
    ids: dict[int, tuple] = {}
    for i, x in enumerate(inputs):
        ids.setdefault(id(x), ("i", i))
    alive: list = list(inputs)          # keeps traced tensors alive so their ids stay unique
    weights: list = []
    wkeys: list = []
    wspecs: list[WeightSpec] = []
    ops: list[OpNode] = []
    out_count = [0]

    def weight(a):
        name = params.get(_key(a), f"const{len(weights)}")
        weights.append(a.detach())
        wkeys.append((_key(a), a._version))
        wspecs.append(WeightSpec(name=name[:128], dtype=_enc_name(a.dtype), shape=list(a.shape)))
        ids[id(a)] = ("w", len(weights) - 1)  # fixed up to real ids below
        alive.append(a)
        return ids[id(a)]

    def enc(a):
        if isinstance(a, torch.Tensor):
            i = ids.get(id(a))
            if i is None:               # a parameter, buffer or tensor constant: shipped once
                i = weight(a)
            return V(id=i)
        if isinstance(a, (bool, int, float)) or a is None:
            return C(value=a)
        if isinstance(a, str):
            return S(value=a)
        if isinstance(a, (list, tuple)):
            return L(items=[enc(b) for b in a])
        if isinstance(a, torch.dtype):
            return D(name=_enc_name(a))
        if isinstance(a, torch.device):
            return K(kind="device", name="cpu")
        if isinstance(a, torch.layout):
            return K(kind="layout", name=_enc_name(a))
        if isinstance(a, torch.memory_format):
            return K(kind="memory_format", name=_enc_name(a))
        raise CaptureError(f"an op argument of type {type(a).__name__} cannot be captured")

    class Trace(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = f"{func.namespace}::{func._opname}.{func._overloadname}"
            try:
                node_args = [enc(a) for a in args]
                node_kwargs = {k: enc(v) for k, v in kwargs.items()}
            except CaptureError as e:
                raise CaptureError(f"{name}: {e}") from None
            out = func(*args, **kwargs)
            outs = list(out) if isinstance(out, (tuple, list)) else [out]
            ops.append(OpNode(op=name, args=node_args, kwargs=node_kwargs, n_out=len(outs)))
            for o in outs:
                if isinstance(o, torch.Tensor):
                    ids[id(o)] = ("o", out_count[0])
                    alive.append(o)
                out_count[0] += 1
            return out

    try:
        with torch.no_grad(), Trace():
            y = module(*args, **kwargs)
    except CaptureError:
        raise
    except Exception as e:
        raise CaptureError(f"the module's forward failed under capture: {type(e).__name__}: "
                           f"{e}") from e
    try:
        outs, out_spec = flatten(y)
    except StructureError as e:
        raise CaptureError(f"output: {e}") from None
    if not ops:
        raise CaptureError("the module ran no aten ops")
    refs = [ids.get(id(t)) or weight(t) for t in outs]    # an untraced tensor: a constant
    n_in, n_w = len(inputs), len(weights)

    def fix_id(r) -> int:
        kind, j = r
        return j + {"i": 0, "w": n_in, "o": n_in + n_w}[kind]

    def fix(a):                         # ("w", j) / ("o", j) placeholders -> value ids
        if isinstance(a, V):
            return V(id=fix_id(a.id))
        if isinstance(a, L):
            return L(items=[fix(b) for b in a.items])
        return a
    ops = [OpNode(op=n.op, args=[fix(a) for a in n.args],
                  kwargs={k: fix(v) for k, v in n.kwargs.items()}, n_out=n.n_out) for n in ops]
    outputs: list[int] = []
    out_refs: list[tuple] = []
    for r in refs:
        if r[0] == "i":
            out_refs.append(("in", r[1]))
            continue
        v = fix_id(r)
        if v not in outputs:
            outputs.append(v)
        out_refs.append(("out", outputs.index(v)))
    in_specs = [WeightSpec(name=f"input{i}", dtype=_enc_name(x.dtype), shape=list(x.shape))
                for i, x in enumerate(inputs)]
    g = Graph(n_inputs=n_in, weights=wspecs, ops=ops, outputs=outputs, inputs=in_specs)
    log.debug("capture: %d ops, %d weights, %d inputs, %d outputs", len(ops), n_w, n_in,
             len(outputs))
    return Captured(graph=g, weights=weights, weight_keys=wkeys, in_spec=in_spec,
                    out_spec=out_spec, out_refs=out_refs, signature=signature(in_spec, inputs))
