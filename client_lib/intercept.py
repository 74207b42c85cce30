"""Transparent interception (issue 4, the eager path): ``with client.intercept(): y = model(x)``.

A ``TorchDispatchMode`` sees every aten op of an unmodified eager model and sends it to the
daemon instead of running it. CUDA semantics: a launch returns at once with a ``RemoteTensor``
(shape, strides and dtype known here, inferred on meta tensors and cached per signature; data
in the daemon); ops are sent in batches and run there in order; values come back only at sync
points (``.cpu()``, ``.numpy()``, ``.item()``, printing, ``bool(t)`` in control flow, ops whose
output shape depends on data). Local tensors an op reads (weights, inputs) are uploaded once
per version. Ops the daemon cannot run fail here at once, naming the op, never with a wrong
result. Errors of ops that ran in the daemon surface at the next sync point.
"""
from __future__ import annotations

import logging
import threading
import weakref
from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

from client_lib.errors import GpuschedError, RequestError
from client_lib.tensors import from_frame
from scheduler_daemon.wire import protocol as P
from scheduler_daemon.wire.eager import (
    EL,
    EagerOp,
    H,
    S,
    TensorLayout,
    Upload,
)
from scheduler_daemon.wire.graph import C, D, K
from scheduler_daemon.wire.ops import Facts
from scheduler_daemon.wire.tensors import DTYPES

log = logging.getLogger("gpusched.client.intercept")

META_CACHE = 1 << 16


class UnsupportedOp(GpuschedError, ValueError):
    """An op (or an argument of it) that the daemon cannot run; nothing was sent."""


class InterceptError(RequestError):
    """An intercepted op failed in the daemon; raised at the next sync point."""


class RemoteTensor(torch.Tensor):
    """A tensor that lives in the daemon. Metadata is local; data is fetched on demand."""

    @staticmethod
    def __new__(cls, sess: "EagerSession", hid: int, shape, stride, offset: int, dtype):
        r = torch.Tensor._make_wrapper_subclass(cls, shape, strides=stride,
                                                storage_offset=offset, dtype=dtype,
                                                device="cpu", requires_grad=False)
        r._gs_sess = sess
        r._gs_hid = hid
        weakref.finalize(r, sess.free, hid)
        return r

    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        sess = _session_of(args, kwargs)
        return sess.dispatch(func, args, kwargs or {})

    def cpu(self, *_, **__):
        """A local CPU tensor with this tensor's values (a sync point)."""
        return self._gs_sess.fetch(self)

    def numpy(self, *_, **__):
        return self.cpu().numpy()

    def tolist(self):
        return self.cpu().tolist()

    def __array__(self, dtype=None, copy=None):
        a = self.numpy()
        return a if dtype is None else a.astype(dtype)

    def __repr__(self, *_, **__):
        return repr(self.cpu())

    def __format__(self, spec):
        return format(self.cpu(), spec) if self.dim() == 0 else repr(self)

    def __reduce_ex__(self, proto):
        raise TypeError("a RemoteTensor lives in the gpusched daemon: call .cpu() first")


def _session_of(args, kwargs) -> "EagerSession":
    for a in list(args) + list((kwargs or {}).values()):
        if isinstance(a, RemoteTensor):
            return a._gs_sess
        if isinstance(a, (list, tuple)):
            for b in a:
                if isinstance(b, RemoteTensor):
                    return b._gs_sess
    raise RuntimeError("no RemoteTensor among the arguments")


class _OpInfo:
    """What the client needs to know of an aten overload, computed once: the daemon's own rules
    (wire/ops.py) applied to torch's schema, so a refused op fails here before anything is
    sent."""
    __slots__ = ("name", "sync", "writes", "returns", "refused", "facts")

    def __init__(self, func):
        self.facts = facts = Facts(func)
        self.name = facts.full_name
        self.returns = facts.return_types
        self.refused = facts.refusal()
        self.sync = facts.sync
        self.writes = [(i, a.name) for i, a in enumerate(func._schema.arguments)
                       if a.alias_info is not None and a.alias_info.is_write]


class EagerSession:
    """One client's intercepted tensors and its batch of ops not yet sent."""

    def __init__(self, client, batch: int = 64):
        self.client = client
        self.batch = batch
        self.slo_ms = 0.0
        self.priority = 0
        self.lock = threading.RLock()
        self._next = 1
        self._seq = 0
        self._ops: list[EagerOp] = []
        self._uploads: list[Upload] = []
        self._frames: list = []
        self._free: list[tuple[int, int]] = []   # (handle, ops queued when it was freed)
        self._up: dict[int, tuple] = {}      # id(local tensor) -> (weakref, version, handle)
        self._meta: dict = {}                # op signature -> output spec
        self._info: dict = {}                # OpOverload -> _OpInfo
        self.checked = False
        self.gen_start = False   # the next batch sent starts a generation (generate.py)
        self.token = 0           # the next batch sent ends a token: 1 the first, 2 a later one
        self.ops_sent = 0
        self.syncs = 0
        self.uploaded_bytes = 0

    # -- handles --------------------------------------------------------------------------
    def _hid(self) -> int:
        h = self._next
        self._next += 1
        return h

    def free(self, hid: int) -> None:
        """Called when a RemoteTensor is garbage-collected (any thread): released in order,
        before the next op queued after this moment runs (so a long batch, a whole token step,
        holds no more than the model does locally)."""
        self._free.append((hid, len(self._ops)))

    def reset(self) -> None:
        """The daemon restarted: every remote tensor is gone; upload weights again."""
        with self.lock:
            self._ops, self._uploads, self._frames, self._free = [], [], [], []
            self._up.clear()
            self.checked = False

    # -- ops ------------------------------------------------------------------------------
    def dispatch(self, func, args, kwargs):
        info = self._info.get(func)
        if info is None:
            info = self._info[func] = _OpInfo(func)
        if info.refused is not None:
            raise UnsupportedOp(f"operator {info.name} is refused by the gpusched daemon: "
                                f"{info.refused}; nothing was run. Run it outside "
                                "client.intercept()")
        if info.facts.seeded and not info.facts.randomness_off(args, kwargs):
            raise UnsupportedOp(f"operator {info.name} draws random numbers, and the daemon's "
                                "generator is not this process's: make the random tensor "
                                "outside client.intercept() and pass it in, or switch the "
                                "randomness off (model.eval())")
        with self.lock:
            if info.sync:
                return self._sync_op(func, info, args, kwargs)
            spec = self._spec(func, args, kwargs)
            if spec is None:                   # no meta kernel / data-dependent shape
                return self._sync_op(func, info, args, kwargs)
            eargs = [self._enc(a) for a in args]
            ekw = {k: self._enc(v) for k, v in kwargs.items()}
            outs: list[int] = []
            result = self._build(spec, args, kwargs, outs)
            self._ops.append(EagerOp(info.name, eargs, ekw, outs))
            if info.writes:
                self._write_back(info, args, kwargs)
            elif len(self._ops) >= self.batch:
                self.flush()
            return result

    def _spec(self, func, args, kwargs):
        """Output spec from the meta kernel, cached per signature; None: ask the daemon."""
        try:
            key = (func, _sig(args), _sig(kwargs))
            hash(key)
        except TypeError:
            key = None
        spec = self._meta.get(key) if key is not None else None
        if spec is not None:
            return spec
        ids: dict[int, tuple] = {}
        try:
            margs = [_to_meta(a, ids, ("a", i)) for i, a in enumerate(args)]
            mkw = {k: _to_meta(v, ids, ("k", k)) for k, v in kwargs.items()}
            out = func(*margs, **mkw)
        except (NotImplementedError, RuntimeError, TypeError) as e:
            log.debug("intercept: %s has no usable meta kernel (%s): asking the daemon", func, e)
            return None
        spec = _out_spec(out, ids)
        if key is not None:
            if len(self._meta) >= META_CACHE:
                self._meta.clear()
            self._meta[key] = spec
        return spec

    def _build(self, spec, args, kwargs, outs: list):
        kind = spec[0]
        if kind == "t":
            h = self._hid()
            outs.append(h)
            return RemoteTensor(self, h, spec[1], spec[2], spec[3], spec[4])
        if kind == "a":
            src = args[spec[1]] if spec[1] is not None else None
            outs.append(0)
            return src
        if kind == "k":
            outs.append(0)
            return kwargs[spec[1]]
        if kind == "seq":
            items = [self._build(s, args, kwargs, outs) for s in spec[2]]
            return tuple(items) if spec[1] == "tuple" else items
        return spec[1]                            # a constant output (None)

    def _enc(self, a):
        if isinstance(a, RemoteTensor):
            if a._gs_sess is not self:
                raise UnsupportedOp("a RemoteTensor of another client was passed to this one")
            return H(a._gs_hid)
        if isinstance(a, torch.Tensor):
            return H(self._upload(a))
        if a is None or isinstance(a, (bool, int, float)):
            return C(a)
        if isinstance(a, str):
            return S(a)
        if isinstance(a, (list, tuple)):
            return EL([self._enc(b) for b in a])
        if isinstance(a, torch.dtype):
            return D(str(a).removeprefix("torch."))
        if isinstance(a, torch.device):
            return K("device", "cpu")
        if isinstance(a, torch.layout):
            return K("layout", str(a).removeprefix("torch."))
        if isinstance(a, torch.memory_format):
            return K("memory_format", str(a).removeprefix("torch."))
        raise UnsupportedOp(f"an argument of type {type(a).__name__} cannot be sent to the daemon")

    def _upload(self, t: torch.Tensor) -> int:
        ent = self._up.get(id(t))
        if ent is not None:
            ref, ver, hid = ent
            if ref() is t and t._version == ver:
                return hid
            self.free(hid)                      # a stale copy: the tensor changed
        name = str(t.dtype).removeprefix("torch.")
        if name not in DTYPES:
            raise UnsupportedOp(f"a tensor of dtype {name} cannot be sent to the daemon; "
                                f"use one of {', '.join(DTYPES)}")
        src = t.detach()
        if src.device.type != "cpu":
            src = src.cpu()
        shape, stride = list(src.shape), list(src.stride())
        span = 1 + sum((n - 1) * s for n, s in zip(shape, stride)) if src.numel() else 0
        # the storage span the tensor views, copied now: a later change must not leak into it
        flat = src.as_strided((span,), (1,), src.storage_offset()).clone()
        buf = memoryview(flat.numpy()).cast("B") if span else memoryview(b"")
        step = max(1, self.client.welcome.limits.max_frame_bytes)
        parts = [buf[i:i + step] for i in range(0, len(buf), step)] or [buf]
        hid = self._hid()
        self._uploads.append(Upload(hid, TensorLayout(name, shape, stride, 0), len(buf),
                                    len(parts)))
        self._frames.extend(parts)
        self.uploaded_bytes += len(buf)
        key = id(t)

        def dead(_ref, key=key, hid=hid):
            ent = self._up.get(key)
            if ent is not None and ent[2] == hid:
                del self._up[key]
            self.free(hid)
        self._up[key] = (weakref.ref(t, dead), t._version, hid)
        return hid

    def _write_back(self, info: _OpInfo, args, kwargs) -> None:
        """An op wrote into a local tensor: run it now and copy the result back into it."""
        for i, name in info.writes:
            t = args[i] if i < len(args) else kwargs.get(name)
            if isinstance(t, torch.Tensor) and not isinstance(t, RemoteTensor):
                hid = self._up[id(t)][2]
                value = self.fetch_handle(hid)
                with torch.no_grad():
                    t.copy_(value)              # outside any mode: a plain local copy
                self._up[id(t)] = (self._up[id(t)][0], t._version, hid)

    def _sync_op(self, func, info: _OpInfo, args, kwargs):
        eargs = [self._enc(a) for a in args]
        ekw = {k: self._enc(v) for k, v in kwargs.items()}
        first = self._next
        reply, _ = self._sync(P.EagerSync(req_id=1, op=EagerOp(info.name, eargs, ekw, []),
                                          first_out=first))
        self._next = first + len(reply.outs)
        tensors = [RemoteTensor(self, first + j, lay.shape, lay.stride, lay.offset,
                                getattr(torch, lay.dtype)) for j, lay in enumerate(reply.outs)]
        values = list(reply.values)
        res = []
        for r in info.returns:
            if r == "List[Tensor]":
                res.append(tensors)
                tensors = []
            elif r.startswith("Tensor"):
                res.append(tensors.pop(0) if tensors else None)
            else:
                res.append(values.pop(0) if values else None)
        return res[0] if len(res) == 1 else tuple(res)

    # -- sending ---------------------------------------------------------------------------
    def flush(self) -> None:
        """Send the ops not yet sent (they run in the daemon in order)."""
        with self.lock:
            if not (self._ops or self._uploads or self._free or self.token or self.gen_start):
                return
            freed, self._free = self._free, []
            n = len(self._ops)
            free = [h for h, _ in freed]
            at = [min(p, n) for _, p in freed]
            self._seq += 1
            msg = P.EagerOps(seq=self._seq, ops=self._ops, uploads=self._uploads, free=free,
                             free_at=at if any(p < n for p in at) else [],
                             slo_ms=self.slo_ms, priority=self.priority,
                             gen_start=self.gen_start, token=self.token)
            self.gen_start, self.token = False, 0
            frames = self._frames
            self.ops_sent += len(self._ops)
            self._ops, self._uploads, self._frames = [], [], []
            self.client._send_raw(P.encode(msg) + frames)

    def _sync(self, msg: P.EagerSync):
        self.flush()
        self.syncs += 1
        try:
            return self.client._call("eager", msg, timeout=None)
        except RequestError as e:
            raise InterceptError(e.code, e.message) from None

    def fetch_handle(self, hid: int) -> torch.Tensor:
        reply, frames = self._sync(P.EagerSync(req_id=1, fetch=[hid]))
        meta = reply.fetched[0]
        arr = from_frame(meta, frames[0].buffer if hasattr(frames[0], "buffer") else frames[0])
        with _disable_current_modes():   # a local tensor, even inside client.intercept()
            return torch.from_numpy(arr.copy())

    def fetch(self, t: RemoteTensor) -> torch.Tensor:
        with self.lock:
            return self.fetch_handle(t._gs_hid)

    def synchronize(self) -> None:
        """Wait until every op sent so far has run; raises the first error among them."""
        with self.lock:
            self._sync(P.EagerSync(req_id=1))
            self.checked = True


class InterceptMode(TorchDispatchMode):
    def __init__(self, sess: EagerSession):
        super().__init__()
        self.sess = sess

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return self.sess.dispatch(func, args, kwargs or {})


@contextmanager
def intercept(sess: EagerSession, slo_ms: float = 0.0, priority: int = 0):
    """Every aten op inside goes to the daemon (inference: gradients are off inside)."""
    if not sess.checked:
        sess.synchronize()      # fails at once on a daemon that cannot run torch ops
    old = sess.slo_ms, sess.priority
    sess.slo_ms, sess.priority = slo_ms, priority
    try:
        with torch.no_grad(), InterceptMode(sess):
            yield sess
        sess.flush()            # the last batch carries this block's SLO (and token mark)
    finally:
        sess.slo_ms, sess.priority = old


# -- signatures and meta inference ---------------------------------------------------------
def _sig(a):
    if isinstance(a, torch.Tensor):
        return ("T", tuple(a.shape), a.stride(), a.storage_offset(), a.dtype)
    if isinstance(a, (list, tuple)):
        return tuple(_sig(b) for b in a)
    if isinstance(a, dict):
        return tuple((k, _sig(v)) for k, v in a.items())
    if isinstance(a, float):
        return ("f", a)          # 1 and 1.0 pick different overload behaviour
    return a


def _to_meta(a, ids: dict, path):
    if isinstance(a, torch.Tensor):
        shape, stride = tuple(a.shape), a.stride()
        span = 1 + sum((n - 1) * s for n, s in zip(shape, stride)) if a.numel() else 0
        m = torch.empty((a.storage_offset() + span,), dtype=a.dtype, device="meta").as_strided(
            shape, stride, a.storage_offset())
        ids[id(m)] = path
        return m
    if isinstance(a, torch.device):
        return torch.device("meta")
    if isinstance(a, (list, tuple)):
        return type(a)(_to_meta(b, ids, None) for b in a)
    return a


def _out_spec(out, ids: dict):
    if isinstance(out, torch.Tensor):
        path = ids.get(id(out))
        if path is not None:        # in-place / out=: the result is that argument
            return path
        return ("t", tuple(out.shape), out.stride(), out.storage_offset(), out.dtype)
    if isinstance(out, (list, tuple)):
        return ("seq", "tuple" if isinstance(out, tuple) else "list",
                [_out_spec(o, ids) for o in out])
    if out is None:
        return ("c", None)
    raise TypeError(f"unexpected output {type(out).__name__}")
