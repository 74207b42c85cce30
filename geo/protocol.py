"""The geo service's wire protocol: frames ``(type, body)`` of the daemon's codec
(``scheduler_daemon/wire/codec.py``, docs/protocol.md); nothing is pickled. A ROUTER sees the
peer identity as an extra first frame. Every request carries ``req_id`` and gets one answer:
``REPLY`` or ``ERROR`` with the same ``req_id`` (0 when the request could not be decoded).
"""
from __future__ import annotations

from typing import Annotated, Literal, Optional

import msgspec

from geo.plan import Plan
from geo.spec import Count, Job, Name, Price
from scheduler_daemon.wire.codec import Codec, ProtocolError

GEO_PROTOCOL_VERSION = 1
ReqId = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
Token = Annotated[str, msgspec.Meta(max_length=256)]
EventKind = Literal["site-down", "site-up", "capacity", "preempt", "price", "job-finished"]


class Msg(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    pass


class Event(Msg):
    kind: EventKind
    site: Optional[Name] = None
    gpu_type: Optional[Name] = None
    count: Optional[Count] = None
    usd_per_hour: Optional[Price] = None  # the spec's bound: the state must reload
    job: Optional[Name] = None


NEEDS = {"site-down": ("site",), "site-up": ("site",), "capacity": ("site", "gpu_type", "count"),
         "preempt": ("site",), "price": ("site", "gpu_type", "usd_per_hour"),
         "job-finished": ("job",)}


def check_event(ev: Event) -> Event:
    missing = [f for f in NEEDS[ev.kind] if getattr(ev, f) is None]
    if missing:
        raise ValueError(f"event {ev.kind} needs {', '.join(missing)}")
    return ev


def event_from_args(kind: str, args: list[str]) -> Event:
    """``gpusched geo event KIND ARGS...`` -> Event (ValueError naming the usage)."""
    usage = {"site-down": "SITE", "site-up": "SITE", "capacity": "SITE TYPE COUNT",
             "preempt": "SITE [TYPE]", "price": "SITE TYPE USD_PER_HOUR", "job-finished": "JOB"}
    need = len(usage[kind].split()) - usage[kind].count("[")
    if not need <= len(args) <= len(usage[kind].split()):
        raise ValueError(f"event {kind} takes {usage[kind]}")
    try:
        if kind in ("site-down", "site-up"):
            ev = Event(kind, site=args[0])
        elif kind == "capacity":
            ev = Event(kind, site=args[0], gpu_type=args[1], count=int(args[2]))
        elif kind == "preempt":
            ev = Event(kind, site=args[0], gpu_type=args[1] if len(args) > 1 else None)
        elif kind == "price":
            ev = Event(kind, site=args[0], gpu_type=args[1], usd_per_hour=float(args[2]))
        else:
            ev = Event(kind, job=args[0])
    except ValueError:
        raise ValueError(f"event {kind} takes {usage[kind]} (a number where it says COUNT "
                         f"or USD_PER_HOUR)") from None
    # the same checks the service applies: names and ranges, said in the command's words
    try:
        return check_event(msgspec.convert(msgspec.to_builtins(ev), Event))
    except msgspec.ValidationError as e:
        raise ValueError(_arg_error(kind, usage[kind], args, e)) from None


ARG_WORDS = {"site": "SITE", "gpu_type": "TYPE", "count": "COUNT", "usd_per_hour": "USD_PER_HOUR",
             "job": "JOB"}
ARG_RULES = {"count": "a whole number of GPUs, 0 or more (at most 10,000,000)",
             "usd_per_hour": "a price in $ per GPU-hour, 0 or more (at most 1,000,000)",
             "site": "a name of letters, digits and _.:@/+-", "gpu_type": "a GPU type name",
             "job": "a job name"}


def _arg_error(kind: str, usage: str, args: list[str], e: msgspec.ValidationError) -> str:
    """msgspec's "Expected `int` >= 0 - at `$.count`" as the argument it is about, e.g.
    "event capacity SITE TYPE COUNT: COUNT must be a whole number of GPUs, 0 or more (got -4)"."""
    import re
    m = re.search(r"`\$\.(\w+)`", str(e))
    field = m.group(1) if m else ""
    word = ARG_WORDS.get(field, "an argument")
    words = usage.replace("[", "").replace("]", "").split()
    got = args[words.index(word)] if word in words and words.index(word) < len(args) else None
    return (f"event {kind} {usage}: {word} must be {ARG_RULES.get(field, 'valid')}" +
            (f" (got {got})" if got is not None else ""))


class Change(msgspec.Struct, omit_defaults=False):
    """One line of a plan diff."""
    job: str
    change: str  # placed | moved | resized | stopped | finished | waiting
    before: str
    after: str
    reason: str


# -- client -> service ------------------------------------------------------------------------
class Submit(Msg):
    req_id: ReqId
    job: Job
    token: Token = ""


class EventReq(Msg):
    req_id: ReqId
    event: Event
    token: Token = ""


class StatusReq(Msg):
    req_id: ReqId
    token: Token = ""


# -- service -> client ------------------------------------------------------------------------
class Reply(Msg, omit_defaults=False):
    req_id: int
    plan: Optional[Plan] = None
    diff: list[Change] = []
    events: int = 0  # events applied since the state was created
    # how the change was planned: "arrival" (a submit's fast path: the job placed in free
    # GPUs, nobody else moved) or "replan" (a full re-plan); "" for a status
    path: str = ""


class Error(Msg, omit_defaults=False):
    req_id: int
    code: str  # BAD_FRAME | BAD_MESSAGE | BAD_REQUEST | DENIED | INTERNAL
    message: str


REQUESTS = {b"SUBMIT": Submit, b"EVENT": EventReq, b"STATUS": StatusReq}
REPLIES = {b"REPLY": Reply, b"ERROR": Error}
_codec = Codec(REQUESTS, REPLIES)
encode = _codec.encode
GeoProtocolError = ProtocolError


def decode(frames: list, table: dict[bytes, type]) -> Msg:
    """[type, body] -> struct; raises ProtocolError naming the problem."""
    if len(frames) != 2:
        raise ProtocolError("BAD_FRAME", f"expected 2 frames (type, body), got {len(frames)}")
    return _codec.decode(frames[0], frames[1], table)


def to_builtins(msg) -> object:
    return msgspec.to_builtins(msg)
