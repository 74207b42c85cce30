"""Registered torch models on the client side: capture, ship once, run by handle (issue 4)."""
from __future__ import annotations

import logging

from client_lib.capture import capture
from client_lib.tensors import to_frame
from scheduler_daemon.wire import protocol as P
from scheduler_daemon.wire.graph import encode_graph

log = logging.getLogger("gpusched.client.models")


def register_graph_frames(name: str, module, example_inputs, max_frame_bytes: int):
    """-> (RegisterGraph message with req_id 0, raw weight frames). Raises CaptureError/ValueError."""
    graph, weights = capture(module, example_inputs)
    metas, frames, counts = [], [], []
    step = max(1, max_frame_bytes)
    for w in weights:
        meta, buf = to_frame(w)
        parts = [buf[i:i + step] for i in range(0, len(buf), step)] or [buf]  # zero-copy slices
        metas.append(meta)
        frames += parts
        counts.append(len(parts))
    msg = P.RegisterGraph(req_id=1, model=name, graph=encode_graph(graph), weights=metas,
                          weight_frames=counts if any(c > 1 for c in counts) else [])
    return msg, frames, len(graph.ops)


class ModelHandle:
    """``handle(*inputs)`` runs one request and returns torch tensors (a tensor when the model
    has one output); ``handle.submit(*inputs, slo_ms=...)`` returns the client's JobFuture."""

    def __init__(self, client, name: str, n_ops: int, slo_ms: float = 0.0):
        self.client, self.name, self.n_ops, self.slo_ms = client, name, n_ops, slo_ms

    def submit(self, *inputs, slo_ms: float | None = None, priority: int = 0):
        return self.client.submit(self.name, list(inputs),
                                  self.slo_ms if slo_ms is None else slo_ms, priority)

    def __call__(self, *inputs, timeout: float | None = None):
        return to_torch(self.submit(*inputs).result(timeout).outputs)

    def __repr__(self) -> str:
        return f"ModelHandle({self.name!r}, ops={self.n_ops})"


def to_torch(outputs: list):
    import torch
    ts = [torch.from_numpy(o.copy()) for o in outputs]
    return ts[0] if len(ts) == 1 else tuple(ts)
