"""What the sync and async clients share: building requests and turning replies into results."""
from __future__ import annotations

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


def resolve_done(msg: P.Done, raw: list, t0: float):
    """DONE -> (result, None) or (None, exception)."""
    if msg.status == "done":
        if len(raw) != len(msg.outputs):
            return None, RequestError("BAD_FRAME", "output frames do not match their headers")
        outs = [from_frame(m, f.buffer if hasattr(f, "buffer") else f)
                for m, f in zip(msg.outputs, raw)]
        return JobResult(msg.job_id, msg.queue_ms, msg.exec_ms, msg.total_ms, msg.slo_met,
                         (time.perf_counter() - t0) * 1e3, outs), None
    if msg.status == "cancelled":
        return None, JobCancelled(f"job {msg.job_id} was cancelled"
                                  + (f": {msg.error}" if msg.error else ""))
    if msg.status == "shed":
        return None, JobShed(f"job {msg.job_id} was shed: it could no longer meet its SLO")
    return None, JobFailed(f"job {msg.job_id} failed: {msg.error or msg.status}")
