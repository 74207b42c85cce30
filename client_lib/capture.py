"""Capture a module's aten op sequence with a TorchDispatchMode trace.

Why a dispatch-mode trace and not torch.export/FX: it records exactly the aten ops eager
execution runs (including fast paths such as the fused transformer encoder layer), needs no
graph-breaking rewrites, and is the same mechanism the intercept path uses, so both paths run
identical kernels and give bit-identical results. The price: data-dependent control flow is
frozen at the example inputs' values (documented in docs/models.md).
"""
from __future__ import annotations

import logging

from scheduler_daemon.wire.graph import C, D, Graph, K, L, OpNode, V, WeightSpec

log = logging.getLogger("gpusched.capture")


class CaptureError(ValueError):
    """The module could not be captured (names the reason)."""


def _key(t):
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()),
            t.dtype)


def capture(module, example_inputs) -> tuple[Graph, list]:
    """-> (graph, weight tensors in graph order). Raises CaptureError."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    inputs = list(example_inputs)
    if not all(isinstance(x, torch.Tensor) for x in inputs):
        raise CaptureError("example_inputs must be tensors")
    params = {_key(t): n for n, t in list(module.named_parameters()) + list(module.named_buffers())}
    ids: dict[int, tuple] = {id(x): ("i", i) for i, x in enumerate(inputs)}
    alive: list = list(inputs)          # keeps traced tensors alive so their ids stay unique
    weights: list = []
    wspecs: list[WeightSpec] = []
    ops: list[OpNode] = []
    out_count = [0]

    def enc(a):
        if isinstance(a, torch.Tensor):
            i = ids.get(id(a))
            if i is None:               # a parameter, buffer or tensor constant: shipped once
                name = params.get(_key(a), f"const{len(weights)}")
                weights.append(a.detach())
                wspecs.append(WeightSpec(name=name, dtype=str(a.dtype).removeprefix("torch."),
                                         shape=list(a.shape)))
                i = ids[id(a)] = ("w", len(weights) - 1)  # fixed up to real ids below
                alive.append(a)
            return V(id=i)
        if isinstance(a, (bool, int, float)) or a is None:
            return C(value=a)
        if isinstance(a, (list, tuple)):
            return L(items=[enc(b) for b in a])
        if isinstance(a, torch.dtype):
            return D(name=str(a).removeprefix("torch."))
        if isinstance(a, torch.device):
            return K(kind="device", name="cpu")
        if isinstance(a, torch.layout):
            return K(kind="layout", name=str(a).removeprefix("torch."))
        if isinstance(a, torch.memory_format):
            return K(kind="memory_format", name=str(a).removeprefix("torch."))
        raise CaptureError(f"unsupported argument of type {type(a).__name__}")

    class Trace(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            node_args = [enc(a) for a in args]
            node_kwargs = {k: enc(v) for k, v in kwargs.items()}
            out = func(*args, **kwargs)
            outs = list(out) if isinstance(out, (tuple, list)) else [out]
            ops.append(OpNode(op=f"{func.namespace}::{func._opname}.{func._overloadname}",
                              args=node_args, kwargs=node_kwargs, n_out=len(outs)))
            for o in outs:
                if isinstance(o, torch.Tensor):
                    ids[id(o)] = ("o", out_count[0])
                    alive.append(o)
                out_count[0] += 1
            return out

    with torch.no_grad(), Trace():
        y = module(*inputs)
    ys = list(y) if isinstance(y, (tuple, list)) else [y]
    if not ops:
        raise CaptureError("the module ran no aten ops")
    n_in, n_w = len(inputs), len(weights)

    def fix(a):                         # ("w", j) / ("o", j) placeholders -> value ids
        if isinstance(a, V):
            kind, j = a.id
            return V(id=j + {"i": 0, "w": n_in, "o": n_in + n_w}[kind])
        if isinstance(a, L):
            return L(items=[fix(b) for b in a.items])
        return a
    ops = [OpNode(op=n.op, args=[fix(a) for a in n.args],
                  kwargs={k: fix(v) for k, v in n.kwargs.items()}, n_out=n.n_out) for n in ops]
    outputs = []
    for t in ys:
        r = ids.get(id(t))
        if r is None:
            raise CaptureError("a module output is not produced by a traced op")
        outputs.append(fix(V(id=r)).id)
    g = Graph(n_inputs=n_in, weights=wspecs, ops=ops, outputs=outputs)
    log.info("capture: %d ops, %d weights", len(ops), n_w)
    return g, weights
