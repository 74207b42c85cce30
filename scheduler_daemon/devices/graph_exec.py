"""Run a captured Graph (wire/graph.py) with torch: resolve its ops at load, replay per request.

Ops are resolved once when the model is registered (``op_policy.resolve``: torch's registry and
the refusal rules of wire/ops.py); a refused op fails the registration naming it. ``run_op``
executes one node so that the scheduler can treat each op as one kernel.
"""
from __future__ import annotations

import logging

from scheduler_daemon.devices.op_policy import resolve
from scheduler_daemon.wire.graph import C, D, Graph, K, L, V

log = logging.getLogger("gpusched.graph")

MAX_WEIGHT_BYTES = 4 << 30


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
        self.fns = [resolve(n.op) for n in graph.ops]
        for node, op in zip(graph.ops, self.fns):
            if op.seeded and not op.facts.randomness_off(
                    [a.value if isinstance(a, C) else None for a in node.args],
                    {k: v.value for k, v in node.kwargs.items() if isinstance(v, C)}):
                raise ValueError(f"{op.name} draws random numbers from the daemon's generator, "
                                 "which is not the client's: capture the model in eval mode, "
                                 "or make the random tensor an input")
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
            guard.check(self.fns[i], args, kwargs, limit)
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


