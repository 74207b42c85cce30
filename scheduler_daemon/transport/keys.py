"""ZeroMQ CURVE keys: the daemon's key pair, kept in two files (``gpusched keys``).

With a key the daemon's socket encrypts every connection and proves the daemon's identity;
clients need the daemon's *public* key (``daemon.key``) and make an ephemeral pair of their own,
or, with ``--tenant-keys``, use their tenant's pair (``gpusched keys --client NAME``): then only
listed keys connect, each as its own tenant.
"""
from __future__ import annotations

import os
import re

import zmq
import zmq.utils.z85

SECRET_NAME, PUBLIC_NAME = "daemon.key_secret", "daemon.key"


def make_keys(folder: str, force: bool = False, name: str = "daemon") -> tuple[str, str]:
    """Write a new key pair ``NAME.key_secret`` (owner-only) and ``NAME.key``. Returns (secret,
    public) paths. The daemon's pair is ``daemon``; a tenant's is its name."""
    if not zmq.has("curve"):
        raise ValueError("this libzmq has no CURVE support; install pyzmq's wheels")
    if not re.fullmatch(r"[A-Za-z0-9_.@-]{1,128}", name) or name.startswith("."):
        raise ValueError(f"key name {name!r}: use letters, digits and _.@- (a tenant's name)")
    os.makedirs(folder, exist_ok=True)
    secret_path = os.path.join(folder, f"{name}.key_secret")
    public_path = os.path.join(folder, f"{name}.key")
    if os.path.exists(secret_path) and not force:
        raise ValueError(f"{secret_path} exists: pass --force to replace it (clients holding the "
                         "old public key will no longer connect)")
    public, secret = zmq.curve_keypair()
    fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secret + b"\n")
    with open(public_path, "wb") as f:
        f.write(public + b"\n")
    return secret_path, public_path


def read_key(spec: str) -> bytes:
    """A z85 key given as the 40 characters themselves or as a file holding them."""
    raw = spec.encode() if isinstance(spec, str) else spec
    if len(raw.strip()) != 40 and os.path.exists(spec):
        with open(spec, "rb") as f:
            raw = f.read()
    raw = raw.strip()
    if len(raw) != 40:
        raise ValueError(f"{spec!r} is not a CURVE key (40 z85 characters) nor a file holding "
                         "one: make keys with 'gpusched keys'")
    try:
        zmq.utils.z85.decode(raw)
    except Exception:
        raise ValueError(f"{spec!r} is not valid z85: make keys with 'gpusched keys'") from None
    return raw
