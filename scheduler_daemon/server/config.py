"""Daemon options (one object, filled by the CLI or by tests)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from scheduler_daemon.transport.sockets import DEFAULT_MAX_FRAME, default_endpoint


@dataclass
class DaemonLimits:
    max_frame_bytes: int = DEFAULT_MAX_FRAME   # per frame, enforced by libzmq
    max_input_bytes: int = 256 * 1024 * 1024   # summed input frames of one job
    max_inputs: int = 64                       # tensors per job
    max_kernels: int = 100_000                 # kernels per model
    max_models: int = 256                      # models per tenant
    max_queued: int = 20_000                   # unfinished jobs per tenant
    max_tenant_bytes: int = 1024 * 1024 * 1024  # bytes a tenant holds in the daemon, all kinds
    # a whole message (all its frames) and its frame count; checked as it is read (libzmq has
    # buffered it by then: what bounds memory before that is the connection caps below)
    max_message_bytes: int = 2 * 1024 * 1024 * 1024
    max_message_parts: int = 65_536


@dataclass
class DaemonConfig:
    endpoint: str = field(default_factory=default_endpoint)
    backend: str = "auto"          # auto | sim | fluid | torch
    policy: str = "slo-srpt"
    gpu_spec: str = "T4"           # preset of the simulated GPU (and resources for torch)
    shed: bool = False             # slo policy: drop (True) or flag (False) hopeless jobs
    max_extra: int = 2             # kernels dispatched beyond free SM resources
    quantum_us: float | None = None  # a dispatch's run of a job's kernels (None: the device's)
    speed: float = 1.0             # simulated device: duration multiplier (0 = zero-duration)
    hw_queues: int = 32            # simulated GPU: hardware queues (CUDA_DEVICE_MAX_CONNECTIONS)
    torch_device: str | None = None  # torch backend: cpu, cuda, cuda:1 (default: auto)
    heartbeat_s: float = 0.25      # clients ping this often
    client_timeout_s: float = 5.0  # silent this long (20 missed heartbeats): the client is gone
    disconnect_grace_s: float = 0.5  # its connection closed: gone unless it speaks within this
    drain_grace_s: float = 10.0    # on SIGTERM, how long started jobs may run on
    token: str = ""                # if set, clients must present it in HELLO
    # tenant -> its own token: a client may say HELLO as a tenant only with that tenant's
    # token (and STATUS shows it only its own tenant); empty: tenants are names, not identities
    tenant_tokens: dict = field(default_factory=dict)
    # tenant -> its CURVE public key (z85): with curve_secret, only these keys connect, and a
    # connection may say HELLO only as the tenant its key belongs to
    tenant_keys: dict = field(default_factory=dict)
    curve_secret: bytes | None = None  # CURVE secret key: encrypt every connection
    metrics_port: int | None = None  # serve Prometheus metrics on metrics_addr:PORT (0: any)
    metrics_addr: str = "127.0.0.1"  # where the metrics listen (localhost only by default)
    metrics_redact: bool = False   # label series by hashed tenant/model names, not the names
    max_connections: int = 1024    # live connections; more are refused at the handshake
    max_unauthenticated: int = 64  # connections that have not said HELLO; more are refused
    max_tenants: int = 1024        # distinct tenant names under a shared token (or none)
    max_op_work: float = 0.0       # one intercepted/graph op's FLOPs or elements (0: by device)
    max_compile_s: float = 30.0    # one tenant CUDA compile's time (CPU and wall) in its sandbox
    limits: DaemonLimits = field(default_factory=DaemonLimits)


def load_tenant_tokens(path: str) -> dict[str, str]:
    """A YAML mapping ``tenant: token``; ValueError naming the problem and the file."""
    import yaml
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ValueError(f"cannot read tenant tokens {path}: {e.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected a mapping 'tenant: token', one line per tenant")
    out = {}
    for name, tok in data.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.:@/-]{1,128}", name):
            raise ValueError(f"{path}: tenant name {name!r} is not [A-Za-z0-9_.:@/-]{{1,128}}")
        if not isinstance(tok, str) or len(tok) < 16 or len(tok) > 256:
            raise ValueError(f"{path}: tenant {name!r}: the token must be a string of 16-256 "
                             "characters (make one with: python -c 'import secrets; "
                             "print(secrets.token_urlsafe(24))')")
        out[name] = tok
    return out


def load_tenant_keys(path: str) -> dict[str, str]:
    """A YAML mapping ``tenant: CURVE public key`` (z85, 40 characters, or a file holding one
    as written by ``gpusched keys --client NAME``); ValueError naming the problem and the file."""
    import os

    import yaml

    from scheduler_daemon.transport.keys import read_key
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ValueError(f"cannot read tenant keys {path}: {e.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected a mapping 'tenant: public key', one line per tenant")
    out = {}
    for name, key in data.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.:@/-]{1,128}", name):
            raise ValueError(f"{path}: tenant name {name!r} is not [A-Za-z0-9_.:@/-]{{1,128}}")
        if not isinstance(key, str):
            raise ValueError(f"{path}: tenant {name!r}: the key must be a string")
        if len(key.strip()) != 40:   # a file holding it, relative to the keys file
            key = os.path.join(os.path.dirname(path), key)
        out[name] = read_key(key).decode()
    if len(set(out.values())) != len(out):
        raise ValueError(f"{path}: two tenants share a key: give each tenant its own key pair")
    return out
