"""What the torch backend runs for a kernel whose ``op`` names a built-in operator.

An op is ``NAME`` or ``NAME:ARG,ARG``; it maps the job's list of tensors to a new list.
Unknown or malformed ops are rejected when the model is registered, not when it runs.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from functools import lru_cache
from typing import Callable

from scheduler_daemon.wire.ops import kernel_op_refusal

Op = Callable[[list], list]


def _unary(fn_name: str) -> Callable[..., Op]:
    def make() -> Op:
        import torch
        fn = getattr(torch, fn_name)
        return lambda xs: [fn(x) for x in xs]
    return make


def _scale(f: str) -> Op:
    v = float(f)
    return lambda xs: [x * v for x in xs]


def _add(f: str) -> Op:
    v = float(f)
    return lambda xs: [x + v for x in xs]


def _softmax() -> Op:
    import torch
    return lambda xs: [torch.softmax(x, dim=-1) for x in xs]


_WEIGHTS: "OrderedDict" = OrderedDict()  # least recently used first
_WEIGHTS_LOCK = threading.Lock()          # the torch backend's workers share the cache
MAX_WEIGHT_ELEMENTS = 1 << 24             # one linear op's weight: at most 16 M elements
MAX_CACHED = 32                           # weights kept; clients choose the seeds


def linear_weight(n_in: int, n_out: int, seed: int, device, dtype):
    """Deterministic weights of the ``linear`` op: clients compute the same ones locally."""
    import torch
    if n_in * n_out > MAX_WEIGHT_ELEMENTS:
        raise ValueError(f"linear: a {n_out}x{n_in} weight exceeds {MAX_WEIGHT_ELEMENTS} elements")
    key = (n_in, n_out, seed, str(device), dtype)
    with _WEIGHTS_LOCK:
        w = _WEIGHTS.get(key)
        if w is not None:
            _WEIGHTS.move_to_end(key)
            return w
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(n_out, n_in, generator=g) / n_in ** 0.5).to(device=device, dtype=dtype)
    with _WEIGHTS_LOCK:
        _WEIGHTS[key] = w
        while len(_WEIGHTS) > MAX_CACHED:
            _WEIGHTS.popitem(last=False)
    return w


def _linear(out: str, seed: str = "0") -> Op:
    n_out, s = int(out), int(seed)
    if n_out <= 0 or n_out > 1 << 16:
        raise ValueError("linear: out features must be in 1..65536")

    def run(xs):
        return [x @ linear_weight(x.shape[-1], n_out, s, x.device, x.dtype).T for x in xs]
    return run


def _sleep(us: str) -> Op:
    d = float(us) * 1e-6
    if not 0 <= d <= 10:
        raise ValueError("sleep: duration must be 0..10 s")

    def run(xs):
        time.sleep(d)
        return xs
    return run


def _fail(msg: str = "kernel failed") -> Op:
    def run(xs):
        raise RuntimeError(msg)
    return run


OPS: dict[str, Callable[..., Op]] = {
    "": lambda: (lambda xs: xs),
    "identity": lambda: (lambda xs: xs),
    "relu": _unary("relu"),
    "tanh": _unary("tanh"),
    "sigmoid": _unary("sigmoid"),
    "softmax": _softmax,
    "scale": _scale,
    "add": _add,
    "linear": _linear,
    "sleep": _sleep,
    "fail": _fail,
}


@lru_cache(maxsize=4096)
def resolve(spec: str) -> Op:
    """Parse an op spec; raises ValueError naming the problem (the rule of wire/ops.py, which
    every backend applies)."""
    why = kernel_op_refusal(spec)
    if why:
        raise ValueError(why)
    name, _, args = spec.partition(":")
    make = OPS[name]
    try:
        return make(*[a for a in args.split(",") if a]) if args else make()
    except (TypeError, ValueError) as e:
        raise ValueError(f"bad arguments for op {spec!r}: {e}") from None
