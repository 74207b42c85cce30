"""Registered torch models on the client side: capture, ship once, run by handle (issue 4).

A ``ModelHandle`` takes the model's inputs as the model does (positional and keyword
arguments, nested in tuples, lists, dicts or dataclasses, with ``None``s and constants) and
returns what the model returns, in the same structure (client_lib/structure.py). A graph is
captured for one set of input shapes and constants (a *signature*); a call with another
signature captures the module again, registers that graph as ``NAME@k`` sharing the first
one's weights in the daemon (only new constants are sent), and keeps it for later calls, up
to ``max_shapes`` signatures per handle.
"""
from __future__ import annotations

import logging

from client_lib.capture import Captured, trace
from client_lib.structure import describe, flatten, signature, unflatten
from client_lib.tensors import to_frame
from scheduler_daemon.wire import protocol as P
from scheduler_daemon.wire.graph import encode_graph

log = logging.getLogger("gpusched.client.models")

MAX_SHAPES = 8


def graph_frames(name: str, c: Captured, max_frame_bytes: int, shares: str = "",
                 reuse: list[int] | None = None):
    """-> (RegisterGraph message with req_id 1, raw weight frames): the weights not reused
    from ``shares`` go as frames (a weight over the frame limit spans several)."""
    reuse = reuse or []
    metas, frames, counts = [], [], []
    step = max(1, max_frame_bytes)
    for i, w in enumerate(c.weights):
        if reuse and reuse[i] >= 0:
            continue
        meta, buf = to_frame(w)
        parts = [buf[i:i + step] for i in range(0, len(buf), step)] or [buf]  # zero-copy slices
        metas.append(meta)
        frames += parts
        counts.append(len(parts))
    msg = P.RegisterGraph(req_id=1, model=name, graph=encode_graph(c.graph), weights=metas,
                          weight_frames=counts if any(n > 1 for n in counts) else [],
                          shares=shares, reuse=list(reuse))
    return msg, frames


def register_graph_frames(name: str, module, example_inputs, max_frame_bytes: int,
                          example_kwargs=None):
    """-> (RegisterGraph message with req_id 1, raw weight frames, op count). Raises
    CaptureError/ValueError."""
    c = trace(module, tuple(example_inputs), example_kwargs)
    msg, frames = graph_frames(name, c, max_frame_bytes)
    return msg, frames, len(c.graph.ops)


class _Variant:
    __slots__ = ("captured", "name")

    def __init__(self, name: str, captured: Captured):
        self.name, self.captured = name, captured


class ModelHandle:
    """``handle(*args, **kwargs)`` runs one request and returns what the model returns (torch
    tensors in the model's own output structure); ``handle.submit(*args, slo_ms=..., **kwargs)``
    returns the client's JobFuture (``.result().outputs``: the graph's output tensors as numpy
    arrays; ``handle.build(future, result)`` makes the model's structure of them).
    ``slo_ms``, ``priority`` and ``timeout`` are the handle's own keywords."""

    def __init__(self, client, name: str, captured: Captured, slo_ms: float = 0.0,
                 module=None, max_shapes: int = MAX_SHAPES):
        self.client, self.name, self.slo_ms = client, name, slo_ms
        self.module, self.max_shapes = module, max_shapes
        self.n_ops = len(captured.graph.ops)
        self._variants = {captured.signature: _Variant(name, captured)}
        self._base_keys = {k: i for i, k in enumerate(captured.weight_keys)}

    @property
    def signatures(self) -> list[str]:
        """The input shapes this handle has a graph for, as text."""
        return [describe(sig) for sig in self._variants]

    def _variant(self, args, kwargs):
        tensors, spec = flatten((tuple(args), dict(kwargs)))
        sig = signature(spec, tensors)
        v = self._variants.get(sig)
        if v is None:
            v = self._capture(args, kwargs, sig)
        return v, tensors

    def _capture(self, args, kwargs, sig) -> _Variant:
        if self.module is None or len(self._variants) >= self.max_shapes:
            why = (f"it holds {len(self._variants)} signatures already (max_shapes="
                   f"{self.max_shapes})" if self.module is not None
                   else "this handle has no module to capture again")
            raise ValueError(f"model {self.name!r} was captured for inputs "
                             f"{' | '.join(self.signatures)}; got {describe(sig)} and cannot "
                             f"capture it again: {why}. Send inputs of a captured shape, or "
                             "register the model again")
        c = trace(self.module, tuple(args), kwargs)
        reuse = [self._base_keys.get(k, -1) for k in c.weight_keys]
        vname = f"{self.name}@{len(self._variants)}"
        msg, frames = graph_frames(vname, c, self.client._s.max_frame, shares=self.name,
                                   reuse=reuse)
        self.client._call("register", msg, self.client.timeout * 2 + 60, raw=frames)
        log.debug("model %s: captured again for %s as %s (%d ops, %d of %d weights reused)",
                 self.name, describe(sig), vname, len(c.graph.ops),
                 sum(r >= 0 for r in reuse), len(reuse))
        v = self._variants[sig] = _Variant(vname, c)
        return v

    def submit(self, *args, slo_ms: float | None = None, priority: int = 0, **kwargs):
        v, tensors = self._variant(args, kwargs)
        fut = self.client.submit(v.name, tensors,
                                 self.slo_ms if slo_ms is None else slo_ms, priority)
        fut.gs_build = (v, tensors)
        return fut

    def build(self, fut, result):
        """The model's own output structure around a finished job's outputs."""
        v, tensors = getattr(fut, "gs_build", (None, []))
        outs = to_torch_list(result.outputs)
        if v is None:
            return outs[0] if len(outs) == 1 else tuple(outs)
        c = v.captured
        leaves = [outs[j] if kind == "out" else tensors[j] for kind, j in c.out_refs]
        return unflatten(c.out_spec, leaves)

    def __call__(self, *args, timeout: float | None = None, **kwargs):
        fut = self.submit(*args, **kwargs)
        return self.build(fut, fut.result(timeout))

    def __repr__(self) -> str:
        return f"ModelHandle({self.name!r}, ops={self.n_ops}, shapes={len(self._variants)})"


def to_torch_list(outputs: list) -> list:
    import torch
    return [torch.from_numpy(o.copy()) for o in outputs]

