"""Run a captured Graph (graph_spec) with torch: resolve and allowlist ops at load, replay per request.

Ops are resolved once when the model is registered; an op outside ALLOWED is refused naming it.
``run_op`` executes one node so that the scheduler can treat each op as one kernel.
"""
from __future__ import annotations

import logging

from scheduler_daemon.wire.graph import C, D, Graph, K, L, V
from scheduler_daemon.wire.ops import ALLOWED

log = logging.getLogger("gpusched.graph")

MAX_WEIGHT_BYTES = 4 << 30


def resolve_op(name: str):
    """'aten::addmm.default' -> OpOverload; ValueError naming the op when refused."""
    import torch
    ns, _, rest = name.partition("::")
    opname, _, overload = rest.partition(".")
    if ns != "aten" or opname not in ALLOWED:
        raise ValueError(f"unsupported op {name!r}: not in the daemon's allowed aten ops")
    try:
        return getattr(getattr(torch.ops.aten, opname), overload or "default")
    except AttributeError:
        raise ValueError(f"unsupported op {name!r}: no such aten overload") from None


def _dtype(name: str):
    import torch
    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dt


def _const(k: K, device=None):
    import torch
    if k.kind == "device":  # captured on the client's CPU: ops create tensors on the daemon's device
        return device or torch.device("cpu")
    v = getattr(torch, k.name, None)
    if not isinstance(v, (torch.layout, torch.memory_format)):
        raise ValueError(f"unknown {k.kind} {k.name!r}")
    return v


class LoadedGraph:
    """A validated graph with its ops resolved and its weights on the device."""

    def __init__(self, graph: Graph, weights: list, device=None):
        self.graph = graph
        self.device = device
        self.fns = [resolve_op(n.op) for n in graph.ops]
        if len(weights) != len(graph.weights):
            raise ValueError(f"graph declares {len(graph.weights)} weights, got {len(weights)}")
        self.weights = weights
        self.kwconsts = [self._prebuild(n) for n in graph.ops]

    @staticmethod
    def _prebuild(node):
        def conv(a):
            if isinstance(a, C):
                return a.value
            if isinstance(a, D):
                return _dtype(a.name)
            if isinstance(a, K):
                return _const(a)
            return None
        for a in list(node.args) + list(node.kwargs.values()):
            conv(a)                     # validates dtype/enum names at load
        return None

    def start(self, inputs: list) -> list:
        """A request's value table: inputs then weights; op outputs are appended by run_op."""
        if len(inputs) != self.graph.n_inputs:
            raise ValueError(f"model takes {self.graph.n_inputs} inputs, got {len(inputs)}")
        return list(inputs) + list(self.weights)

    def _arg(self, a, env):
        if isinstance(a, V):
            return env[a.id]
        if isinstance(a, C):
            return a.value
        if isinstance(a, L):
            return [self._arg(b, env) for b in a.items]
        if isinstance(a, D):
            return _dtype(a.name)
        return _const(a, self.device)

    def run_op(self, i: int, env: list, guard=None, limit: int = 0) -> None:
        """Run node ``i`` on ``env``; with a ``guard`` (alloc_guard.AllocGuard), first refuse
        it if its outputs would need more than ``limit`` bytes."""
        node = self.graph.ops[i]
        args = [self._arg(a, env) for a in node.args]
        kwargs = {k: self._arg(v, env) for k, v in node.kwargs.items()}
        if guard is not None:
            guard.check(node.op, self.fns[i], args, kwargs, limit)
        out = self.fns[i](*args, **kwargs)
        outs = list(out) if isinstance(out, (tuple, list)) else [out]
        if len(outs) != node.n_out:
            raise ValueError(f"op {node.op} gave {len(outs)} outputs, graph says {node.n_out}")
        env.extend(outs)

    def run(self, inputs: list) -> list:
        import torch
        env = self.start(inputs)
        with torch.no_grad():
            for i in range(len(self.fns)):
                self.run_op(i, env)
        return [env[o] for o in self.graph.outputs]


