"""The one helper that makes every ZeroMQ socket in the project, and endpoint defaults."""
from __future__ import annotations

import os
import stat
import tempfile

import zmq

DEFAULT_MAX_FRAME = 64 * 1024 * 1024


class RuntimeDirError(OSError):
    """The per-user socket directory is unsafe (another owner, a symlink, open to others)."""


def runtime_dir() -> str:
    """Per-user directory for ipc sockets: made owner-only (0700) in one step, and refused if
    it exists as anything else (a symlink, another user's, readable by others): in a shared
    /tmp another user could have made it first to swap the socket and collect tokens."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    path = os.path.join(base, "gpusched") if base else os.path.join(
        tempfile.gettempdir(), f"gpusched-{os.getuid()}")
    try:
        os.mkdir(path, 0o700)   # atomic: ours, or it was there before
    except FileExistsError:
        pass
    st = os.lstat(path)
    fix = f"remove {path} (or set XDG_RUNTIME_DIR / GPUSCHED_ENDPOINT to a directory of yours)"
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise RuntimeDirError(f"{path} is not a directory (a symlink or a file): {fix}")
    if st.st_uid != os.getuid():
        raise RuntimeDirError(f"{path} belongs to uid {st.st_uid}, not to you: {fix}")
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o700)   # ours, but once made with a looser umask: tighten it
    return path


def default_endpoint() -> str:
    return os.environ.get("GPUSCHED_ENDPOINT") or f"ipc://{runtime_dir()}/daemon.sock"


def make_socket(ctx: zmq.Context, kind: int, endpoint: str, *, bind: bool,
                max_frame: int = DEFAULT_MAX_FRAME, hwm: int = 100_000,
                curve_secret: bytes | None = None,
                curve_server_key: bytes | None = None,
                curve_client_secret: bytes | None = None, zap: bool = False) -> zmq.Socket:
    """Create, configure and bind/connect a socket.

    ``max_frame`` sets ZMQ_MAXMSGSIZE so an oversized frame is refused by libzmq before it is
    buffered (the peer is disconnected; well-behaved clients check the advertised limit first).
    ipc sockets a daemon binds are made owner-only. ``curve_secret`` makes a CURVE server (the
    daemon); ``curve_server_key`` a CURVE client of that server, with the key pair of
    ``curve_client_secret`` (a tenant's own key) or an ephemeral one. ``zap``: every connection
    is put to the process's ZAP handler (inproc://zeromq.zap.01), which must be bound first.
    """
    sock = ctx.socket(kind)
    if curve_secret is not None:
        sock.curve_secretkey = curve_secret
        sock.curve_publickey = zmq.curve_public(curve_secret)
        sock.curve_server = True
    elif curve_server_key is not None:
        if curve_client_secret is not None:
            public, secret = zmq.curve_public(curve_client_secret), curve_client_secret
        else:
            public, secret = zmq.curve_keypair()
        sock.curve_serverkey = curve_server_key
        sock.curve_publickey = public
        sock.curve_secretkey = secret
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    if max_frame:
        sock.setsockopt(zmq.MAXMSGSIZE, max_frame)
    if kind == zmq.ROUTER:
        sock.setsockopt(zmq.ROUTER_MANDATORY, 0)  # replies to vanished peers are dropped
    if zap:
        sock.zap_domain = b"gpusched"
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)  # no handler: no connection
    try:
        _attach(sock, endpoint, bind)
    except BaseException:
        sock.close(0)  # an open socket would block the context's term() forever
        raise
    return sock


def _attach(sock: zmq.Socket, endpoint: str, bind: bool) -> None:
    if bind:
        if endpoint.startswith("ipc://"):
            path = endpoint[len("ipc://"):]
            os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
            old = os.umask(0o077)
            try:
                sock.bind(endpoint)
            finally:
                os.umask(old)
            os.chmod(path, 0o600)
        else:
            sock.bind(endpoint)
    else:
        sock.connect(endpoint)


def check_endpoint(endpoint: str) -> str:
    """Validate an endpoint string; raises ValueError with the fix."""
    if endpoint.startswith("ipc://") and len(endpoint) > len("ipc://"):
        return endpoint
    if endpoint.startswith("tcp://"):
        host, _, port = endpoint[6:].rpartition(":")
        if host and port.isdigit() and 0 < int(port) < 65536:
            return endpoint
    raise ValueError(f"bad endpoint {endpoint!r}: use ipc:///path/to/socket or "
                     "tcp://127.0.0.1:PORT (PORT 1-65535)")
