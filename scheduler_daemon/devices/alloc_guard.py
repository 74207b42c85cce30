"""Refuse an aten op whose outputs would not fit a tenant's byte quota, before it allocates.

A client names shapes: ``zeros([10**5, 10**5])`` or ``mm`` of an ``[N, 1]`` by a ``[1, N]``
would make the daemon allocate (and, on Linux, get OOM-killed) long before any quota check
after the fact. So each op runs first on meta tensors of its real inputs' shapes (no data, no
allocation) and its output bytes are checked. Results are cached per signature: a model's
forward repeats the same signatures, so the steady-state cost is building the key.
"""
from __future__ import annotations

import math

CACHE = 1 << 15


class TooLarge(ValueError):
    pass


class AllocGuard:
    def __init__(self):
        self._cache: dict = {}

    def check(self, name: str, fn, args: list, kwargs: dict, limit: int) -> None:
        """Raise ``TooLarge`` naming the op when its outputs need more than ``limit`` bytes."""
        try:
            key = (name, _sig(args), _sig(kwargs))
            nbytes = self._cache.get(key)
        except TypeError:           # an unhashable argument: no cache
            key, nbytes = None, None
        if nbytes is None:
            nbytes = _meta_bytes(fn, args, kwargs)
            if key is not None:
                if len(self._cache) >= CACHE:
                    self._cache.clear()
                self._cache[key] = nbytes
        if nbytes > limit:
            raise TooLarge(f"{name} would allocate {nbytes} bytes, more than the {limit} bytes "
                           "left in the tenant's quota (--max-tenant-bytes)")


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


def _meta_bytes(fn, args, kwargs) -> int:
    import torch

    def meta(a):
        if isinstance(a, torch.Tensor):
            return torch.empty_strided(a.shape, a.stride(), dtype=a.dtype, device="meta")
        if isinstance(a, torch.device):
            return torch.device("meta")
        if isinstance(a, (list, tuple)):
            return type(a)(meta(b) for b in a)
        return a
    margs = [meta(a) for a in args]
    mkw = {k: meta(v) for k, v in kwargs.items()}
    try:
        out = fn(*margs, **mkw)
    except Exception:               # no meta kernel, data-dependent: the op itself decides
        return 0
    ins = {id(m) for m in margs if isinstance(m, torch.Tensor)}
    total = 0
    for o in (out if isinstance(out, (tuple, list)) else [out]):
        if isinstance(o, torch.Tensor) and id(o) not in ins and o._base is None:
            total += math.prod(o.shape) * o.element_size()
    return total
