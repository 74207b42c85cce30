"""The intercept path in the daemon: each client's stream of eager aten ops.

A client's ``EAGER_OPS`` batches run in order, one batch at a time in the scheduler core as one
job whose kernels are its ops, so other tenants' kernels interleave at op boundaries under the
daemon's policy. The tensors live here, in one table per client session, named by the client's
handles; ``EAGER_SYNC`` is answered once every earlier batch has run (CUDA semantics: launches
return at once, errors and values come back at the next sync point).

Every tensor in a table is counted in its tenant's ``Ledger`` by the storage it lives in, as
each op runs (not after the batch): an op whose outputs would pass the tenant's room, or whose
work would pass the daemon's bound per op, is refused before it allocates (``OpGuard``).
"""
from __future__ import annotations

import logging
import math
from collections import OrderedDict, deque

from scheduler_daemon.core.jobs import Job, JobState
from scheduler_daemon.core.ledger import Ledger, storage_key
from scheduler_daemon.devices.graph_exec import _const, _dtype
from scheduler_daemon.devices.op_guard import OpGuard, TooLarge
from scheduler_daemon.devices.op_policy import OpRefused, resolve
from scheduler_daemon.server.registration import buffer_of
from scheduler_daemon.wire import protocol as P
from scheduler_daemon.wire.eager import EL, EagerOp, H, S, TensorLayout
from scheduler_daemon.wire.graph import C, D
from scheduler_daemon.wire.kernels import KernelSpec
from scheduler_daemon.wire.protocol import Code, ProtocolError
from scheduler_daemon.wire.tensors import DTYPES, TensorMeta

log = logging.getLogger("gpusched.eager")

# learned per-op durations are kept per distinct op sequence (a model's forward repeats them)
MODEL_CACHE = 256


class EagerState:
    """One client's intercepted tensors and its queue of batches and syncs."""

    __slots__ = ("table", "known", "queue", "running", "error", "dead", "ledger", "gen_t0",
                 "last_token")

    def __init__(self, ledger: Ledger):
        self.table: dict = {}            # handle -> tensor on the daemon's device
        self.known: set[int] = set()     # handles that exist once the queued batches have run
        self.queue: deque = deque()      # Jobs and pure syncs, in arrival order
        self.running: Job | None = None  # the one batch of this client in the core
        self.error: tuple[str, str] | None = None  # reported at the next sync
        self.dead = False
        self.ledger = ledger             # the tenant's, shared with its other connections
        self.gen_t0: float | None = None      # arrival of the generation's first batch
        self.last_token: float | None = None  # when its latest token's batch had run

    def put(self, h: int, t) -> None:
        """Keep ``t`` as handle ``h``, counted by its storage."""
        if self.dead:           # the session ended while its batch ran: nothing to keep
            return
        old = self.table.get(h)
        self.table[h] = t
        self.ledger.hold(*storage_key(t))
        if old is not None:
            self.ledger.release(storage_key(old)[0])

    def pop(self, h: int) -> None:
        t = self.table.pop(h, None)
        if t is not None:
            self.ledger.release(storage_key(t)[0])

    def clear(self) -> None:
        for h in list(self.table):
            self.pop(h)


class _Owner:
    """``Job.owner`` of an eager batch: the daemon answers it through ``EagerStreams``."""
    __slots__ = ("session", "state")

    def __init__(self, session, state):
        self.session, self.state = session, state


class _Sync:
    __slots__ = ("req_id", "fetch")

    def __init__(self, req_id, fetch):
        self.req_id, self.fetch = req_id, fetch


class _Token:
    """A token mark that came with no ops: the token is counted when the stream reaches it."""
    __slots__ = ("kind", "slo_ms")

    def __init__(self, kind: int, slo_ms: float):
        self.kind, self.slo_ms = kind, slo_ms


class EagerWork:
    """A batch's payload: its ops resolved, run one per kernel against the client's table."""

    __slots__ = ("state", "ops", "fns", "free", "seq", "device", "reply", "first_out", "values",
                 "created", "fetch", "guard", "token", "slo_ms", "free_at")

    def __init__(self, state, ops, fns, free, seq, device, guard):
        self.state, self.ops, self.fns, self.free, self.seq = state, ops, fns, free, seq
        self.device, self.guard = device, guard
        self.reply = 0          # req_id of the EAGER_SYNC this batch answers (a sync op)
        self.first_out = 0
        self.values: list = []
        self.created: list[int] = []
        self.fetch: list[int] = []
        self.token = 0          # ends a generation's token: 1 the first, 2 a later one
        self.slo_ms = 0.0
        self.free_at: dict[int, list[int]] = {}   # op index -> handles released before it

    def kernel(self, i: int):
        """Op ``i`` as the torch device's kernel callable (payload -> payload)."""
        def run(work):
            import torch
            with torch.no_grad():
                work._run(i)
            return work
        return run

    def _arg(self, a):
        t = type(a)
        if t is H:
            try:
                return self.state.table[a.id]
            except KeyError:
                raise ValueError(f"tensor handle {a.id} does not exist (freed, or made by an "
                                 "op that failed)") from None
        if t is C or t is S:
            return a.value
        if t is EL:
            return [self._arg(b) for b in a.items]
        if t is D:
            return _dtype(a.name)
        return _const(a, self.device)

    def _run(self, i: int) -> None:
        import torch
        node, op, st = self.ops[i], self.fns[i], self.state
        for h in self.free_at.pop(i, ()):
            st.pop(h)    # dropped by the client before this op was queued (again at the end)
        args = [self._arg(a) for a in node.args]
        kwargs = {k: self._arg(v) for k, v in node.kwargs.items()}
        self.guard.check(op, args, kwargs, st.ledger.room())
        regrown = _storage_sharers(st, args[0]) if op.facts.name.startswith("resize") else []
        for h in regrown:   # a resize can move the storage: count it again afterwards
            st.ledger.release(storage_key(st.table[h])[0])
        out = op(*args, **kwargs)
        for h in regrown:
            st.ledger.hold(*storage_key(st.table[h]))
        flat = _flatten(out)
        made: list[int] = []
        if self.reply:   # a sync op: its tensor outputs are numbered from first_out
            h = self.first_out
            for o in flat:
                if isinstance(o, torch.Tensor):
                    if not h:
                        raise ValueError(f"{node.op} gave a tensor; the sync named no handle")
                    st.put(h, o)
                    made.append(h)
                    h += 1
                else:
                    self.values.append(o)
        else:
            tensors = [o for o in flat if isinstance(o, torch.Tensor)]
            if len(flat) == len(node.outs):
                # by position: an output the kernel leaves undefined (None; its meta kernel
                # said a tensor) is never made, and naming its handle later fails clearly
                tensors = flat
            elif len(tensors) != len(node.outs):
                raise ValueError(f"{node.op} gave {len(tensors)} tensors, the client expected "
                                 f"{len(node.outs)}")
            for h, o in zip(node.outs, tensors):
                if h and isinstance(o, torch.Tensor):
                    st.put(h, o)
                    made.append(h)
        self.created += made
        if st.ledger.room() < 0:   # only a data-dependent op can get here: undo it, refuse
            for h in made:
                st.pop(h)
            raise TooLarge(f"{node.op} allocated past the tenant's quota of {st.ledger.quota} "
                           "bytes (--max-tenant-bytes): its outputs were dropped")


def _storage_sharers(st: EagerState, t) -> list[int]:
    key = storage_key(t)[0]
    return [h for h, x in st.table.items() if storage_key(x)[0] == key]


def _flatten(out) -> list:
    if isinstance(out, (tuple, list)):
        res = []
        for o in out:
            res.extend(_flatten(o))
        return res
    return [out]


def _handles(a, acc: list) -> None:
    t = type(a)
    if t is H:
        acc.append(a.id)
    elif t is EL:
        for b in a.items:
            _handles(b, acc)


def layout_of(t) -> TensorLayout:
    return TensorLayout(dtype=str(t.dtype).removeprefix("torch."), shape=list(t.shape),
                        stride=list(t.stride()), offset=t.storage_offset())


class EagerStreams:
    """The server's handlers for EAGER_OPS / EAGER_SYNC and the bookkeeping of their jobs."""

    def __init__(self, server, max_op_work: float = float("inf")):
        self.d = server
        self._models: OrderedDict = OrderedDict()
        self.guard = OpGuard(max_op_work)

    # -- requests -----------------------------------------------------------------------------
    def _state(self, s) -> EagerState:
        if not self.d.device.caps.eager:
            raise ProtocolError(Code.BAD_MODEL, f"backend {self.d.device.name!r} cannot run "
                                "intercepted torch ops: start the daemon with --backend torch")
        if s.eager is None:
            s.eager = EagerState(s.tenant.ledger)
        return s.eager

    def on_ops(self, s, msg: P.EagerOps, raw: list) -> None:
        st = self._state(s)
        if msg.gen_start:
            st.gen_t0, st.last_token = self.d.env.now, None
        if self.d.draining:
            st.error = st.error or (Code.DRAINING, "the daemon is shutting down and runs no "
                                    "new ops")
        try:
            if st.error is not None:    # poisoned until the next sync reports it
                self._queue_free_only(st, msg.free)
                return
            try:
                if msg.free_at and len(msg.free_at) != len(msg.free):
                    raise ProtocolError(Code.BAD_INPUT, f"{len(msg.free)} handles to free but "
                                        f"{len(msg.free_at)} positions")
                self._uploads(s, st, msg, raw)
                fns = [self._check_op(st, i, op) for i, op in enumerate(msg.ops)]
            except ProtocolError as e:
                st.error = (e.code, f"EAGER_OPS seq {msg.seq}: {e.message}")
                self._queue_free_only(st, msg.free)
                return
        finally:   # freed after this batch's ops, which may still name them
            for h in msg.free:
                st.known.discard(h)
        if not msg.ops:
            self._queue_free_only(st, msg.free)
            if msg.token:
                st.queue.append(_Token(msg.token, msg.slo_ms))
                self._start_next(s, st)
            return
        work = EagerWork(st, msg.ops, fns, list(msg.free), msg.seq, self.d.device.device,
                         self.guard)
        work.token, work.slo_ms = msg.token, msg.slo_ms
        for h, at in zip(msg.free, msg.free_at):
            if at < len(msg.ops):
                work.free_at.setdefault(at, []).append(h)
        self._enqueue(s, st, self._job(s, st, work, msg.slo_ms, msg.priority))

    def on_sync(self, s, msg: P.EagerSync, raw: list) -> None:
        st = self._state(s)
        if msg.op is None:
            st.queue.append(_Sync(msg.req_id, list(msg.fetch)))
            self._start_next(s, st)
            return
        if st.error is not None:
            st.queue.append(_Sync(msg.req_id, []))   # answered with the error, in order
            self._start_next(s, st)
            return
        try:
            fn = self._check_op(st, 0, msg.op, sync=True)
        except ProtocolError as e:
            st.error = (e.code, e.message)
            st.queue.append(_Sync(msg.req_id, []))
            self._start_next(s, st)
            return
        work = EagerWork(st, [msg.op], [fn], [], 0, self.d.device.device, self.guard)
        work.reply, work.first_out, work.fetch = msg.req_id, msg.first_out, list(msg.fetch)
        self._enqueue(s, st, self._job(s, st, work, 0.0, 0))

    def _queue_free_only(self, st: EagerState, free: list) -> None:
        if free:   # released in order, after what is queued
            st.queue.append(list(free))

    def _uploads(self, s, st: EagerState, msg: P.EagerOps, raw: list) -> None:
        want = sum(u.frames for u in msg.uploads)
        if want != len(raw):
            raise ProtocolError(Code.BAD_INPUT, f"{len(msg.uploads)} uploads declare {want} "
                                f"raw frames; {len(raw)} were sent")
        at = 0
        for u in msg.uploads:
            parts, at = raw[at:at + u.frames], at + u.frames
            lay = u.layout
            if lay.dtype not in DTYPES:
                raise ProtocolError(Code.BAD_INPUT, f"upload {u.id}: dtype {lay.dtype!r} cannot "
                                    f"be sent; use one of {', '.join(DTYPES)}")
            if len(lay.shape) != len(lay.stride):
                raise ProtocolError(Code.BAD_INPUT, f"upload {u.id}: {len(lay.shape)} sizes but "
                                    f"{len(lay.stride)} strides")
            span = (1 + lay.offset + sum((n - 1) * st_ for n, st_ in zip(lay.shape, lay.stride))
                    if all(lay.shape) else 0)
            if u.nbytes != span * DTYPES[lay.dtype] or sum(len(f) for f in parts) != u.nbytes:
                raise ProtocolError(Code.BAD_INPUT, f"upload {u.id}: layout {lay.shape}/"
                                    f"{lay.stride}+{lay.offset} needs {span * DTYPES[lay.dtype]} "
                                    f"bytes; {sum(len(f) for f in parts)} were sent")
            logical = math.prod(lay.shape)
            if logical > self.guard.max_work:   # a stride-0 view of a few bytes, 2**38 long
                raise ProtocolError(Code.TOO_LARGE, f"upload {u.id}: a view of {logical} "
                                    f"elements over {span} stored ones; the daemon's bound per "
                                    f"op is {self.guard.max_work:.3g}: send it materialised")
            if u.id in st.known:
                raise ProtocolError(Code.DUPLICATE, f"upload {u.id}: that handle is in use")
            if u.nbytes > st.ledger.room():
                raise ProtocolError(Code.TOO_LARGE, f"a tensor of {u.nbytes} bytes would take "
                                    f"tenant {s.tenant.name!r} past its quota of "
                                    f"{st.ledger.quota} bytes ({st.ledger.used} held): free "
                                    "tensors (del) or raise --max-tenant-bytes")
            buf = buffer_of(parts[0]) if len(parts) == 1 else b"".join(map(buffer_of, parts))
            st.put(u.id, self.d.device.tensor_from(lay, buf))
            st.known.add(u.id)

    def _check_op(self, st: EagerState, i: int, op: EagerOp, sync: bool = False):
        try:
            fn = resolve(op.op)
        except OpRefused as e:
            raise ProtocolError(Code.BAD_MODEL, f"op {i}: {e}") from None
        refs: list[int] = []
        for a in op.args:
            _handles(a, refs)
        for a in op.kwargs.values():
            _handles(a, refs)
        for h in refs:
            if h not in st.known:
                raise ProtocolError(Code.BAD_INPUT, f"op {i} ({op.op}) names tensor handle {h}, "
                                    "which this client does not have (freed, never made, or "
                                    "made by an op that failed)")
        if not sync:
            for h in op.outs:
                if h:
                    st.known.add(h)
        return fn

    def _job(self, s, st: EagerState, work: EagerWork, slo_ms: float, priority: int) -> Job:
        names = tuple(op.op for op in work.ops)
        key = (s.tenant.name, names)
        model = self._models.get(key)
        if model is None:
            model = self.d.core.make_model(("eager",) + key, "eager",
                                           [KernelSpec(name=n[:256], est_us=20.0) for n in names])
            self._models[key] = model
            if len(self._models) > MODEL_CACHE:
                self._models.popitem(last=False)
        else:
            self._models.move_to_end(key)
        return Job(self.d.new_job_id(), s.tenant.name, model, slo_ms,
                   self.d.env.now, priority, work, _Owner(s, st))

    def _enqueue(self, s, st: EagerState, job: Job) -> None:
        st.queue.append(job)
        self._start_next(s, st)

    def _start_next(self, s, st: EagerState) -> None:
        """Run what is at the head of the queue until a batch is in the core."""
        while st.running is None and st.queue and not st.dead:
            item = st.queue.popleft()
            if isinstance(item, Job):
                if st.error is not None or self.d.draining:
                    if st.error is None:
                        st.error = (Code.DRAINING, "the daemon is shutting down")
                    self._release(st, item.payload.free)
                    if item.payload.reply:
                        self._answer_error(s, st, item.payload.reply)
                    continue
                st.running = item
                self.d.core.add(item, self.d.env.now)
            elif isinstance(item, _Sync):
                self._answer(s, st, item.req_id, item.fetch)
            elif isinstance(item, _Token):
                if st.error is None:
                    self._token(s, st, item.kind, item.slo_ms)
            else:
                self._release(st, item)

    # -- jobs out -----------------------------------------------------------------------------
    def finished(self, job: Job) -> None:
        """A batch reached a terminal state (the server's ``_finish`` hands it here)."""
        owner, work = job.owner, job.payload
        s, st = owner.session, owner.state
        if st.dead:
            return
        st.running = None
        if job.state is not JobState.DONE and st.error is None:
            i = min(job.done_kernels, len(work.ops) - 1)
            what = (f"{work.ops[i].op} (op {i} of EAGER_OPS seq {work.seq})" if work.seq
                    else work.ops[0].op)
            err = job.error or job.state.value
            code = Code.OP_FAILED if job.state is JobState.FAILED else Code.DRAINING
            if err.startswith(("TooLarge:", "TooMuchWork:")):
                code = Code.TOO_LARGE
            elif err.startswith("OpRefused:"):
                code = Code.BAD_MODEL
            st.error = (code, f"{what}: {err}")
            log.info("eager: tenant=%s %s", s.tenant.name, st.error[1])
        self._release(st, work.free)
        if work.token and job.state is JobState.DONE and st.error is None:
            self._token(s, st, work.token, work.slo_ms)
        if work.reply:
            st.known.update(work.created)
            if st.error is not None:
                self._answer_error(s, st, work.reply)
            else:
                self._answer(s, st, work.reply, work.fetch,
                             [layout_of(st.table[h]) for h in work.created], work.values)
        work.ops = work.fns = None
        job.payload = None
        self._start_next(s, st)

    def _token(self, s, st: EagerState, kind: int, slo_ms: float) -> None:
        """A generation's token is made: time to first token (since the generation's first
        batch arrived) or time per output token (since the previous token)."""
        now = self.d.env.now
        first = kind == 1
        t0 = st.gen_t0 if first else st.last_token
        t0 = now if t0 is None else t0
        st.last_token = now
        ms = (now - t0) * 1e3
        missed = s.tenant.tokens.add(first, ms, slo_ms)
        self.d.metrics.token(s.tenant.name, first, ms / 1e3, missed)

    def _release(self, st: EagerState, handles) -> None:
        for h in handles:
            st.pop(h)

    def _answer_error(self, s, st: EagerState, req_id: int) -> None:
        code, message = st.error
        st.error = None
        self.d.error(s.identity, req_id, code, message)

    def _answer(self, s, st: EagerState, req_id: int, fetch: list, outs=(), values=()) -> None:
        if st.error is not None:
            self._answer_error(s, st, req_id)
            return
        metas, bufs = [], []
        for h in fetch:
            t = st.table.get(h)
            if t is None:
                self.d.error(s.identity, req_id, Code.BAD_INPUT, f"fetch: tensor handle {h} "
                             "does not exist (freed, or made by an op that failed)")
                return
            name = str(t.dtype).removeprefix("torch.")
            if name not in DTYPES:
                self.d.error(s.identity, req_id, Code.BAD_INPUT, f"fetch: dtype {name} cannot "
                             f"be sent; convert it first (.float())")
                return
            n = math.prod(t.shape) * t.element_size()
            if not t.is_contiguous() and n > st.ledger.room():
                # a view materialised for sending: a few stored bytes may view gigabytes
                self.d.error(s.identity, req_id, Code.TOO_LARGE, f"fetch: tensor handle {h} "
                             f"is a view of {n} bytes, more than the {st.ledger.room()} bytes "
                             "left in the tenant's quota: fetch a slice of it")
                return
            t = t.detach().contiguous().cpu()
            metas.append(TensorMeta(dtype=name, shape=list(t.shape)))
            bufs.append(t.numpy().reshape(-1).view("uint8").data if t.numel() else b"")
        try:
            vals = [_scalar(v) for v in values]
        except ValueError as e:
            self.d.error(s.identity, req_id, Code.OP_FAILED, str(e))
            return
        self.d.reply(s.identity, P.EagerResult(req_id=req_id, fetched=metas, outs=list(outs),
                                               values=vals), bufs)

    # -- sessions and draining ----------------------------------------------------------------
    def drop(self, s) -> None:
        st = s.eager
        if st is None:
            return
        st.dead = True
        if st.running is not None:
            self.d.core.abort(st.running, self.d.env.now)
        st.queue.clear()
        st.clear()

    def busy(self, sessions) -> bool:
        return any(s.eager is not None and (s.eager.running is not None or s.eager.queue)
                   for s in sessions)

    def abort_all(self, sessions, now: float) -> None:
        for s in sessions:
            st = s.eager
            if st is not None and st.running is not None and self.d.core.abort(st.running, now):
                st.running.error = "daemon stopped before the op finished"
                self.finished(st.running)


def _scalar(v):
    if v is None or isinstance(v, (bool, int, float)):
        return v
    if isinstance(v, complex):
        raise ValueError("a complex value cannot be sent: take .real and .imag (or .abs()) "
                         "before .item()")
    return float(v)
