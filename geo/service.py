"""``gpusched geo serve``: the geo service (ZeroMQ ROUTER), and its client.

One thread owns the socket and the state: each request is decoded into its typed struct
(geo/protocol.py), checked (token, every job field), applied to a copy of the state, re-planned,
saved to disk, and only then swapped in and answered - so an error leaves the state as it was,
and an answer means the change is on disk. Every request gets exactly one answer; a frame that
does not decode gets an ERROR, never a crash. SIGTERM sets a flag; the loop exits cleanly.
"""
from __future__ import annotations

import hmac
import itertools
import logging
import os
import signal
import socket
import time

import msgspec
import zmq

from scheduler_daemon.sockets import make_socket, runtime_dir

from .protocol import (REPLIES, REQUESTS, Error, EventReq, GeoProtocolError, Reply, StatusReq,
                       Submit, check_event, decode, encode)
from .replan import IMPROVING, add_job, apply_event, clone, initial_plan, replan
from .spec import GeoSpecError, check_job, load_spec
from .state import GeoState, default_state_path, load_state, save_state
from .wan import Wan

log = logging.getLogger("geo.service")
MAX_FRAME = 4 * 1024 * 1024  # a job or an event is small; bigger frames are refused by libzmq

__all__ = ["GeoService", "GeoClient", "default_geo_endpoint", "default_state_path"]


def default_geo_endpoint() -> str:
    return os.environ.get("GPUSCHED_GEO_ENDPOINT") or f"ipc://{runtime_dir()}/geo.sock"


class GeoService:
    def __init__(self, endpoint: str, state_path: str, spec_path: str | None = None,
                 token: str = "", solver: str = "auto", objective: str | None = None,
                 curve_secret: bytes | None = None):
        self.endpoint, self.state_path, self.token = endpoint, state_path, token
        self.curve_secret = curve_secret
        self._stop = False
        state = load_state(state_path)
        if state is None:
            if spec_path is None:
                raise ValueError(f"no geo state at {state_path}: start the service with "
                                 f"--spec FILE (the fleet: sites, links, datasets, jobs)")
            spec = load_spec(spec_path)
            obj = objective or spec.planner.objective
            plan, diff = initial_plan(spec, obj, solver)
            state = GeoState(spec=spec, objective=obj, solver=solver, plan=plan, diff=diff)
            save_state(state, state_path)
            log.info("geo: new state from %s saved to %s", spec_path, state_path)
        elif spec_path is not None:
            log.warning("geo: %s holds a state already; --spec %s is ignored", state_path,
                        spec_path)
        self.state = state
        self.wan = Wan(state.spec)  # sites and links never change: events change GPUs, prices

    def install_signal_handlers(self) -> None:
        def stop(signum, frame):
            self._stop = True
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def stop(self) -> None:
        self._stop = True

    # -- requests -------------------------------------------------------------------------
    def handle(self, frames: list) -> list[bytes]:
        """One request's frames (without the identity) -> one answer's frames."""
        req_id = 0
        try:
            msg = decode(frames, REQUESTS)
            req_id = msg.req_id
            if self.token and not hmac.compare_digest(msg.token.encode(), self.token.encode()):
                raise GeoProtocolError("DENIED", "wrong or missing token")
            if isinstance(msg, StatusReq):
                return encode(Reply(req_id, plan=self.state.plan, diff=self.state.diff,
                                    events=self.state.events))
            new = msgspec.structs.replace(self.state, spec=clone(self.state.spec),
                                          down={k: dict(v) for k, v in self.state.down.items()})
            if isinstance(msg, Submit):
                check_job(msg.job, {}, f"job {msg.job.name}", "$")
                reason = add_job(new.spec, msg.job)
                improve = False
            else:
                assert isinstance(msg, EventReq)
                reason = apply_event(new.spec, check_event(msg.event), new.down)
                improve = msg.event.kind in IMPROVING
            t0 = time.perf_counter()
            plan, diff = replan(new.spec, new.objective, reason, improve=improve, wan=self.wan)
            new.plan, new.diff, new.events = plan, diff, new.events + 1
            save_state(new, self.state_path)  # on disk before the answer says it happened
            self.state = new
            log.info("geo: %s -> %d changes in %.3fs", reason, len(diff), time.perf_counter() - t0)
            return encode(Reply(req_id, plan=plan, diff=diff, events=new.events))
        except GeoProtocolError as e:
            return encode(Error(req_id, e.code, e.message))
        except (GeoSpecError, ValueError) as e:
            return encode(Error(req_id, "BAD_REQUEST", str(e)))
        except Exception as e:  # a bug must not take the service down with it
            log.exception("geo: request %d failed", req_id)
            return encode(Error(req_id, "INTERNAL", f"{type(e).__name__}: {e}"))

    def serve_forever(self, poll_ms: int = 200) -> None:
        ctx = zmq.Context()
        sock = make_socket(ctx, zmq.ROUTER, self.endpoint, bind=True, max_frame=MAX_FRAME,
                           curve_secret=self.curve_secret)
        log.info("geo: serving on %s (state %s)", self.endpoint, self.state_path)
        try:
            while not self._stop:
                if not sock.poll(poll_ms):
                    continue
                frames = sock.recv_multipart(copy=True)
                ident, body = frames[0], frames[1:]
                if body and body[0] == b"":  # a REQ peer's empty delimiter
                    reply = [b""] + self.handle(body[1:])
                else:
                    reply = self.handle(body)
                sock.send_multipart([ident, *reply])
        finally:
            sock.close(0)
            ctx.term()
            if self.endpoint.startswith("ipc://"):
                try:
                    os.unlink(self.endpoint[len("ipc://"):])
                except OSError:
                    pass
            log.info("geo: stopped")


CONNECT_TIMEOUT_S = 2.0


def check_listening(endpoint: str, timeout_s: float) -> None:
    """Fail at once (ConnectionError) when nothing listens at ``endpoint``, instead of waiting
    the whole answer timeout: no socket file for ipc, a refused or silent port for tcp."""
    hint = "start one: gpusched geo serve --spec FILE"
    if endpoint.startswith("ipc://"):
        path = endpoint[len("ipc://"):]
        if not os.path.exists(path):
            raise ConnectionError(f"no geo service at {endpoint}: {path} does not exist ({hint})")
        return
    host, _, port = endpoint[len("tcp://"):].rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ConnectionError(f"no geo service at {endpoint}: {e.strerror or e} ({hint})") \
            from None


class GeoClient:
    """Blocking client: one request, one answer (ValueError for an ERROR answer)."""

    def __init__(self, endpoint: str, token: str = "", server_key: bytes | None = None,
                 timeout_s: float = 10.0):
        self.endpoint, self.token, self.timeout_s = endpoint, token, timeout_s
        check_listening(endpoint, min(timeout_s, CONNECT_TIMEOUT_S))
        self._ctx = zmq.Context()
        self._sock = make_socket(self._ctx, zmq.DEALER, endpoint, bind=False,
                                 curve_server_key=server_key)
        self._ids = itertools.count(1)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self._sock.close(0)
        self._ctx.term()

    def _call(self, msg) -> Reply:
        self._sock.send_multipart(encode(msg))
        if not self._sock.poll(int(self.timeout_s * 1000)):
            raise TimeoutError(f"no geo service answered at {self.endpoint} within "
                               f"{self.timeout_s:g} s (start one: gpusched geo serve --spec FILE)")
        ans = decode(self._sock.recv_multipart(), REPLIES)
        if isinstance(ans, Error):
            raise ValueError(f"geo service refused: {ans.code}: {ans.message}")
        return ans

    def submit(self, job) -> Reply:
        return self._call(Submit(next(self._ids), job, self.token))

    def event(self, event) -> Reply:
        return self._call(EventReq(next(self._ids), event, self.token))

    def status(self) -> Reply:
        return self._call(StatusReq(next(self._ids), self.token))

    def raw(self, frames: list[bytes]) -> list[bytes]:
        """Send any frames, return the answer's frames (tests of bad input)."""
        self._sock.send_multipart(frames)
        if not self._sock.poll(int(self.timeout_s * 1000)):
            raise TimeoutError("no answer")
        return self._sock.recv_multipart()
