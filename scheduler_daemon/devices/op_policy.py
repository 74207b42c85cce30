"""An aten operator name from a tenant -> the callable the daemon runs, or a refusal naming it.

The name is looked up in torch's own registry (``torch.ops.aten``): the op packet must be an
operator and the overload one of its registered overloads (``packet.overloads()``), never an
arbitrary attribute (``aten::relu.__setattr__`` once reached torch internals for every tenant).
The rules of ``wire/ops.py`` then refuse what reaches outside tensor math; random ops run only
with their randomness switched off; allocations of uninitialised memory are zero-filled, so no
tenant reads another's freed data.
"""
from __future__ import annotations

import functools

from scheduler_daemon.wire.ops import ZERO_FILL, Facts, kernel_op_refusal

MAX_NAME = 128


class OpRefused(ValueError):
    """The op is not run: the message names it and why."""


class Op:
    """A resolved operator: call it like the OpOverload it wraps."""

    __slots__ = ("name", "fn", "facts", "zero_fill", "sync", "seeded")

    def __init__(self, fn, facts: Facts):
        self.fn, self.facts = fn, facts
        self.name = facts.full_name
        self.zero_fill = facts.name in ZERO_FILL
        self.sync = facts.sync
        self.seeded = facts.seeded

    def __call__(self, *args, **kwargs):
        if self.seeded and not self.facts.randomness_off(args, kwargs):
            raise OpRefused(f"{self.name} draws random numbers from the daemon's generator, "
                            "which is not the client's: make the random tensor in the client "
                            "and pass it in, or switch the randomness off (eval mode)")
        if not self.zero_fill:
            return self.fn(*args, **kwargs)
        return _zero_filled(self, args, kwargs)


def _zero_filled(op: Op, args, kwargs):
    import torch
    name = op.facts.name
    if name.startswith("resize"):   # new memory past the old elements is uninitialised
        target = args[0] if args else kwargs.get("self")
        before = target.numel()
        out = op.fn(*args, **kwargs)
        grown = out if isinstance(out, torch.Tensor) else target
        with torch.no_grad():
            if grown.is_contiguous():
                grown.view(-1)[before:].zero_()
            else:
                grown.zero_()
        return out
    out = op.fn(*args, **kwargs)
    with torch.no_grad():
        for t in (out if isinstance(out, (tuple, list)) else [out]):
            if isinstance(t, torch.Tensor):
                t.zero_()
    return out


@functools.lru_cache(maxsize=4096)
def resolve(name: str) -> Op:
    """'aten::addmm.default' -> Op; ``OpRefused`` naming the op and the reason."""
    import torch
    if not isinstance(name, str) or len(name) > MAX_NAME:
        raise OpRefused("an op name must be 'aten::name.overload' (at most 128 characters)")
    ns, sep, rest = name.partition("::")
    opname, _, overload = rest.partition(".")
    overload = overload or "default"
    if not sep or not opname.isidentifier() or not overload.isidentifier():
        raise OpRefused(f"{name!r} is not an operator name ('aten::name.overload')")
    if ns != "aten":
        raise OpRefused(f"{name}: the daemon runs aten operators only")
    packet = getattr(torch.ops.aten, opname, None)   # an operator packet, or refused below
    if not isinstance(packet, torch._ops.OpOverloadPacket):
        raise OpRefused(f"{name}: torch has no aten operator {opname!r}")
    if overload not in packet.overloads():
        raise OpRefused(f"{name}: {opname} has no overload {overload!r} (it has: "
                        f"{', '.join(sorted(packet.overloads()))})")
    fn = getattr(packet, overload)
    facts = Facts(fn)
    why = facts.refusal()
    if why is not None:
        raise OpRefused(f"{name} is refused: {why}")
    return Op(fn, facts)


def check_kernel_ops(kernels) -> None:
    """Refuse a kernel list any of whose ``op`` the torch backend would not run, whatever the
    backend (the simulated GPU ignores ops; a model registered there must still run on torch).
    Raises ``ValueError`` naming the kernel."""
    for i, k in enumerate(kernels):
        why = kernel_op_refusal(k.op)
        if why:
            raise ValueError(f"kernel {i} ({k.name}): {why}")
