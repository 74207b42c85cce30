"""Driver-side cluster operations: connect to Ray, start a local Ray cluster, bring the
controller and the daemons up, read their status, take them down; and the cluster file that
tells clients where the directory is.

The cluster file (``$GPUSCHED_CLUSTER``, else ``cluster.json`` in the per-user runtime dir) holds
the Ray address, the directory endpoint and the cluster's CURVE public key (not secret), and the
process ids of a local Ray cluster that ``gpusched cluster up`` started (so that ``down`` stops
exactly those). The CURVE secret stays in the key folder (owner-only) and in the actors.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

from gpusched.cluster.controller import CONTROLLER, NAMESPACE


class ClusterError(ValueError):
    """A mistake or a missing piece the user can fix: one line, exit code 2."""


RAY_MISSING = ("Ray is not installed: pip install -e '.[cluster]' (or 'make setup', which "
               "installs it)")


def cluster_file() -> str:
    env = os.environ.get("GPUSCHED_CLUSTER")
    if env:
        return env
    from scheduler_daemon.transport.sockets import runtime_dir
    return os.path.join(runtime_dir(), "cluster.json")


def read_cluster_file(path: str | None = None) -> dict:
    path = path or cluster_file()
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise ClusterError(f"no cluster file at {path}: start the cluster with 'gpusched cluster "
                           "up' (or pass --address / set GPUSCHED_CLUSTER)") from None
    except (OSError, ValueError) as e:
        raise ClusterError(f"cannot read the cluster file {path}: {e}") from None


def write_cluster_file(state: dict, path: str | None = None) -> str:
    path = path or cluster_file()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(state, f, indent=2)
    os.replace(tmp, path)
    return path


def import_ray():
    try:
        import ray
    except ImportError:
        raise ClusterError(RAY_MISSING) from None
    return ray


def _reachable(address: str, timeout: float = 3.0) -> bool:
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        return False
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def connect(address: str | None):
    """``ray.init`` on an existing cluster, quietly; ``ClusterError`` saying how to start one."""
    ray = import_ray()
    explicit = bool(address)
    if not address and not ray.is_initialized():
        address = read_cluster_file().get("ray_address")
    # HOST:PORT of a GCS (not "auto", not a Ray client URL): one this module can probe
    direct = bool(address) and address != "auto" and not address.startswith("ray://")
    # an address the user named is checked even when this process is already connected
    # (to another cluster, say): a wrong --address must never quietly use some other cluster
    if direct and not _reachable(address):
        raise ClusterError(f"no Ray cluster answers at {address}: start one ('ray start "
                           "--head', or 'gpusched cluster up' without --address) or pass its "
                           "address")
    if ray.is_initialized():
        current = ray.get_runtime_context().gcs_address
        if explicit and direct and address != current:
            raise ClusterError(f"this process is already connected to the Ray cluster at "
                               f"{current}, not {address}: run the command in a new process")
        return ray
    try:
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=False,
                 logging_level="ERROR", configure_logging=True)
    except (ConnectionError, RuntimeError) as e:
        raise ClusterError(f"cannot connect to the Ray cluster at {address}: {e}") from None
    return ray


def controller(ray, required: bool = True):
    try:
        return ray.get_actor(CONTROLLER, namespace=NAMESPACE)
    except ValueError:
        if required:
            raise ClusterError("gpusched is not running on this Ray cluster: run 'gpusched "
                               "cluster up' first") from None
        return None


def call(ray, ref, timeout: float = 120.0) -> dict:
    try:
        out = ray.get(ref, timeout=timeout)
    except ray.exceptions.GetTimeoutError:
        raise ClusterError(f"the cluster controller did not answer within {timeout:g} s") from None
    except ray.exceptions.RayActorError as e:
        raise ClusterError(f"the cluster controller died: {str(e).splitlines()[0]}") from None
    if isinstance(out, dict) and out.get("error"):
        raise ClusterError(out["error"])
    return out


# -- a local Ray cluster ------------------------------------------------------------------------
def _ray_cli() -> str:
    exe = os.path.join(os.path.dirname(sys.executable), "ray")
    return exe if os.path.exists(exe) else "ray"


HEALTH = {"health_check_period_ms": 500, "health_check_failure_threshold": 3}


def start_local(nodes: int, gpus_per_node: int, gpu_type: str, log_dir: str,
                object_store_mb: int = 80) -> dict:
    """Start a local Ray cluster of ``nodes`` nodes (one head), each with ``gpus_per_node`` GPUs
    (logical ones where the machine has fewer), region labels ``local-N``, tuned health checks
    (a lost node noticed in ~2.6 s instead of ~14 s). Returns its address and the pids of the
    ``ray start --block`` processes (SIGTERM stops each node)."""
    import_ray()
    os.makedirs(log_dir, exist_ok=True)
    common = ["--block", "--num-cpus", "1", "--num-gpus", str(gpus_per_node),
              "--object-store-memory", str(object_store_mb << 20), "--disable-usage-stats"]
    pids = []
    head_log = os.path.join(log_dir, "ray-head.log")
    with open(head_log, "w") as log:
        head = subprocess.Popen(
            [_ray_cli(), "start", "--head", "--port", "0", "--include-dashboard=false",
             "--system-config", json.dumps(HEALTH),
             "--labels", f"region=local-0,gpu-type={gpu_type}", *common],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    pids.append(head.pid)
    address = None
    deadline = time.time() + 60
    while time.time() < deadline and address is None:
        if head.poll() is not None:
            raise ClusterError(f"ray start failed (exit {head.returncode}); see {head_log}")
        with open(head_log) as f:
            for line in f:
                if "ray start --address='" in line:
                    address = line.split("'")[1]
                    break
        time.sleep(0.2)
    if address is None:
        stop_local(pids)
        raise ClusterError(f"the local Ray head did not start within 60 s; see {head_log}")
    for i in range(1, nodes):
        with open(os.path.join(log_dir, f"ray-node{i}.log"), "w") as log:
            p = subprocess.Popen([_ray_cli(), "start", "--address", address,
                                  "--labels", f"region=local-{i},gpu-type={gpu_type}", *common],
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        pids.append(p.pid)
    return {"address": address, "pids": pids, "log_dir": log_dir}


def stop_local(pids: list[int], timeout: float = 40.0) -> None:
    """SIGTERM each ``ray start --block`` we started (workers first, the head last)."""
    for pid in reversed(pids):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.time() + timeout
        while time.time() < deadline and _alive(pid):
            time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_nodes(ray, n: int, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if sum(1 for x in ray.nodes() if x.get("Alive")) >= n:
            return
        time.sleep(0.3)
    raise ClusterError(f"the local Ray cluster did not reach {n} nodes within {timeout:g} s")


# -- up / status / down ---------------------------------------------------------------------------
def start_controller(ray, cfg: dict):
    """The controller actor on the head node (created once; an existing one is reused)."""
    from gpusched.cluster.controller import Controller
    h = controller(ray, required=False)
    if h is not None:
        return h
    return ray.remote(Controller).options(
        name=CONTROLLER, namespace=NAMESPACE, lifetime="detached", num_cpus=0,
        max_restarts=-1, max_task_retries=0, resources={"node:__internal_head__": 0.001},
        get_if_exists=True).remote(cfg)


def up(ray, cfg: dict, timeout: float = 180.0) -> dict:
    """Controller and daemons up; returns the controller's status plus the directory
    endpoint (the head node's address and the directory port)."""
    h = start_controller(ray, cfg)
    st = call(ray, h.up.remote(timeout_s=timeout - 10), timeout)
    st["directory"] = directory_endpoint(ray, st["directory_port"])
    return st


def directory_endpoint(ray, port: int) -> str:
    head = next((n for n in ray.nodes() if n.get("Alive") and
                 "node:__internal_head__" in n.get("Resources", {})), None)
    host = head["NodeManagerAddress"] if head else "127.0.0.1"
    return f"tcp://{host}:{port}"


def down(ray) -> dict:
    h = controller(ray, required=False)
    if h is None:
        return {"stopped": []}
    out = call(ray, h.shutdown.remote(), 60)
    ray.kill(h, no_restart=True)
    return out
