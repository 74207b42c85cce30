"""``gpusched daemon``: run the scheduler daemon in the foreground."""
from __future__ import annotations

import gc
import logging
import os

from gpusched.cli import choices
from gpusched.cli.common import UsageError, add_endpoint


def add_parser(sub) -> None:
    d = sub.add_parser("daemon", help="run the scheduler daemon in the foreground",
                       description="Run the scheduler daemon. SIGTERM/SIGINT drain it: queued "
                       "jobs are answered as cancelled, started ones get --drain-grace seconds "
                       "to finish; a second signal stops at once.")
    add_endpoint(d)
    d.add_argument("--backend", default="auto", choices=choices.BACKENDS,
                   help="auto: a GPU through torch if NVML sees one, else the simulated GPU")
    d.add_argument("--policy", default="slo-srpt", choices=choices.POLICIES,
                   help="scheduling policy (default: slo-srpt, shortest remaining first among jobs "
                   "that can still meet their SLO); the baselines "
                   "(cuda-ss, cuda-ms, mps, triton, clockwork, fifo-jbj, fifo-kbk) are for "
                   "experiments")
    d.add_argument("--gpu-spec", default="T4", choices=choices.GPU_PRESETS,
                   help="GPU preset of the simulated device (default T4)")
    d.add_argument("--hw-queues", type=int, default=32,
                   help="simulated GPU: hardware queues, CUDA_DEVICE_MAX_CONNECTIONS (1-32)")
    d.add_argument("--shed", action="store_true",
                   help="slo policy: drop jobs that can no longer meet their SLO (default: flag "
                   "them and run them after the others)")
    d.add_argument("--max-extra", type=int, default=2,
                   help="kernels dispatched beyond free SM resources (Paella: 2)")
    d.add_argument("--quantum-us", type=float, default=None, metavar="US",
                   help="torch and sim backends: one dispatch runs a job's next kernels "
                   "(ops) back to back: on a CPU all of them for a job alone in the queue, "
                   "else those whose measured times sum to at most this (per run out on the "
                   "sim and cuda backends, whose dispatches overlap; at most 64; a "
                   "model's first request goes one by one); a job the policy would pick first "
                   "stops a run at the next op on a CPU (on a GPU only before its ops are "
                   "queued; the simulated GPU's runs are queued at once, as CUDA's); paella "
                   "and fifo-kbk never run more than one; 0: every kernel its own dispatch "
                   "(default: 1000 on a CPU, 250 on a GPU, 120 on the simulated GPU, about 10x "
                   "the daemon's cost of one dispatch there)")
    d.add_argument("--speed", type=float, default=1.0,
                   help="sim and fluid devices: kernel duration multiplier (0 = zero-duration)")
    d.add_argument("--drain-grace", type=float, default=10.0,
                   help="seconds started jobs may run on after SIGTERM")
    d.add_argument("--torch-device", help="torch backend device, e.g. cpu, cuda, cuda:1 "
                   "(default: cuda if NVML sees a GPU and torch has CUDA, else cpu)")
    d.add_argument("--client-timeout", type=float, default=5.0,
                   help="seconds of silence after which a client's jobs are cancelled (a client "
                   "whose connection closes, e.g. a killed process, is dropped within ~0.75 s)")
    d.add_argument("--token", default=None, help="require this token in HELLO "
                   "(default: $GPUSCHED_TOKEN if set)")
    d.add_argument("--tenant-tokens", metavar="FILE", help="YAML 'tenant: token' lines: a "
                   "client may say HELLO as a tenant only with that tenant's token, and STATUS "
                   "shows it only its own tenant (instead of one shared --token)")
    d.add_argument("--max-queued", type=int, default=20_000,
                   help="unfinished jobs per tenant before submits are refused")
    d.add_argument("--max-frame-bytes", type=int, default=64 << 20,
                   help="largest frame accepted (libzmq drops a client that sends a larger one; "
                   "the client library refuses to send it with a clear error)")
    d.add_argument("--max-tenant-bytes", type=int, default=1 << 30,
                   help="input bytes held for one tenant's unfinished jobs")
    d.add_argument("--curve-secret", metavar="FILE", help="encrypt connections with this CURVE "
                   "secret key (make one with 'gpusched keys'); clients need daemon.key")
    d.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus metrics on http://ADDR:PORT/metrics "
                   "(default: none served)")
    d.add_argument("--metrics-addr", default="127.0.0.1",
                   help="address the metrics listen on; the endpoint has no credentials, so "
                   "anything but localhost shows every tenant's counts to that network")
    d.add_argument("--metrics-redact", action="store_true",
                   help="label metrics with keyed hashes of tenant and model names, not the names")
    d.add_argument("--tenant-keys", metavar="FILE", help="YAML 'tenant: CURVE public key' "
                   "lines (needs --curve-secret): only these keys may connect, and each only as "
                   "its tenant (make a tenant's pair with 'gpusched keys --client NAME')")
    d.add_argument("--max-connections", type=int, default=1024,
                   help="live connections; more are refused at the handshake")
    d.add_argument("--max-unauthenticated", type=int, default=64,
                   help="connections that have not said HELLO; more are refused at the handshake")
    d.add_argument("--max-op-work", type=float, default=0.0,
                   help="the most work one intercepted or registered-graph op may do (FLOPs, "
                   "or elements read and written); more is refused before it runs, since a "
                   "running op cannot be stopped (0: 1e11 on a CPU, 1e14 on a GPU)")
    d.add_argument("--max-compile-s", type=float, default=30.0,
                   help="seconds one tenant's CUDA compile may take in its sandbox (REGISTER_CUDA "
                   "source); a longer one is stopped and answered as a compile error")
    d.add_argument("--max-tenants", type=int, default=1024,
                   help="distinct tenant names when tenants are not fixed by --tenant-tokens or "
                   "--tenant-keys")


def _tenant_tokens(path):
    if not path:
        return {}
    from scheduler_daemon.server.config import load_tenant_tokens
    try:
        return load_tenant_tokens(path)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _tenant_keys(path, curve_secret):
    if not path:
        return {}
    if not curve_secret:
        raise UsageError("--tenant-keys needs --curve-secret: client keys are CURVE keys")
    from scheduler_daemon.server.config import load_tenant_keys
    try:
        return load_tenant_keys(path)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _loopback(endpoint: str) -> bool:
    host = endpoint[len("tcp://"):].rpartition(":")[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def _admission(gpu: str):
    """The daemon's ADMIT check for a GPU type: imported only when a plan is first admitted
    (it loads the profiles and the interference model)."""
    from gpusched.placement.admission import Admission
    return Admission(gpu)


def run(args) -> int:
    from scheduler_daemon.daemon import Daemon
    from scheduler_daemon.server.config import DaemonConfig
    from scheduler_daemon.transport.keys import read_key
    from scheduler_daemon.transport.sockets import check_endpoint, default_endpoint

    cfg = DaemonConfig(endpoint=check_endpoint(args.endpoint or default_endpoint()),
                       backend=args.backend, policy=args.policy, gpu_spec=args.gpu_spec,
                       shed=args.shed, max_extra=args.max_extra, speed=args.speed,
                       quantum_us=args.quantum_us,
                       torch_device=args.torch_device, client_timeout_s=args.client_timeout,
                       hw_queues=args.hw_queues, metrics_port=args.metrics_port,
                       drain_grace_s=args.drain_grace,
                       curve_secret=read_key(args.curve_secret) if args.curve_secret else None,
                       token=args.token if args.token is not None else os.environ.get("GPUSCHED_TOKEN", ""),
                       tenant_tokens=_tenant_tokens(args.tenant_tokens),
                       tenant_keys=_tenant_keys(args.tenant_keys, args.curve_secret),
                       metrics_addr=args.metrics_addr, metrics_redact=args.metrics_redact,
                       max_connections=args.max_connections,
                       max_unauthenticated=args.max_unauthenticated,
                       max_tenants=args.max_tenants, max_op_work=args.max_op_work,
                       max_compile_s=args.max_compile_s)
    if args.quantum_us is not None and not 0 <= args.quantum_us <= 1e6:
        raise UsageError("--quantum-us must be in [0, 1e6] (0: every op its own dispatch)")
    if args.max_op_work < 0:
        raise UsageError("--max-op-work must be >= 0 (0: the device's default)")
    if not 0 < args.max_compile_s <= 3600:
        raise UsageError("--max-compile-s must be in (0, 3600]")
    if min(args.max_connections, args.max_unauthenticated, args.max_tenants) < 1:
        raise UsageError("--max-connections, --max-unauthenticated and --max-tenants must be "
                         ">= 1")
    if cfg.endpoint.startswith("tcp://") and not cfg.curve_secret and \
            not _loopback(cfg.endpoint):
        logging.getLogger("gpusched.daemon").warning(
            "daemon: %s serves the network without encryption or client keys: anyone who can "
            "reach it can act as any tenant%s; pass --curve-secret (and --tenant-keys)",
            cfg.endpoint, "" if cfg.token or cfg.tenant_tokens else " (no token either)")
    if args.speed < 0 or args.max_extra < 0 or args.client_timeout <= 0:
        raise UsageError("--speed and --max-extra must be >= 0, --client-timeout > 0")
    if not 1 <= args.hw_queues <= 32:
        raise UsageError("--hw-queues must be 1..32 (CUDA_DEVICE_MAX_CONNECTIONS)")
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        raise UsageError("--metrics-port must be 0..65535")
    if args.drain_grace < 0:
        raise UsageError("--drain-grace must be >= 0")
    if args.max_queued < 1 or args.max_tenant_bytes < 1:
        raise UsageError("--max-queued and --max-tenant-bytes must be >= 1")
    cfg.limits.max_queued = args.max_queued
    cfg.limits.max_tenant_bytes = args.max_tenant_bytes
    if not 1024 <= args.max_frame_bytes <= 1 << 31:
        raise UsageError("--max-frame-bytes must be 1024..2147483648")
    cfg.limits.max_frame_bytes = args.max_frame_bytes
    daemon = Daemon(cfg, admission=_admission)
    daemon.install_signal_handlers()
    try:
        # what is alive now (modules, the device and what it imported) lives as long as this
        # process: frozen, a full collection does not walk it (with torch's lazily imported
        # modules in, one took ~30 ms, holding the GIL: a pause in every tenant's jobs). Here,
        # not in the library: it is the whole process's heap; and before bind, so that no
        # peer connects while the collection runs
        gc.collect()
        gc.freeze()
        daemon.bind()
        daemon.serve()
    finally:
        daemon.close()
    return 0
