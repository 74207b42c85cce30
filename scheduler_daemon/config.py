"""Daemon options (one object, filled by the CLI or by tests)."""
from __future__ import annotations

from dataclasses import dataclass, field

from .sockets import DEFAULT_MAX_FRAME, default_endpoint


@dataclass
class DaemonLimits:
    max_frame_bytes: int = DEFAULT_MAX_FRAME   # per frame, enforced by libzmq
    max_input_bytes: int = 256 * 1024 * 1024   # summed input frames of one job
    max_inputs: int = 64                       # tensors per job
    max_kernels: int = 100_000                 # kernels per model
    max_models: int = 256                      # models per tenant
    max_queued: int = 20_000                   # unfinished jobs per tenant
    max_tenant_bytes: int = 1024 * 1024 * 1024  # input bytes held for a tenant's unfinished jobs


@dataclass
class DaemonConfig:
    endpoint: str = field(default_factory=default_endpoint)
    backend: str = "auto"          # auto | sim | fluid | torch
    policy: str = "slo-srpt"
    gpu_spec: str = "T4"           # preset of the simulated GPU (and resources for torch)
    shed: bool = False             # slo policy: drop (True) or flag (False) hopeless jobs
    max_extra: int = 2             # kernels dispatched beyond free SM resources
    speed: float = 1.0             # simulated device: duration multiplier (0 = zero-duration)
    hw_queues: int = 8             # simulated GPU: hardware queues (CUDA_DEVICE_MAX_CONNECTIONS)
    torch_device: str | None = None  # torch backend: cpu, cuda, cuda:1 (default: auto)
    heartbeat_s: float = 0.25      # clients ping this often
    client_timeout_s: float = 5.0  # silent this long (20 missed heartbeats): the client is gone
    disconnect_grace_s: float = 0.5  # its connection closed: gone unless it speaks within this
    drain_grace_s: float = 10.0    # on SIGTERM, how long started jobs may run on
    token: str = ""                # if set, clients must present it in HELLO
    curve_secret: bytes | None = None  # CURVE secret key: encrypt every connection
    metrics_port: int | None = None  # serve Prometheus metrics on 127.0.0.1:PORT (0: any)
    limits: DaemonLimits = field(default_factory=DaemonLimits)
