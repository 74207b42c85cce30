"""What the sync and async clients share: building requests and turning replies into results."""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field

from client_lib.errors import JobCancelled, JobFailed, JobShed, RequestError
from client_lib.tensors import from_frame, to_frame
from scheduler_daemon.wire import protocol as P
from scheduler_daemon.wire.kernels import KernelSpec


@dataclass
class JobResult:
    """A finished job: the daemon's timings (ms) and the outputs as numpy arrays."""
    job_id: str
    queue_ms: float
    exec_ms: float
    total_ms: float
    slo_met: bool
    latency_ms: float  # measured by the client: submit to answer
    outputs: list = field(default_factory=list)


def kernel_specs(kernels) -> list[KernelSpec]:
    """Accept KernelSpec objects or dicts with the same fields."""
    out = []
    for i, k in enumerate(kernels):
        if isinstance(k, KernelSpec):
            out.append(k)
        elif isinstance(k, dict):
            try:
                out.append(KernelSpec(**k))
            except TypeError as e:
                raise ValueError(f"kernel {i}: {e}") from None
        else:
            raise TypeError(f"kernel {i}: expected KernelSpec or dict, got {type(k).__name__}")
    if not out:
        raise ValueError("a model needs at least one kernel")
    return out


def cuda_model(name: str, source: str, buffers, launches, ptx: str, options,
               instrument: bool):
    """The arguments of ``register_cuda`` -> a ``CudaModel`` (ValueError naming the mistake)."""
    import msgspec

    from scheduler_daemon.wire.cuda import CudaModel
    try:
        return msgspec.convert(msgspec.to_builtins(
            {"source": source, "ptx": ptx, "options": list(options), "instrument": instrument,
             "buffers": list(buffers), "launches": list(launches)}), CudaModel)
    except msgspec.ValidationError as e:
        raise ValueError(f"CUDA model {name!r}: {e}") from None


def admit_msg(replicas, replace: bool) -> P.Admit:
    """``(name, zoo model, batch, rate, slo_ms)`` tuples -> an ADMIT request."""
    return P.Admit(req_id=0, replicas=[P.AdmitReplica(n, m, int(b), float(r), float(slo))
                                       for n, m, b, r, slo in replicas], replace=replace)


def admitted(reply: P.Admitted) -> list[dict]:
    return [{"name": r.name, "predicted_slowdown": r.predicted_slowdown,
             "predicted_latency_ms": r.predicted_latency_ms} for r in reply.replicas]


def submit_frames(req_id: int, model: str, inputs, slo_ms: float, priority: int,
                  ack: bool, max_frame: int) -> list:
    metas, bufs = [], []
    for x in inputs:
        meta, buf = to_frame(x)
        if buf.nbytes > max_frame:
            raise ValueError(f"input {len(metas)} is {buf.nbytes} bytes; the daemon accepts "
                             f"frames up to {max_frame} bytes: split it or raise the daemon limit")
        metas.append(meta)
        bufs.append(buf)
    msg = P.Submit(req_id=req_id, model=model, slo_ms=slo_ms, priority=priority, inputs=metas,
                   ack=ack)
    return P.encode(msg) + bufs


def resolve_done(msg: P.Done, raw: list, t0: float, now: float | None = None):
    """DONE -> (result, None) or (None, exception); ``t0``/``now`` are perf_counter seconds
    (the request's send and this answer) for the client-measured latency."""
    if msg.status == "done":
        if len(raw) != len(msg.outputs):
            return None, RequestError("BAD_FRAME", "output frames do not match their headers")
        outs = [from_frame(m, f.buffer if hasattr(f, "buffer") else f)
                for m, f in zip(msg.outputs, raw)]
        return JobResult(msg.job_id, msg.queue_ms, msg.exec_ms, msg.total_ms, msg.slo_met,
                         ((time.perf_counter() if now is None else now) - t0) * 1e3, outs), None
    if msg.status == "cancelled":
        return None, JobCancelled(f"job {msg.job_id} was cancelled"
                                  + (f": {msg.error}" if msg.error else ""))
    if msg.status == "shed":
        return None, JobShed(f"job {msg.job_id} was shed: it could no longer meet its SLO")
    return None, JobFailed(f"job {msg.job_id} failed: {msg.error or msg.status}")


# a daemon that is alive answers HELLO well within this; only then is the endpoint probed
PROBE_AFTER_S = 0.2


def unreachable(endpoint: str, timeout: float = 0.5, connect: bool = True) -> str | None:
    """Why nothing can be listening at ``endpoint`` (no socket file, a stale one, a refused
    port), or None when something might be: a connect check, so a client without a daemon
    fails at once instead of after its whole timeout. The probe connection closes at once;
    ``connect=False`` only looks for the socket file."""
    try:
        if endpoint.startswith("ipc://"):
            path = endpoint[len("ipc://"):]
            addr = "\0" + path[1:] if path.startswith("@") else path
            if not path.startswith("@") and not os.path.exists(path):
                return f"{path} does not exist"
            if not connect:
                return None
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(timeout)
            try:
                s.connect(addr)
            finally:
                s.close()
        elif endpoint.startswith("tcp://") and connect:
            host, _, port = endpoint[len("tcp://"):].rpartition(":")
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except ConnectionRefusedError:
        return "nothing listens there (connection refused)"
    except (TimeoutError, OSError, ValueError):
        return None   # slow, filtered, unresolvable: the handshake's own timeout decides
    return None
