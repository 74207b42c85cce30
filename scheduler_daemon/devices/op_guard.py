"""Refuse an aten op before it runs when its outputs would pass the tenant's room in bytes, or
its work would pass the daemon's bound per op.

A client names shapes: ``zeros([10**5, 10**5])``, ``mm`` of an ``[N, 1]`` by a ``[1, N]``, or a
``sum`` over a stride-0 view of 2**38 elements would make the daemon allocate (and get
OOM-killed) or compute for minutes, blocking every tenant, long before a check after the fact.
So each op first runs on meta tensors of its real inputs' shapes and strides (no data, no
allocation; every Device argument, a string "cpu" included, made "meta"), under torch's FLOP
counter: output bytes and work (FLOPs where torch counts them, else elements read and
written) are known before a byte is allocated. Results are cached per signature: a model's
forward repeats the same signatures, so the steady-state cost is building the key.

Ops whose output shape depends on data (``nonzero``, ``masked_select``, ``unique``, ...) have
no meta result; their outputs are bounded from their inputs (a ``nonzero`` has at most
``numel`` rows; ``repeat_interleave`` reads its ``repeats``) or checked right after they run.
"""
from __future__ import annotations

import math

CACHE = 1 << 15


class TooLarge(ValueError):
    """An op's outputs would pass the tenant's quota (the message names op and numbers)."""


class TooMuchWork(ValueError):
    """An op's work would pass the daemon's bound per op."""


class OpGuard:
    def __init__(self, max_work: float = float("inf")):
        self.max_work = max_work
        self._cache: dict = {}

    def warm(self) -> None:
        """Cost two small ops once: the first meta run imports the FLOP counter and what it
        pulls in (0.7 s and ~100,000 objects here), which would otherwise land on the first
        tenant's first op and in every later full garbage collection of the daemon."""
        import torch

        from scheduler_daemon.devices.op_policy import resolve
        a = torch.ones(2, 2)    # (on the CPU: only their shapes reach the meta run)
        for name in ("aten::mm.default", "aten::add.Tensor"):
            self.cost(resolve(name), [a, a], {})

    def check(self, op, args: list, kwargs: dict, room: int) -> int:
        """Raise when ``op`` on these arguments would need more than ``room`` bytes or more
        than ``max_work``; returns its output bytes (an upper bound for data-dependent ops)."""
        return self.enforce(op, self.cost(op, args, kwargs), args, kwargs, room)

    def cost(self, op, args: list, kwargs: dict) -> tuple:
        """(output bytes, or None where they depend on the data; work) of ``op`` on arguments
        of these shapes, strides and dtypes."""
        try:
            key = (op.name, _sig(args), _sig(kwargs))
            cost = self._cache.get(key)
        except TypeError:           # an unhashable argument: no cache
            key, cost = None, None
        if cost is None:
            cost = _meta_cost(op, args, kwargs)
            if key is not None and cost[0] is not None:
                if len(self._cache) >= CACHE:
                    self._cache.clear()
                self._cache[key] = cost
        return cost

    def enforce(self, op, cost: tuple, args: list, kwargs: dict, room: int) -> int:
        """``check`` with the op's ``cost`` already known."""
        nbytes, work = cost
        if nbytes is None:          # data-dependent: bounded from the data
            nbytes = data_bound(op, args, kwargs)
        if nbytes > room:
            raise TooLarge(f"{op.name} would allocate {nbytes} bytes, more than the {max(room, 0)} "
                           "bytes left in the tenant's quota (--max-tenant-bytes)")
        if work > self.max_work:
            raise TooMuchWork(f"{op.name} would do {work:.3g} operations, more than the "
                              f"daemon's bound of {self.max_work:.3g} per op: split it into "
                              "smaller ops")
        return nbytes


def numel(t) -> int:
    return math.prod(t.shape)


def _sig(a):
    import torch
    if isinstance(a, torch.Tensor):
        return ("T", tuple(a.shape), a.stride(), a.dtype)
    if isinstance(a, (list, tuple)):
        return tuple(_sig(b) for b in a)
    if isinstance(a, dict):
        return tuple((k, _sig(v)) for k, v in a.items())
    if isinstance(a, float):
        return ("f", a)
    return a


def _meta_cost(op, args, kwargs) -> tuple[int | None, float]:
    """(output bytes or None when data-dependent, work) from a run on meta tensors."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    facts = op.facts
    devices = {n for n, t in zip(facts.arg_names, facts.arg_types) if "Device" in t}
    touched = [0]

    def meta(a, name=None):
        if name in devices and a is not None:
            return torch.device("meta")
        if isinstance(a, torch.Tensor):
            touched[0] += numel(a)
            return torch.empty_strided(a.shape, a.stride(), dtype=a.dtype, device="meta")
        if isinstance(a, torch.device):
            return torch.device("meta")
        if isinstance(a, (list, tuple)):
            return type(a)(meta(b) for b in a)
        return a
    margs = [meta(a, n) for a, n in zip(args, facts.arg_names + [None] * len(args))]
    mkw = {k: meta(v, k) for k, v in kwargs.items()}
    for n in devices:   # a factory left to its default device would allocate for real
        if n not in mkw and facts.arg_names.index(n) >= len(margs):
            mkw[n] = torch.device("meta")
    try:
        with FlopCounterMode(display=False) as fc:
            out = op.fn(*margs, **mkw)
        flops = float(fc.get_total_flops())
    except Exception:               # no meta kernel, data-dependent: bounded from the data
        return None, float(touched[0])
    ins = {id(m) for m in margs if isinstance(m, torch.Tensor)}
    total = 0
    for o in (out if isinstance(out, (tuple, list)) else [out]):
        if isinstance(o, torch.Tensor):
            touched[0] += numel(o)
            if id(o) not in ins and o._base is None:
                total += numel(o) * o.element_size()
    return total, max(flops, float(touched[0]))


def data_bound(op, args, kwargs) -> int:
    """Output bytes of a data-dependent op, bounded from its real inputs (cheap reads only)."""
    import torch
    v = op.facts.values(args, kwargs)
    name = op.facts.name
    tensors = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]
    x = tensors[0] if tensors else None
    if x is None:
        return 0
    n, idx = numel(x), 8              # indices are int64
    if name in ("nonzero", "argwhere"):
        return n * max(1, x.dim()) * idx
    if name == "repeat_interleave":
        reps = v.get("repeats", x)
        return int(reps.sum().item()) * idx if reps.numel() else 0
    if name in ("bincount", "one_hot"):
        top = int(x.max().item()) + 1 if n else 0
        width = max(top, int(v.get("minlength", 0) or 0), int(v.get("num_classes", -1) or -1))
        return width * idx * (n if name == "one_hot" else 1)
    # masked_select, index with a mask, unique*, ...: at most every input element, and for
    # unique its inverse and counts as well
    return sum(numel(t) * max(t.element_size(), idx) for t in tensors) * 3
