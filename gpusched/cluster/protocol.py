"""The cluster directory's wire protocol: frames ``(type, body)`` of the daemon's codec
(``scheduler_daemon/wire/codec.py``), nothing pickled. The controller serves it on a ROUTER
socket (tcp, CURVE with the cluster's key); clients ask ``LOOKUP`` and get ``DIRECTORY``: every
daemon (endpoint, GPU, whether it answers, the replicas admitted there) and an ``epoch`` that
grows whenever any of it changes.
"""
from __future__ import annotations

from typing import Annotated

import msgspec

from scheduler_daemon.wire.codec import Codec, ProtocolError  # noqa: F401 (re-exported)

CLUSTER_PROTOCOL_VERSION = 1
ReqId = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]


class Msg(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    pass


class Lookup(Msg):
    req_id: ReqId
    version: int = CLUSTER_PROTOCOL_VERSION


class ReplicaInfo(Msg, omit_defaults=False):
    model: str                 # the model's name in the placement (what clients submit)
    zoo_model: str
    batch: int
    rate: float
    slo_ms: float
    predicted_latency_ms: float = 0.0


class DaemonInfo(Msg, omit_defaults=False):
    key: str                   # the daemon's name (its Ray actor's), stable across restarts
    endpoint: str = ""
    node_id: str = ""
    node_labels: dict[str, str] = {}
    gpu_type: str = ""
    gpu_memory_mb: float = 0.0
    gpu_uuid: str = ""
    gpu_visible: str = ""      # its CUDA_VISIBLE_DEVICES (Ray's grant on its node)
    daemon_id: str = ""        # changes when the daemon restarts
    alive: bool = False
    restarts: int = 0
    replicas: list[ReplicaInfo] = []


class Directory(Msg, omit_defaults=False):
    req_id: int
    epoch: int
    cluster: str
    daemons: list[DaemonInfo] = []
    unserved: list[str] = []   # placed models with no live replica


class Error(Msg):
    req_id: int
    code: str
    message: str


REQUESTS = {b"LOOKUP": Lookup}
REPLIES = {b"DIRECTORY": Directory, b"ERROR": Error}
_codec = Codec(REQUESTS, REPLIES)
encode = _codec.encode
decode = _codec.decode
