"""Run a captured Graph (wire/graph.py) with torch: resolve its ops at load, replay per request.

Ops are resolved once when the model is registered (``op_policy.resolve``: torch's registry and
the refusal rules of wire/ops.py); a refused op fails the registration naming it. ``run_op``
executes one node so that the scheduler can treat each op as one kernel.
"""
from __future__ import annotations

import logging
import threading

from scheduler_daemon.core.ledger import storage_key
from scheduler_daemon.devices.op_guard import TooLarge
from scheduler_daemon.devices.op_policy import resolve
from scheduler_daemon.wire.graph import C, D, Graph, K, L, S, V

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


class _Env(list):
    """One request's values (inputs, weights, op outputs by id), and what of them its
    tenant's ledger holds; ``closed`` once the job ended (a running op then keeps nothing)."""

    __slots__ = ("held", "closed", "lock", "paid")

    def __init__(self, values, paid: frozenset = frozenset()):
        super().__init__(values)
        self.held: dict[int, tuple] = {}   # value id -> storage key held in the ledger
        self.paid = paid   # storages counted by a fixed charge (weights, inputs): their views add nothing
        self.closed = False
        self.lock = threading.Lock()


class LoadedGraph:
    """A validated graph with its ops resolved and its weights on the device.

    A request keeps each intermediate only until its last use (``frees``): a graph's peak
    memory is its widest point, not the sum of all its ops' outputs. With a tenant's
    ``quota`` (its Ledger), every output is counted by storage as it is made and refunded as
    it is dropped, and each op is refused before it runs when its outputs would not fit."""

    def __init__(self, graph: Graph, weights: list, device=None, quota=None, name: str = ""):
        self.quota = quota
        self.name = name
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
        self._weight_storages = frozenset(_storages(weights))
        self.kwconsts = [self._prebuild(n) for n in graph.ops]
        self.frees = _last_uses(graph)
        # the op guard's cost of each op, kept by position: where the graph declares its input
        # shapes (check_inputs holds every request to them), an op's argument shapes are the
        # same in every request, unless they come from an op whose output shape depends on
        # the data (``tainted``: those ops' outputs, what they write in place, and what is
        # computed from them, are costed per request)
        self._costs: list | None = ([None] * len(graph.ops)
                                    if len(graph.inputs) == graph.n_inputs else None)
        self._tainted: set = set()
        self._reads = [_value_refs(list(n.args) + list(n.kwargs.values())) for n in graph.ops]
        self._writes = [_written(op, n) for op, n in zip(self.fns, graph.ops)]

    @staticmethod
    def _prebuild(node):
        def conv(a):
            if isinstance(a, (C, S)):
                return a.value
            if isinstance(a, D):
                return _dtype(a.name)
            if isinstance(a, K):
                return _const(a)
            return None
        for a in list(node.args) + list(node.kwargs.values()):
            conv(a)                     # validates dtype/enum names at load
        return None

    def start(self, inputs: list) -> _Env:
        """A request's value table: inputs then weights; op outputs are appended by run_op
        (the inputs and weights are counted by the job's and the model's own charges)."""
        self.check_inputs([(str(x.dtype).removeprefix("torch."), list(x.shape)) for x in inputs])
        return _Env(list(inputs) + list(self.weights),
                    self._weight_storages | frozenset(_storages(inputs)))

    def check_inputs(self, got: list) -> None:
        """``got``: (dtype, shape) of each input sent. A graph is captured for one set of
        shapes: others are refused here, before anything runs, naming both."""
        g = self.graph
        want = [(w.dtype, list(w.shape)) for w in g.inputs]
        who = f"model {self.name!r}" if self.name else "the model"
        if len(got) != g.n_inputs or (want and want != [(d, list(s)) for d, s in got]):
            def fmt(xs):
                return ", ".join(f"{d}{list(s)}" for d, s in xs) or "none"
            expected = fmt(want) if want else f"{g.n_inputs} inputs"
            raise ValueError(f"{who} was captured for inputs ({expected}); got ({fmt(got)}): "
                             "send inputs of those shapes, or register the model for these "
                             "(a ModelHandle from register_model captures each new shape "
                             "by itself)")

    def finish(self, env) -> None:
        """The request ended (answered, failed or cancelled): refund what it held."""
        if not isinstance(env, _Env):
            return
        with env.lock:
            env.closed = True
            held, env.held = env.held, {}
        if self.quota is not None:
            for key in held.values():
                self.quota.release(key)

    def _arg(self, a, env):
        if isinstance(a, V):
            return env[a.id]
        if isinstance(a, (C, S)):
            return a.value
        if isinstance(a, L):
            return [self._arg(b, env) for b in a.items]
        if isinstance(a, D):
            return _dtype(a.name)
        return _const(a, self.device)

    def run_op(self, i: int, env: list, guard=None, limit: int = 0) -> None:
        """Run node ``i`` on ``env``; with a ``guard`` (op_guard.OpGuard), first refuse it if
        its outputs would need more than the tenant's room (or ``limit`` bytes without a
        quota) or more work than the guard's bound."""
        node = self.graph.ops[i]
        fn = self.fns[i]
        if getattr(env, "closed", False):   # the request ended (cancelled): run nothing more
            raise ValueError(f"{node.op}: the request has ended")
        args = [self._arg(a, env) for a in node.args]
        kwargs = {k: self._arg(v, env) for k, v in node.kwargs.items()} if node.kwargs else {}
        quota = self.quota
        if guard is not None:
            costs = self._costs
            cost = costs[i] if costs is not None else None
            if cost is None:
                cost = guard.cost(fn, args, kwargs)
                tainted = self._tainted
                if cost[0] is None or not tainted.isdisjoint(self._reads[i]):
                    tainted.update(range(len(env), len(env) + node.n_out))
                    tainted.update(self._writes[i])
                elif costs is not None:
                    costs[i] = cost
            guard.enforce(fn, cost, args, kwargs, quota.room() if quota is not None else limit)
        out = fn(*args, **kwargs)
        outs = list(out) if isinstance(out, (tuple, list)) else [out]
        if len(outs) != node.n_out:
            raise ValueError(f"op {node.op} gave {len(outs)} outputs, graph says {node.n_out}")
        base = len(env)
        env.extend(outs)
        if quota is not None and isinstance(env, _Env):
            import torch
            with env.lock:
                for j, o in enumerate(outs):
                    if isinstance(o, torch.Tensor) and not env.closed:
                        key, nbytes = storage_key(o)
                        if key in env.paid:    # a view of a weight or an input
                            continue
                        quota.hold(key, nbytes)
                        env.held[base + j] = key
        for v in self.frees[i]:   # values whose last use was this op
            env[v] = None
            key = env.held.pop(v, None) if isinstance(env, _Env) else None
            if key is not None:
                quota.release(key)
        if quota is not None and quota.room() < 0:
            raise TooLarge(f"{node.op} took tenant past its quota of {quota.quota} bytes "
                           "(--max-tenant-bytes)")

    def run(self, inputs: list) -> list:
        import torch
        env = self.start(inputs)
        with torch.no_grad():
            for i in range(len(self.fns)):
                self.run_op(i, env)
        out = [env[o] for o in self.graph.outputs]
        self.finish(env)
        return out


def _refs(a):
    """The value ids argument ``a`` reads."""
    if isinstance(a, V):
        yield a.id
    elif isinstance(a, L):
        for b in a.items:
            yield from _refs(b)


def _value_refs(args) -> frozenset:
    return frozenset(v for a in args for v in _refs(a))


def _written(op, node) -> frozenset:
    """The value ids ``node`` writes in place (its schema's mutable arguments: ``resize_``'s
    self, an ``out=``): a data-dependent op changes their shapes as well as its outputs'."""
    schema = getattr(op.fn, "_schema", None)
    if schema is None:
        return frozenset()
    names = [a.name for a in schema.arguments]
    writes = {a.name for a in schema.arguments
              if a.alias_info is not None and a.alias_info.is_write}
    if not writes:
        return frozenset()
    args = [a for pos, a in enumerate(node.args) if pos < len(names) and names[pos] in writes]
    args += [a for k, a in node.kwargs.items() if k in writes]
    return _value_refs(args)


def _storages(tensors):
    import torch
    return (storage_key(t)[0] for t in tensors if isinstance(t, torch.Tensor))


def _last_uses(graph: Graph) -> list[list[int]]:
    """For each op, the values (inputs and op outputs, never weights or graph outputs) whose
    last reader it is: dropped right after it runs."""
    n_in, n_w = graph.n_inputs, len(graph.weights)
    keep = set(graph.outputs) | set(range(n_in, n_in + n_w))
    last: dict[int, int] = {}
    for i, node in enumerate(graph.ops):
        for a in list(node.args) + list(node.kwargs.values()):
            for v in _refs(a):
                last[v] = i
    frees: list[list[int]] = [[] for _ in graph.ops]
    out = n_in + n_w
    for i, node in enumerate(graph.ops):   # an output nobody reads goes after its own op
        for j in range(node.n_out):
            last.setdefault(out + j, i)
        out += node.n_out
    for v, i in last.items():
        if v not in keep:
            frees[i].append(v)
    return frees


