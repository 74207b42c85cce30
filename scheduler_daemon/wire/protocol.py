"""The wire protocol: one ``msgspec.Struct`` per message type (see docs/protocol.md).

A message is the frames ``(type, body, *raw)`` of ``wire/codec.py``: ``raw`` are zero-copy
payload frames (tensors), as many as the body declares. The ROUTER side sees the peer identity
as an extra first frame. A body decodes into exactly its declared struct or is rejected with a
``BAD_MESSAGE`` error; nothing is pickled.
"""
from __future__ import annotations

from typing import Annotated, Optional

import msgspec

from scheduler_daemon.wire.codec import Codec, ProtocolError  # noqa: F401 (re-exported)
from scheduler_daemon.wire.cuda import CudaModel
from scheduler_daemon.wire.eager import EagerOp, HandleId, TensorLayout, Upload
from scheduler_daemon.wire.kernels import KernelSpec
from scheduler_daemon.wire.tensors import TensorMeta

PROTOCOL_VERSION = 1

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@/-]+$")]
ReqId = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]


class Msg(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    pass


# -- client -> daemon ---------------------------------------------------------------------
class Hello(Msg):
    version: int
    tenant: Name
    token: Annotated[str, msgspec.Meta(max_length=256)] = ""


class Register(Msg):
    req_id: ReqId
    model: Name
    kernels: Annotated[list[KernelSpec], msgspec.Meta(min_length=1)]


class RegisterGraph(Msg):
    """A captured torch model (devices/graph_spec.py): graph as msgpack bytes, one raw frame per
    weight, in ``weights`` order. Decoded and validated by the device, never unpickled."""
    req_id: ReqId
    model: Name
    graph: Annotated[bytes, msgspec.Meta(max_length=64 << 20)]
    weights: Annotated[list[TensorMeta], msgspec.Meta(max_length=100_000)] = []
    # raw frames per weight (empty: one each); a weight over the frame limit spans several
    weight_frames: Annotated[list[Annotated[int, msgspec.Meta(ge=1, le=4096)]],
                             msgspec.Meta(max_length=100_000)] = []
    # the same model captured at other input shapes (issue 17): ``shares`` names a registered
    # graph of this tenant whose weights this one reuses; ``reuse`` gives, per graph weight,
    # the index of that model's weight or -1 for the next of ``weights`` (sent as frames).
    # Registering ``shares`` again drops this model.
    shares: Annotated[str, msgspec.Meta(max_length=128, pattern=r"^[A-Za-z0-9_.:@/-]*$")] = ""
    reuse: Annotated[list[Annotated[int, msgspec.Meta(ge=-1, lt=200_000)]],
                     msgspec.Meta(max_length=200_000)] = []


class RegisterCuda(Msg):
    """Raw CUDA kernels (cuda/spec.py): source or PTX, the buffers and launches of one job.
    The daemon compiles with NVRTC (a compile error comes back with the compiler's log) and
    checks every launch shape against its GPU; each launch is one schedulable kernel."""
    req_id: ReqId
    model: Name
    cuda: CudaModel


class Submit(Msg):
    req_id: ReqId
    model: Name
    slo_ms: Annotated[float, msgspec.Meta(ge=0.0, le=86_400_000.0)] = 0.0  # 0: no SLO
    priority: Annotated[int, msgspec.Meta(ge=-1000, le=1000)] = 0
    inputs: Annotated[list[TensorMeta], msgspec.Meta(max_length=1024)] = []
    ack: bool = False  # also send ACCEPTED when queued


class Cancel(Msg):
    req_id: ReqId
    target: ReqId  # the req_id of this client's SUBMIT


class Status(Msg):
    req_id: ReqId
    target: Optional[ReqId] = None  # a SUBMIT's req_id, or None for the daemon summary


class AdmitReplica(Msg):
    name: Name              # the model's name in the placement
    model: Name             # its zoo model (profiles and interference come from it)
    batch: Annotated[int, msgspec.Meta(ge=1, le=1024)]
    rate: Annotated[float, msgspec.Meta(gt=0.0, le=1e7)]            # requests/s
    slo_ms: Annotated[float, msgspec.Meta(gt=0.0, le=86_400_000.0)]


class Admit(Msg):
    """Admission by the interference model (placement, issue 5): all replicas or none."""
    req_id: ReqId
    replicas: Annotated[list[AdmitReplica], msgspec.Meta(min_length=1, max_length=256)]
    replace: bool = False   # forget what was admitted before


class EagerOps(Msg):
    """Intercepted eager ops (issue 4), fire-and-forget like a CUDA launch: never answered by
    itself; an error in them is the answer to this client's next EAGER_SYNC. ``uploads`` come
    first (raw frames in order), then ``ops`` run in order after every earlier EAGER_OPS of this
    client, then the handles in ``free`` are released."""
    seq: Annotated[int, msgspec.Meta(ge=1)]
    ops: Annotated[list[EagerOp], msgspec.Meta(max_length=4096)] = []
    uploads: Annotated[list[Upload], msgspec.Meta(max_length=1024)] = []
    free: Annotated[list[HandleId], msgspec.Meta(max_length=1 << 20)] = []
    slo_ms: Annotated[float, msgspec.Meta(ge=0.0, le=86_400_000.0)] = 0.0
    priority: Annotated[int, msgspec.Meta(ge=-1000, le=1000)] = 0
    # per handle of ``free`` (empty: all after the batch): released before op ``free_at[i]``
    # runs (the client dropped it then), so a long batch holds what the model holds locally
    free_at: Annotated[list[Annotated[int, msgspec.Meta(ge=0, le=4096)]],
                       msgspec.Meta(max_length=1 << 20)] = []
    # token generation (issue 17): ``gen_start`` starts a generation's clock at this batch's
    # arrival; ``token`` 1 says this batch ends its first token (time to first token is
    # measured when it has run), 2 that it ends a later one (time per output token: since the
    # previous token). ``slo_ms`` of a token's batch is that token's SLO.
    gen_start: bool = False
    token: Annotated[int, msgspec.Meta(ge=0, le=2)] = 0


class EagerSync(Msg):
    """A sync point of the intercept path, answered (EAGER_RESULT or ERROR) once every earlier
    EAGER_OPS of this client has run: copy ``fetch`` tensors back, and/or run ``op`` (a value
    such as ``.item()``, or an output shape that depends on data) with its tensor outputs as
    handles ``first_out``, ``first_out + 1``, ..."""
    req_id: ReqId
    fetch: Annotated[list[HandleId], msgspec.Meta(max_length=1024)] = []
    op: Optional[EagerOp] = None
    first_out: Annotated[int, msgspec.Meta(ge=0, lt=2**53)] = 0


class Ping(Msg):
    seq: int = 0


class Bye(Msg):
    pass


# -- daemon -> client ---------------------------------------------------------------------
class Limits(Msg):
    max_frame_bytes: int
    max_input_bytes: int
    max_inputs: int
    max_kernels: int
    max_models: int
    max_queued: int
    max_tenant_bytes: int = 0


class Welcome(Msg):
    version: int
    daemon_id: str
    device: str
    policy: str
    heartbeat_s: float
    limits: Limits


class Registered(Msg):
    req_id: int
    model: str
    kernels: int


class Accepted(Msg):
    req_id: int
    job_id: str


class Done(Msg):
    req_id: int
    job_id: str
    status: str  # done | cancelled | shed | failed
    queue_ms: float = 0.0
    exec_ms: float = 0.0
    total_ms: float = 0.0
    slo_met: bool = True
    outputs: list[TensorMeta] = []
    error: str = ""


class CancelReply(Msg):
    req_id: int
    target: int
    cancelled: bool


class TenantStatus(Msg, omit_defaults=False):
    tenant: str
    clients: int = 0
    queued: int = 0
    running: int = 0
    completed: int = 0
    cancelled: int = 0
    failed: int = 0
    shed: int = 0
    slo_missed: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    bytes_held: int = 0   # input bytes of unfinished jobs + intercepted tensors in the daemon
    # token generation through the intercept path (EAGER_OPS token marks): tokens made, and
    # time to first token / time per output token over the last 10,000 of each, with misses
    # of the SLO each token's batch carried
    tokens: int = 0
    ttft_p50_ms: float = 0.0
    ttft_p99_ms: float = 0.0
    tpot_p50_ms: float = 0.0
    tpot_p99_ms: float = 0.0
    ttft_slo_missed: int = 0
    tpot_slo_missed: int = 0


class JobStatus(Msg, omit_defaults=False):
    job_id: str
    model: str
    state: str
    kernels_done: int
    kernels: int
    remaining_ms: float


class StatusReply(Msg, omit_defaults=False):
    req_id: int
    daemon_id: str = ""
    device: str = ""
    policy: str = ""
    uptime_s: float = 0.0
    queued: int = 0
    inflight: int = 0
    utilisation: float = 0.0
    tenants: list[TenantStatus] = []
    job: Optional[JobStatus] = None


class Pong(Msg):
    seq: int
    daemon_id: str


class AdmittedReplica(Msg, omit_defaults=False):
    name: str
    predicted_slowdown: float
    predicted_latency_ms: float


class Admitted(Msg):
    req_id: int
    replicas: list[AdmittedReplica] = []


class EagerResult(Msg):
    req_id: int
    fetched: list[TensorMeta] = []   # one raw frame each, contiguous
    outs: list[TensorLayout] = []     # the sync op's tensor outputs (now handles)
    values: list[Optional[float | int | bool]] = []  # its non-tensor outputs


class Error(Msg):
    req_id: int  # 0 when the request could not be read far enough to know it
    code: str
    message: str


class Code:
    """Error codes (``Error.code``)."""
    BAD_FRAME = "BAD_FRAME"          # wrong number of frames, unknown type tag
    BAD_MESSAGE = "BAD_MESSAGE"      # the body does not decode into its struct
    VERSION = "VERSION"              # protocol version mismatch
    NOT_CONNECTED = "NOT_CONNECTED"  # no HELLO yet (or the daemon forgot this client)
    AUTH = "AUTH"                    # wrong token
    UNKNOWN_MODEL = "UNKNOWN_MODEL"
    UNKNOWN_JOB = "UNKNOWN_JOB"      # no unfinished job of this client has that req_id
    BAD_MODEL = "BAD_MODEL"          # a kernel the device cannot run
    BAD_INPUT = "BAD_INPUT"          # inputs do not match their frames / device rejects them
    TOO_LARGE = "TOO_LARGE"          # a size limit
    LIMIT = "LIMIT"                  # a count limit (queued jobs, models)
    DUPLICATE = "DUPLICATE"          # req_id already in use
    DRAINING = "DRAINING"            # the daemon is shutting down
    ADMISSION = "ADMISSION"          # the interference model predicts a broken SLO
    OP_FAILED = "OP_FAILED"          # an intercepted op raised in the daemon
    INTERNAL = "INTERNAL"            # a bug: logged by the daemon


REQUESTS: dict[bytes, type] = {b"HELLO": Hello, b"REGISTER": Register, b"SUBMIT": Submit,
                               b"CANCEL": Cancel, b"STATUS": Status, b"PING": Ping, b"BYE": Bye,
                               b"ADMIT": Admit, b"REGISTER_GRAPH": RegisterGraph,
                               b"EAGER_OPS": EagerOps, b"EAGER_SYNC": EagerSync,
                               b"REGISTER_CUDA": RegisterCuda}
REPLIES: dict[bytes, type] = {b"WELCOME": Welcome, b"REGISTERED": Registered,
                              b"ACCEPTED": Accepted, b"DONE": Done, b"CANCEL_REPLY": CancelReply,
                              b"STATUS_REPLY": StatusReply, b"PONG": Pong, b"ERROR": Error,
                              b"ADMITTED": Admitted, b"EAGER_RESULT": EagerResult}
_codec = Codec(REQUESTS, REPLIES)
TAGS = _codec.tags
encode = _codec.encode   # Struct -> [type, body] frames (append raw frames after)
decode = _codec.decode   # (tag, body, REQUESTS or REPLIES) -> Struct, or ProtocolError
