"""REGISTER, REGISTER_GRAPH and REGISTER_CUDA: a tenant's model becomes schedulable kernels.

The three kinds share their checks (the tenant's model count, kernel count, raw frames that
match their declared tensors, bytes within the tenant's quota) and their ending: the core makes
the model entry and the client gets REGISTERED.
"""
from __future__ import annotations

import logging

import msgspec

from scheduler_daemon.devices.base import Unsupported
from scheduler_daemon.devices.op_policy import check_kernel_ops
from scheduler_daemon.server.sessions import Session
from scheduler_daemon.wire import protocol as P
from scheduler_daemon.wire.protocol import Code, ProtocolError

log = logging.getLogger("gpusched.daemon")


def register_kernels(server, s: Session, msg: P.Register, raw: list) -> None:
    _check_slot(server, s, msg.model)
    _check_kernel_count(server, msg.model, len(msg.kernels), "kernels")
    try:
        check_kernel_ops(msg.kernels)   # the op policy: the same ops on every backend
        server.device.validate(msg.kernels)
    except ValueError as e:
        raise ProtocolError(Code.BAD_MODEL, f"model {msg.model!r}: {e}") from None
    # a graph or CUDA module loaded under this name before is no longer wanted (loads of a
    # graph or module replace the earlier one of the same name themselves)
    server.device.forget((s.tenant.name, msg.model))
    s.tenant.ledger.refund(("model", msg.model))
    _install(server, s, msg, msg.kernels, "kernels")


def register_graph(server, s: Session, msg: P.RegisterGraph, raw: list) -> None:
    """A captured torch model: each of its ops becomes one schedulable kernel."""
    if not server.device.caps.graphs:
        raise ProtocolError(Code.BAD_MODEL, str(Unsupported(
            f"backend {server.device.name!r} cannot run registered torch models: start the "
            "daemon with --backend torch")))
    _check_slot(server, s, msg.model)
    shared = None
    if msg.shares:
        if msg.shares == msg.model or msg.shares not in s.tenant.models:
            raise ProtocolError(Code.BAD_MODEL, f"model {msg.model!r} shares the weights of "
                                f"model {msg.shares!r}, which this tenant has not registered "
                                "(or is itself): register that model first")
        shared = ((s.tenant.name, msg.shares), list(msg.reuse))
    elif msg.reuse:
        raise ProtocolError(Code.BAD_INPUT, f"model {msg.model!r}: 'reuse' needs 'shares' (the "
                            "model whose weights are reused)")
    counts = msg.weight_frames or [1] * len(msg.weights)
    if len(counts) != len(msg.weights):
        raise ProtocolError(Code.BAD_INPUT, f"{len(msg.weights)} weights but "
                            f"{len(counts)} frame counts")
    bufs = tensors_from_frames(msg.weights, counts, raw, "weight")
    total = sum(len(b) for b in bufs)
    _check_quota(server, s, msg.model, total, "its weights take",
                 replaces=s.tenant.ledger.charged(("model", msg.model)))
    try:
        kernels = server.device.load_graph((s.tenant.name, msg.model), msg.graph,
                                           list(zip(msg.weights, bufs)), s.tenant.ledger,
                                           shared=shared)
    except (ValueError, TypeError, msgspec.ValidationError, msgspec.DecodeError) as e:
        raise ProtocolError(Code.BAD_MODEL, f"model {msg.model!r}: {e}") from None
    _check_kernel_count(server, msg.model, len(kernels), "ops")
    s.tenant.ledger.charge(("model", msg.model), total)   # the weights live while it does
    _install(server, s, msg, kernels, f"ops weight_bytes={total}")
    if msg.shares:
        s.tenant.variants.setdefault(msg.shares, set()).add(msg.model)


def register_cuda(server, s: Session, msg: P.RegisterCuda, raw: list) -> None:
    """Raw CUDA kernels: compiled (in the sandbox, off the loop) and checked on every backend,
    so a compile error or an impossible launch shape comes back here too; launched only by
    --backend cuda. The answer comes from ``cuda_compiled`` when the compile ends."""
    _check_cuda(server, s, msg)
    if s.tenant.compiling:
        raise ProtocolError(Code.LIMIT, f"tenant {s.tenant.name!r} has a CUDA compile running: "
                            "wait for its answer before registering the next CUDA model")
    server.compiler.submit((s, msg), msg.cuda, server.device.compile_target())
    s.tenant.compiling = True   # after submit: a submit that raises must not lock the tenant out


def cuda_compiled(server, tag: tuple, compiled, error: BaseException | None) -> None:
    """A REGISTER_CUDA's compile ended: load the module and answer the client (if its session
    still lives: the answer of an ended session goes nowhere)."""
    from scheduler_daemon.cuda import CudaUnavailable
    from scheduler_daemon.cuda.checks import kernel_specs, validate_model
    from scheduler_daemon.cuda.limits import limits_for_spec
    s, msg = tag
    s.tenant.compiling = False
    if server.sessions.get(s.identity) is not s:
        return
    try:
        if error is not None:
            raise error
        _check_cuda(server, s, msg)           # the tenant may have filled its slots meanwhile
        if not server.device.caps.cuda:
            validate_model(msg.cuda, compiled, limits_for_spec(server.device.spec))
            raise ProtocolError(Code.BAD_MODEL, f"model {msg.model!r} compiled "
                                f"({len(kernel_specs(msg.cuda))} launches), but backend "
                                f"{server.device.name!r} cannot launch CUDA kernels: start "
                                "the daemon with --backend cuda on a GPU node")
        kernels = server.device.load_cuda((s.tenant.name, msg.model), msg.cuda, compiled)
        s.tenant.ledger.refund(("model", msg.model))
        _install(server, s, msg, kernels, "launches")
    except ProtocolError as e:
        server.error(s.identity, msg.req_id, e.code, e.message)
    except CudaUnavailable as e:
        server.error(s.identity, msg.req_id, Code.BAD_MODEL, str(e))
    except ValueError as e:          # CudaCompileError (with the log) included
        server.error(s.identity, msg.req_id, Code.BAD_MODEL, f"model {msg.model!r}: {e}")
    except Exception as e:           # still one answer per request
        log.exception("daemon: internal error loading a CUDA model")
        server.error(s.identity, msg.req_id, Code.INTERNAL,
                     f"internal error ({type(e).__name__}); the daemon logged it")


def _check_cuda(server, s: Session, msg: P.RegisterCuda) -> None:
    _check_slot(server, s, msg.model)
    _check_kernel_count(server, msg.model, len(msg.cuda.launches), "launches")
    _check_quota(server, s, msg.model, sum(b.nbytes() for b in msg.cuda.buffers),
                 "one job's buffers take")


def tensors_from_frames(metas: list, counts: list[int], raw: list, what: str) -> list:
    """Raw frames -> one buffer per declared tensor (a tensor over the frame limit spans
    ``counts[i]`` frames); ProtocolError when sizes or counts disagree."""
    if sum(counts) != len(raw):
        raise ProtocolError(Code.BAD_INPUT, f"{len(metas)} {what}s in {sum(counts)} declared "
                            f"frames but {len(raw)} raw frames sent")
    bufs, at = [], 0
    for i, (meta, n) in enumerate(zip(metas, counts)):
        parts = raw[at:at + n]
        at += n
        try:
            want = meta.nbytes()
        except ValueError as e:
            raise ProtocolError(Code.BAD_INPUT, f"{what} {i}: {e}") from None
        got = sum(len(f) for f in parts)
        if want != got:
            raise ProtocolError(Code.BAD_INPUT, f"{what} {i}: {meta.dtype}{meta.shape} needs "
                                f"{want} bytes, its frames have {got}")
        bufs.append(buffer_of(parts[0]) if n == 1 else b"".join(buffer_of(f) for f in parts))
    return bufs


def buffer_of(frame):
    """A received frame's bytes without a copy (zmq.Frame), or as they are (bytes, in tests)."""
    return getattr(frame, "buffer", frame)


def _check_slot(server, s: Session, model: str) -> None:
    tenant, lim = s.tenant, server.limits
    if model not in tenant.models and len(tenant.models) >= lim.max_models:
        raise ProtocolError(Code.LIMIT, f"tenant {tenant.name!r} already has "
                            f"{len(tenant.models)} models (limit {lim.max_models})")


def _check_kernel_count(server, model: str, n: int, what: str) -> None:
    if n > server.limits.max_kernels:
        raise ProtocolError(Code.TOO_LARGE, f"model {model!r} has {n} {what}; the limit is "
                            f"{server.limits.max_kernels}")


def _check_quota(server, s: Session, model: str, nbytes: int, what: str,
                 replaces: int = 0) -> None:
    """``nbytes`` must fit the tenant's room (plus what the model being replaced frees)."""
    ledger = s.tenant.ledger
    if nbytes > ledger.room() + replaces:
        raise ProtocolError(Code.TOO_LARGE, f"model {model!r}: {what} {nbytes} bytes; tenant "
                            f"{s.tenant.name!r} holds {ledger.used} of its quota of "
                            f"{ledger.quota} bytes: free some, or raise --max-tenant-bytes")


def _drop_variants(server, s: Session, model: str) -> None:
    """``model`` was registered again: the graphs that shared its old weights (the same model
    at other input shapes) go with them, and nothing names it as a sharer any more."""
    tenant = s.tenant
    for group in tenant.variants.values():
        group.discard(model)
    for v in sorted(tenant.variants.pop(model, ())):
        if tenant.models.pop(v, None) is not None:
            server.device.forget((tenant.name, v))
            tenant.ledger.refund(("model", v))
            log.info("daemon: dropped tenant=%s model=%s (it shared the weights of %s, "
                     "registered again)", tenant.name, v, model)
        _drop_variants(server, s, v)


def _install(server, s: Session, msg, kernels: list, what: str) -> None:
    tenant, key = s.tenant, (s.tenant.name, msg.model)
    _drop_variants(server, s, msg.model)
    tenant.models[msg.model] = server.core.make_model(key, msg.model, kernels)
    log.info("daemon: registered tenant=%s model=%s %d %s", tenant.name, msg.model,
             len(kernels), what)
    server.reply(s.identity, P.Registered(req_id=msg.req_id, model=msg.model,
                                          kernels=len(kernels)))
