"""The Ray actor that owns one GPU: it starts ``gpusched daemon`` as its child on that GPU and
reports where it listens. Ray restarts the actor when it dies (``max_restarts=-1``), and the
actor dies when its daemon does, so a dead daemon comes back the same way as a dead actor.

Run inside a Ray worker (``num_gpus=1, num_cpus=0``): Ray has set ``CUDA_VISIBLE_DEVICES`` to
the GPU it granted, and the daemon inherits it. The daemon listens on tcp on the node's address
with the cluster's CURVE key; an actor's children die with it (the raylet kills its process
group), so a lost actor leaves no daemon behind.
"""
from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

log = logging.getLogger("gpusched.cluster")


def _die_with_parent():
    """For the daemon child, before exec: SIGKILL when the actor's process dies, however it
    dies (the raylet kills an actor's process group, but a raylet that died itself cannot).
    Bound here, before the fork: the child only calls into libc (no import, no lock)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import functools
    import signal
    try:
        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except OSError:
        return None
    return functools.partial(prctl, 1, signal.SIGKILL)   # PR_SET_PDEATHSIG


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class DaemonHost:
    """``spec``: key, secret (the cluster's CURVE secret, z85), gpu_type (of a logical GPU),
    backend, policy, daemon_args (more ``gpusched daemon`` flags), log_level."""

    def __init__(self, spec: dict):
        import ray
        import zmq

        from gpusched.cluster.gpu import owned_gpu
        from gpusched.procs import wait_ready

        self.key = spec["key"]
        ctx = ray.get_runtime_context()
        self.node_id = ctx.get_node_id()
        self.restarted = bool(ctx.was_current_actor_reconstructed)
        self.gpu = owned_gpu(spec.get("gpu_type") or "T4")
        self.host = ray.util.get_node_ip_address()
        secret = spec["secret"].encode()
        self._dir = tempfile.mkdtemp(prefix="gpusched-daemon-")
        key_path = os.path.join(self._dir, "daemon.key_secret")
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secret + b"\n")
        public = zmq.curve_public(secret)
        backend = spec.get("backend") or "sim"
        args = ["--backend", backend, "--policy", spec.get("policy") or "slo-srpt",
                "--curve-secret", key_path, *spec.get("daemon_args", ())]
        if self.gpu["type"] in ("A100", "H100", "T4", "V100"):
            args += ["--gpu-spec", self.gpu["type"]]
        last = None
        preexec = _die_with_parent()
        for _ in range(3):   # a free port can be taken between the probe and the bind
            self.endpoint = f"tcp://{self.host}:{free_port(self.host)}"
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gpusched.cli", "--log-level",
                 spec.get("log_level") or "WARNING", "daemon", "--endpoint", self.endpoint,
                 *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                preexec_fn=preexec)  # noqa: PLW1509 (libc only, bound before the fork)
            try:
                wait_ready(self.endpoint, self.proc, timeout=60, server_key=public)
                break
            except RuntimeError as e:
                last = e
                if self.proc.poll() is None:
                    self.proc.kill()
        else:
            raise RuntimeError(f"daemon {self.key} did not start: {last}")
        self.daemon_id = self._hello(public)
        self.started = time.time()
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        # before the actor answers (and the directory shows the daemon): the daemon's loop is
        # busy for those seconds, and clients would take its silence for a death
        self.warm = self._warm(public)
        threading.Thread(target=self._watch, daemon=True).start()

    def _hello(self, public: bytes) -> str:
        from client_lib import Client
        with Client(self.endpoint, tenant="gpusched-cluster", timeout=10,
                    server_key=public.decode()) as c:
            return c.daemon_id

    def _warm(self, public: bytes) -> bool:
        """A daemon's first ADMIT loads the profiles and the interference model (seconds on a
        busy machine): one small ADMIT now, so that a placement or a recovery onto this GPU
        does not wait for it. Every placement replaces it (ADMIT with replace)."""
        from client_lib import Client
        try:
            with Client(self.endpoint, tenant="gpusched-cluster", timeout=60,
                        server_key=public.decode()) as c:
                c.admit([("gpusched-warmup", "resnet18", 1, 1.0, 1000.0)], replace=True)
            return True
        except Exception as e:  # noqa: BLE001 (a placement then just waits longer)
            sys.stderr.write(f"[{self.key}] admission warm-up failed: {e}\n")
            return False

    def _drain_stderr(self) -> None:
        for line in self.proc.stderr:   # the daemon's log goes to this worker's log file
            sys.stderr.write(f"[{self.key}] {line}")

    def _watch(self) -> None:
        code = self.proc.wait()
        sys.stderr.write(f"[{self.key}] daemon exited with {code}: the actor exits so that Ray "
                         "restarts it\n")
        sys.stderr.flush()
        os._exit(1)

    def info(self) -> dict:
        return {"key": self.key, "endpoint": self.endpoint, "node_id": self.node_id,
                "daemon_id": self.daemon_id, "pid": self.proc.pid, "gpu": self.gpu,
                "alive": self.proc.poll() is None, "restarted": self.restarted,
                "started": self.started, "warm": self.warm}

    def kill_daemon(self) -> int:
        """Kill the daemon (SIGKILL), as a crash would: the actor then exits and restarts."""
        self.proc.kill()
        return self.proc.pid
