"""``gpusched cluster up|status|down``: a daemon on every GPU of a Ray cluster (docs/cluster.md)."""
from __future__ import annotations

import argparse
import json
import os

from gpusched.cli import choices

CLUSTER_HELP = """\
Run a gpusched daemon on every GPU of a Ray cluster: each the child of a named Ray actor that
holds the GPU (num_gpus=1, num_cpus=0) and is restarted on failure, listening on tcp with the
cluster's CURVE key. A controller actor watches them, re-admits placements after a restart,
moves replicas off lost GPUs, and serves the directory that clients route by.

examples:
  gpusched cluster up                            # a local Ray cluster (2 logical H100s)
  gpusched cluster up --nodes 3 --gpus-per-node 2 --gpu-type T4
  gpusched cluster up --address 10.0.0.5:6379    # an existing Ray cluster
  gpusched cluster status --json
  gpusched place examples/placement/models.yaml --cluster
  gpusched submit --cluster --rate 40 --duration 5
  gpusched cluster down
"""


def add_parser(sub) -> None:
    c = sub.add_parser("cluster", help="daemons on every GPU of a Ray cluster (up, status, down)",
                       description=CLUSTER_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    csub = c.add_subparsers(dest="cluster_cmd", metavar="ACTION")
    up = csub.add_parser("up", help="start the controller and a daemon per GPU")
    _address(up)
    up.add_argument("--nodes", type=int, default=1,
                    help="without --address: nodes of the local Ray cluster started")
    up.add_argument("--gpus-per-node", type=int, default=None,
                    help="without --address: GPUs per local node (default: the GPUs NVML "
                    "sees, else 2 logical GPUs)")
    up.add_argument("--gpu-type", default="H100", choices=choices.GPU_PRESETS,
                    help="the type of logical GPUs (a node's 'gpu-type' label or Ray's "
                    "accelerator_type resource wins; real GPUs are read through NVML)")
    up.add_argument("--backend", default="auto", choices=choices.BACKENDS,
                    help="the daemons' backend (auto: torch on a real GPU, else simulated)")
    up.add_argument("--policy", default="slo-srpt", choices=choices.POLICIES,
                    help="the daemons' scheduling policy")
    up.add_argument("--curve-secret", metavar="FILE",
                    help="the cluster's CURVE secret key (default: made once, kept in the "
                    "runtime dir; clients get the public key from the cluster file)")
    up.add_argument("--daemon-log-level", default="WARNING", choices=choices.LOG_LEVELS,
                    help="the daemons' logging level (their logs go to the Ray workers' logs)")
    up.add_argument("--timeout", type=float, default=180.0,
                    help="seconds to wait for every daemon to answer")
    up.add_argument("--json", action="store_true", help="print JSON instead of a table")
    st = csub.add_parser("status", help="nodes, GPUs, daemons, admitted models, health")
    _address(st)
    st.add_argument("--json", action="store_true", help="print JSON instead of a table")
    dn = csub.add_parser("down", help="stop the daemons and the controller (and a local Ray "
                         "cluster that 'up' started)")
    _address(dn)


def _address(p) -> None:
    p.add_argument("--address", help="the Ray cluster (HOST:PORT of its GCS; default: the one "
                   "in the cluster file that 'cluster up' wrote)")


def run(args) -> int:
    from gpusched.cluster.ops import ClusterError
    if args.cluster_cmd is None:
        raise ClusterError("say what to do: gpusched cluster up|status|down (see --help)")
    # a ClusterError is a ValueError: the CLI prints it as one line, exit 2
    return {"up": _up, "status": _status, "down": _down}[args.cluster_cmd](args)


def _keys(args) -> tuple[str, str]:
    import zmq

    from scheduler_daemon.transport.keys import make_keys, read_key
    from scheduler_daemon.transport.sockets import runtime_dir
    if args.curve_secret:
        secret = read_key(args.curve_secret)
    else:
        folder = os.path.join(runtime_dir(), "cluster-keys")
        path = os.path.join(folder, "cluster.key_secret")
        if not os.path.exists(path):
            make_keys(folder, name="cluster")
        secret = read_key(path)
    return secret.decode(), zmq.curve_public(secret).decode()


def _up(args) -> int:
    from gpusched.cluster import ops
    from scheduler_daemon.transport.sockets import runtime_dir

    if args.nodes < 1 or (args.gpus_per_node is not None and args.gpus_per_node < 1):
        raise ops.ClusterError("--nodes and --gpus-per-node must be >= 1")
    if args.timeout <= 0:
        raise ops.ClusterError("--timeout must be > 0")
    ray = ops.import_ray()
    local = None
    if args.address:
        ops.connect(args.address)
    else:
        prev = _previous()
        if prev and ops._reachable(prev.get("ray_address", "")) and (
                not prev.get("local") or all(ops._alive(p) for p in prev["local"]["pids"])):
            local = prev.get("local")   # up again: the cluster of the last 'up'
            ops.connect(prev["ray_address"])
        else:
            gpus = args.gpus_per_node or _visible_gpus() or 2
            local = ops.start_local(args.nodes, gpus, args.gpu_type,
                                    os.path.join(runtime_dir(), "cluster-logs"))
            ops.connect(local["address"])
            ops.wait_nodes(ray, args.nodes)
    secret, public = _keys(args)
    cfg = {"name": "gpusched", "secret": secret, "public": public, "backend": args.backend,
           "gpu_type": args.gpu_type, "policy": args.policy, "health_period_s": 0.25,
           "down_after_s": 1.0, "log_level": args.daemon_log_level}
    st = ops.up(ray, cfg, args.timeout)
    # a controller already running keeps its own key
    state = {"ray_address": ray.get_runtime_context().gcs_address, "namespace": "gpusched",
             "directory": st["directory"], "server_key": st.get("server_key", public),
             "local": local}
    path = ops.write_cluster_file(state)
    if args.json:
        print(json.dumps({**st, "cluster_file": path}, indent=2))
    else:
        _print_status(st)
        print(f"cluster file: {path} (clients: ClusterClient(), 'gpusched submit --cluster')")
    return 0


def _visible_gpus() -> int:
    try:
        from scheduler_daemon.devices.factory import visible_gpus
        return len(visible_gpus())
    except Exception:  # noqa: BLE001
        return 0


def _previous() -> dict | None:
    from gpusched.cluster import ops
    try:
        return ops.read_cluster_file()
    except ops.ClusterError:
        return None


def _status(args) -> int:
    from gpusched.cluster import ops
    ray = ops.connect(args.address)
    h = ops.controller(ray)
    st = ops.call(ray, h.status.remote(), 30)
    st["directory"] = ops.directory_endpoint(ray, st["directory_port"])
    if args.json:
        print(json.dumps(st, indent=2))
    else:
        _print_status(st)
    return 0


def _down(args) -> int:
    from gpusched.cluster import ops
    prev = _previous()
    ray = ops.connect(args.address)
    out = ops.down(ray)
    print(f"stopped {len(out['stopped'])} daemon(s) and the controller")
    ray.shutdown()
    if prev and prev.get("local") and not args.address:
        ops.stop_local(prev["local"]["pids"])
        print(f"stopped the local Ray cluster ({len(prev['local']['pids'])} node(s))")
    if prev is not None:
        try:
            os.remove(ops.cluster_file())
        except OSError:
            pass
    return 0


def _print_status(st: dict) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    con = Console()
    if not con.is_terminal:
        con = Console(width=160)
    nt = Table(title=f"Ray nodes ({sum(n['alive'] for n in st['nodes'])} alive)",
               box=box.SIMPLE_HEAD)
    for c in ("node", "address", "alive", "GPUs", "labels"):
        nt.add_column(c)
    for n in st["nodes"]:
        nt.add_row(n["node_id"][:12], n["address"], "yes" if n["alive"] else "no",
                   str(n["gpus"]), ", ".join(f"{k}={v}" for k, v in sorted(n["labels"].items())))
    con.print(nt)
    dt = Table(title=f"daemons (directory {st.get('directory', '')}, epoch {st['epoch']})",
               box=box.SIMPLE_HEAD)
    for c in ("daemon", "node", "GPU", "memory", "endpoint", "health", "restarts", "models"):
        dt.add_column(c, overflow="fold" if c == "models" else None)
    for d in st["daemons"]:
        dt.add_row(d["key"], d["node_id"][:12], d["gpu_type"] + (f" {d['gpu_uuid'][:12]}"
                                                                  if d["gpu_uuid"] else ""),
                   f"{d['gpu_memory_mb'] / 1024:.0f} GiB", d["endpoint"],
                   "up" if d["alive"] else "DOWN", str(d["restarts"]),
                   ", ".join(f"{r['model']} (b{r['batch']}, {r['rate']:g}/s)"
                             for r in d["replicas"]) or "-")
    con.print(dt)
    if st.get("unserved"):
        con.print(f"[bold red]unserved models (no live replica):[/] {', '.join(st['unserved'])}")
