"""The cluster's controller: one named Ray actor (``gpusched-controller``, on the head node, no
CPU held) that starts a daemon per GPU, applies placements, watches health, recovers, and serves
the directory clients route by.

- **Daemons**: one ``DaemonHost`` actor per GPU of every live node (``num_gpus=1, num_cpus=0``,
  detached, named ``gpusched-daemon-NN``, restarted by Ray on failure, placed on its node with
  soft affinity so that it restarts elsewhere when its node is gone and a GPU is free).
- **Health**: every ``health_period_s`` each daemon actor is asked for its ``info``; one that has
  not answered for ``down_after_s`` is down. One that answers with another daemon id restarted:
  its replicas are admitted again.
- **Recovery** (``recovery.recover``): a down daemon's replicas move to a same-type spare, else
  spread over the model's live replicas (each daemon admits its larger set or refuses), else the
  whole workload is re-planned on the live GPUs (``gpusched.placement``) when it is known; what
  still has no live replica is reported unserved.
- **Directory**: a ROUTER socket (tcp, CURVE with the cluster's key) answering ``LOOKUP`` with
  every daemon, its health and its replicas (``protocol.py``), stamped with an epoch.

State that must outlive the controller (placement, models, directory port) is kept in Ray's
key-value store and read back when Ray restarts the controller. Plain methods return dicts with
an ``error`` key instead of raising: a Ray task error would carry a traceback to the CLI.
"""
from __future__ import annotations

import json
import logging
import threading
import time

from gpusched.cluster.recovery import Rep, numbered, recover, served

log = logging.getLogger("gpusched.cluster")

CONTROLLER = "gpusched-controller"
NAMESPACE = "gpusched"
DAEMON_PREFIX = "gpusched-daemon-"
KV_STATE = b"gpusched/cluster/state"


class _Daemon:
    __slots__ = (
        "alive",
        "asked",
        "gpu_type",
        "handle",
        "info",
        "key",
        "last_ok",
        "node_id",
        "pending",
        "restarts",
    )

    def __init__(self, key: str, node_id: str, gpu_type: str, handle=None):
        self.key, self.node_id, self.gpu_type, self.handle = key, node_id, gpu_type, handle
        self.info: dict = {}
        self.alive = False
        self.pending = None     # an info() call in flight
        self.asked = 0.0
        self.last_ok = 0.0
        self.restarts = 0


class Controller:
    """``cfg``: name, secret and public (the cluster's CURVE pair, z85), backend, gpu_type
    (default type of logical GPUs), policy, daemon_args, health_period_s, down_after_s,
    directory_port (0: any)."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.name = cfg.get("name", "gpusched")
        self.period = float(cfg.get("health_period_s", 0.25))
        self.down_after = float(cfg.get("down_after_s", 1.0))
        self.daemons: dict[str, _Daemon] = {}
        self.placement: dict[str, list[Rep]] = {}
        self.models: list[dict] = []       # the placed workload, for re-planning
        self.solver = "heuristic"
        self.admitting = True     # False: the placement is routes only (apply(..., admit=False))
        self.epoch = 1
        self.events: list[dict] = []
        self._predicted: dict[str, list[dict]] = {}   # daemon -> admission's predictions
        self.port = int(cfg.get("directory_port", 0))
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._restore()
        self._dir_ready = threading.Event()
        threading.Thread(target=self._serve_directory, daemon=True,
                         name="gpusched-directory").start()
        self._dir_ready.wait(10)
        threading.Thread(target=self._monitor, daemon=True, name="gpusched-monitor").start()

    # -- persistence ----------------------------------------------------------------------------
    def _kv(self):
        from ray.experimental import internal_kv
        return internal_kv

    def _save(self) -> None:
        state = {"port": self.port, "solver": self.solver, "models": self.models,
                 "admitting": self.admitting,
                 "placement": {k: [r.as_dict() for r in v] for k, v in self.placement.items()},
                 "daemons": {k: [d.node_id, d.gpu_type] for k, d in self.daemons.items()}}
        try:
            self._kv()._internal_kv_put(KV_STATE, json.dumps(state).encode(), overwrite=True,
                                        namespace=NAMESPACE)
        except Exception as e:  # noqa: BLE001
            log.warning("controller: cannot save state in Ray's KV store: %s", e)

    def _restore(self) -> None:
        import ray
        try:
            raw = self._kv()._internal_kv_get(KV_STATE, namespace=NAMESPACE)
        except Exception:  # noqa: BLE001
            raw = None
        if not raw:
            return
        state = json.loads(raw)
        self.port = state.get("port", self.port)
        self.solver = state.get("solver", "heuristic")
        self.admitting = state.get("admitting", True)
        self.models = state.get("models", [])
        self.placement = {k: [Rep.of(r) for r in v] for k, v in state.get("placement", {}).items()}
        for key, (node_id, gpu_type) in state.get("daemons", {}).items():
            try:
                h = ray.get_actor(key, namespace=NAMESPACE)
            except ValueError:
                h = None
            self.daemons[key] = _Daemon(key, node_id, gpu_type, h)
        self._event("controller restarted", daemons=len(self.daemons))

    def _event(self, what: str, **kw) -> None:
        self.events.append({"t": round(time.time(), 3), "event": what, **kw})
        del self.events[:-200]
        log.warning("controller: %s %s", what, kw or "")

    # -- daemons --------------------------------------------------------------------------------
    def up(self, timeout_s: float = 120.0) -> dict:
        """A daemon for every GPU of every live node (those missing only); waits until each
        answers. Idempotent."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from gpusched.cluster.gpu import node_gpu_type
        from gpusched.cluster.host import DaemonHost

        actor = ray.remote(DaemonHost)
        with self._lock:
            per_node: dict[str, int] = {}
            for d in self.daemons.values():
                per_node[d.node_id] = per_node.get(d.node_id, 0) + 1
            n = len(self.daemons)
            for node in ray.nodes():
                if not node.get("Alive"):
                    continue
                gpus = int(node["Resources"].get("GPU", 0))
                nid = node["NodeID"]
                gtype = node_gpu_type(node["Resources"], node.get("Labels") or {},
                                      self.cfg.get("gpu_type") or "T4")
                for _ in range(gpus - per_node.get(nid, 0)):
                    key = f"{DAEMON_PREFIX}{n:02d}"
                    n += 1
                    spec = {"key": key, "secret": self.cfg["secret"], "gpu_type": gtype,
                            "backend": self.cfg.get("backend", "sim"),
                            "policy": self.cfg.get("policy", "slo-srpt"),
                            "daemon_args": list(self.cfg.get("daemon_args", ())),
                            "log_level": self.cfg.get("log_level", "WARNING")}
                    h = actor.options(
                        name=key, namespace=NAMESPACE, lifetime="detached", num_gpus=1,
                        num_cpus=0, max_restarts=-1, max_task_retries=0,
                        scheduling_strategy=NodeAffinitySchedulingStrategy(nid, soft=True),
                    ).remote(spec)
                    self.daemons[key] = _Daemon(key, nid, gtype, h)
            self._save()
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            with self._lock:
                waiting = [k for k, d in self.daemons.items() if not d.alive]
            if not waiting:
                break
            time.sleep(0.2)
        st = self.status()
        if waiting:
            st["error"] = (f"{len(waiting)} daemon(s) did not start within {timeout_s:g} s "
                           f"({', '.join(waiting)}): see the Ray worker logs "
                           "(/tmp/ray/session_latest/logs/worker-*.err)")
        return st

    def _monitor(self) -> None:
        import ray
        while not self._stop.is_set():
            t0 = time.time()
            try:
                self._check(ray)
            except Exception:
                log.exception("controller: health check failed")
            self._stop.wait(max(0.0, self.period - (time.time() - t0)))

    def _check(self, ray) -> None:
        now = time.time()
        with self._lock:
            recs = list(self.daemons.values())
        refs = {}
        for d in recs:
            if d.handle is None:
                try:
                    d.handle = ray.get_actor(d.key, namespace=NAMESPACE)
                except ValueError:
                    continue
            if d.pending is None:
                d.pending = d.handle.info.remote()
                d.asked = now
            refs[d.pending] = d
        if refs:
            ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=self.period)
        else:
            ready = []
        changed, readmit = False, []
        now = time.time()
        with self._lock:
            for ref in ready:
                d = refs[ref]
                d.pending = None
                try:
                    info = ray.get(ref)
                except Exception as e:   # noqa: BLE001 (the actor died (Ray restarts it) or is gone)
                    if d.alive:
                        d.alive = False
                        changed = True
                        self._event("daemon down", daemon=d.key, why=type(e).__name__)
                    if "ActorDiedError" in type(e).__name__ or "not found" in str(e):
                        d.handle = None
                    continue
                old = d.info.get("daemon_id")
                if old and info["daemon_id"] != old:
                    d.restarts += 1
                    self._event("daemon restarted", daemon=d.key, node=info["node_id"][:12])
                    if self.placement.get(d.key):
                        readmit.append(d.key)
                if not info.get("alive", True):
                    continue
                if not d.alive or d.info.get("endpoint") != info["endpoint"] or \
                        old != info["daemon_id"]:
                    changed = True
                if not d.alive:
                    self._event("daemon up", daemon=d.key, endpoint=info["endpoint"])
                d.info, d.alive, d.last_ok = info, True, now
                d.node_id = info["node_id"]
                if info["gpu"].get("physical"):
                    d.gpu_type = info["gpu"]["type"]
            for d in recs:
                if d.alive and d.pending is not None and now - d.asked > self.down_after:
                    d.alive = False
                    changed = True
                    self._event("daemon down", daemon=d.key,
                                why=f"no answer for {now - d.asked:.1f} s")
        for key in readmit:
            self._admit_one(key)
        if changed:
            with self._lock:
                self.epoch += 1
            self._recover()

    def _alive(self) -> set[str]:
        return {k for k, d in self.daemons.items() if d.alive}

    def _client(self, key: str):
        from client_lib import Client
        d = self.daemons[key]
        # the first ADMIT loads the daemon's profiles and interference model: seconds
        return Client(d.info["endpoint"], tenant="gpusched-cluster", timeout=30,
                      server_key=self.cfg["public"])

    def _admit_one(self, key: str, reps: list[Rep] | None = None) -> list[dict]:
        reps = self.placement.get(key, []) if reps is None else reps
        if not reps or not self.admitting:
            return []
        with self._client(key) as c:
            return c.admit([r.admit() for r in reps], replace=True)

    def _recover(self) -> None:
        with self._lock:
            alive = self._alive()
            types = {k: d.gpu_type for k, d in self.daemons.items()}
            rec = recover(self.placement, types, alive)
            if rec.empty:
                return
        if rec.moves:
            self._event("replicas moved to spares", moves=rec.moves)
        applied = self._apply_sets(rec.changed)
        if applied.get("error") or rec.lost:
            why = applied.get("error") or f"{len(rec.lost)} replica(s) have no live replica left"
            self._event("re-planning on the live GPUs", why=why)
            out = self._replan()
            if out.get("error"):
                self._event("re-plan failed", error=out["error"])
        else:
            self._event("recovered", moved=len(rec.moves),
                        spread=sorted(k for k in rec.changed if k not in rec.moves.values()
                                      and self.placement.get(k)))
        with self._lock:
            self.epoch += 1
            self._save()

    def _apply_sets(self, sets: dict[str, list[Rep]]) -> dict:
        """Admit each daemon's new set (replace), all daemons at once; all or none: on a
        refusal the daemons already changed get their old sets back, and the placement stays
        as it was."""
        from concurrent.futures import ThreadPoolExecutor
        old = {k: list(self.placement.get(k, [])) for k in sets}
        todo = {k: reps for k, reps in sets.items() if reps and k in self._alive()}
        results: dict[str, object] = {}

        def admit(key):
            try:
                results[key] = self._admit_one(key, todo[key])
            except Exception as e:  # noqa: BLE001
                results[key] = e

        with ThreadPoolExecutor(max_workers=max(1, min(16, len(todo)))) as pool:
            list(pool.map(admit, todo))
        refused = sorted(k for k, r in results.items() if isinstance(r, Exception))
        if refused:
            for k, r in results.items():
                if not isinstance(r, Exception) and old[k]:
                    try:
                        self._admit_one(k, old[k])
                    except Exception:
                        log.exception("controller: restoring %s", k)
            k = refused[0]
            return {"error": f"{k} ({self.daemons[k].gpu_type}) refused: {results[k]}"
                    + (f" (and {len(refused) - 1} more daemon(s))" if len(refused) > 1 else "")
                    + "; the cluster's placement is unchanged", "daemon": k}
        predicted = {k: r for k, r in results.items()}
        with self._lock:
            for key, reps in sets.items():
                self.placement[key] = list(reps)
            self._predicted.update(predicted)
        return {"admitted": predicted}

    def _replan(self) -> dict:
        if not self.models:
            return {"error": "the placement was applied without its models, so it cannot be "
                    "re-planned; place it again ('gpusched place MODELS.yaml --cluster')"}
        from gpusched.placement.solvers import place
        from gpusched.placement.spec import ModelSpec
        models = tuple(ModelSpec(m["name"], m["model"], m["rate"], m["slo_ms"],
                                 tuple(m["batches"])) for m in self.models)
        pool = self.pool()
        if not pool:
            return {"error": "no live GPU to re-plan on: the placement is admitted again as "
                    "its daemons restart"}
        try:
            from gpusched.placement.plan import report
            out = report(place(models, _pool_types(pool, unlimited=True), self.solver), models)
        except Exception as e:  # noqa: BLE001
            return {"error": f"re-planning failed: {e}"}
        return self._assign(out, pool)

    def pool(self) -> dict[str, int]:
        """Live GPUs per type."""
        out: dict[str, int] = {}
        with self._lock:
            for d in self.daemons.values():
                if d.alive:
                    out[d.gpu_type] = out.get(d.gpu_type, 0) + 1
        return out

    # -- placement ------------------------------------------------------------------------------
    def apply(self, report: dict, models: list[dict] | None = None, solver: str = "heuristic",
              admit: bool = True) -> dict:
        """Admit a plan (``gpusched place --json``'s report; its GPUs are matched to live
        daemons of their type) and keep it as the placement to recover. ``models``: the
        workload it was planned for (name, model, rate, slo_ms, batches), to re-plan with.
        ``admit=False``: routes only, no daemon is asked (a placement the interference model
        would refuse, or models it does not know: the benchmark's load uses it)."""
        prev = self.admitting
        self.admitting = admit
        res = self._assign(report, self.pool())
        if res.get("error"):
            self.admitting = prev
        if not res.get("error"):
            with self._lock:
                if models is not None:
                    self.models, self.solver = models, solver
                self.epoch += 1
                self._save()
            self._event("placement applied", gpus=len(report.get("assignments", [])))
        return res

    def _assign(self, report: dict, pool: dict[str, int]) -> dict:
        need: dict[str, int] = {}
        for a in report.get("assignments", []):
            need[a["type"]] = need.get(a["type"], 0) + 1
        short = {t: n - pool.get(t, 0) for t, n in need.items() if n > pool.get(t, 0)}
        if short:
            have = ", ".join(f"{t}: {n}" for t, n in sorted(pool.items())) or "none"
            return {"error": "the plan needs " + ", ".join(
                f"{need[t]} {t} but the cluster has {pool.get(t, 0)} live ({n} missing)"
                for t, n in sorted(short.items())) + f" (live GPUs: {have}); add GPUs or "
                "lower the rates", "missing": short}
        with self._lock:
            # prefer the daemon that already holds the same set: nothing moves needlessly
            free = sorted(k for k in self._alive())
            chosen: dict[int, str] = {}
            for n, a in enumerate(report["assignments"]):
                want = sorted((r["model"], r["zoo_model"], int(r["batch"]))
                              for r in a["replicas"])
                for k in free:
                    have = sorted((r.name, r.zoo_model, r.batch) for r in self.placement.get(k, []))
                    if self.daemons[k].gpu_type == a["type"] and have == want:
                        chosen[n] = k
                        free.remove(k)
                        break
            for n, a in enumerate(report["assignments"]):
                if n in chosen:
                    continue
                k = next(k for k in free if self.daemons[k].gpu_type == a["type"])
                chosen[n] = k
                free.remove(k)
        sets = {k: [] for k in self.placement}
        for n, a in enumerate(report["assignments"]):
            sets[chosen[n]] = numbered([Rep.of(r) for r in a["replicas"]])
        res = self._apply_sets(sets)
        if res.get("error"):
            return res
        applied = [{"gpu": n, "daemon": chosen[n], "type": a["type"],
                    "endpoint": self.daemons[chosen[n]].info.get("endpoint", ""),
                    "node_id": self.daemons[chosen[n]].node_id,
                    "admitted": res["admitted"].get(chosen[n], [])}
                   for n, a in enumerate(report["assignments"])]
        return {"applied": applied}

    # -- reading ----------------------------------------------------------------------------------
    def directory(self) -> dict:
        with self._lock:
            alive = self._alive()
            pred = self._predicted
            daemons = []
            for k, d in sorted(self.daemons.items()):
                lat = {p["name"]: p["predicted_latency_ms"] for p in pred.get(k, [])}
                gpu = d.info.get("gpu", {})
                daemons.append({
                    "key": k, "endpoint": d.info.get("endpoint", ""), "node_id": d.node_id,
                    "gpu_type": d.gpu_type,
                    "gpu_memory_mb": float(gpu.get("memory_mb", 0.0)),
                    "gpu_uuid": gpu.get("uuid", ""), "gpu_visible": gpu.get("visible", ""),
                    "daemon_id": d.info.get("daemon_id", ""), "alive": d.alive,
                    "restarts": d.restarts,
                    "replicas": [{"model": r.name, "zoo_model": r.zoo_model, "batch": r.batch,
                                  "rate": r.rate, "slo_ms": r.slo_ms,
                                  "predicted_latency_ms": lat.get(r.admitted_name, 0.0)}
                                 for r in self.placement.get(k, [])]})
            unserved = sorted(m for m, rate in served(self.placement, alive).items() if rate <= 0)
            return {"epoch": self.epoch, "cluster": self.name, "daemons": daemons,
                    "unserved": unserved}

    def status(self) -> dict:
        import ray
        nodes = []
        for n in ray.nodes():
            labels = {k: v for k, v in (n.get("Labels") or {}).items()
                      if not k.startswith("ray.io/")}
            nodes.append({"node_id": n["NodeID"], "alive": bool(n.get("Alive")),
                          "address": n.get("NodeManagerAddress", ""), "labels": labels,
                          "gpus": int(n.get("Resources", {}).get("GPU", 0))})
        d = self.directory()
        d.update(nodes=nodes, directory_port=self.port, events=self.events[-20:],
                 admitted=self.admitting,
                 models=[m["name"] for m in self.models], server_key=self.cfg["public"])
        return d

    def info(self) -> dict:
        return {"directory_port": self.port, "epoch": self.epoch, "name": self.name}

    def shutdown(self) -> dict:
        """Stop every daemon actor (no restart) and forget the state."""
        import ray
        self._stop.set()
        killed = []
        with self._lock:
            for k, d in self.daemons.items():
                h = d.handle
                if h is None:
                    try:
                        h = ray.get_actor(k, namespace=NAMESPACE)
                    except ValueError:
                        continue
                ray.kill(h, no_restart=True)
                killed.append(k)
            self.daemons.clear()
            try:
                self._kv()._internal_kv_del(KV_STATE, namespace=NAMESPACE)
            except Exception:  # noqa: BLE001, S110
                pass
        return {"stopped": killed}

    def kill_daemon(self, key: str) -> dict:
        """Kill one daemon process (SIGKILL), as a crash would (tests and the benchmark)."""
        import ray
        return {"pid": ray.get(self.daemons[key].handle.kill_daemon.remote(), timeout=10)}

    # -- the directory service ------------------------------------------------------------------
    def _serve_directory(self) -> None:
        import zmq

        from gpusched.cluster import protocol as CP
        from scheduler_daemon.transport.sockets import make_socket
        ctx = zmq.Context.instance()
        sock = make_socket(ctx, zmq.ROUTER, f"tcp://*:{self.port or '*'}", bind=True,
                           max_frame=1 << 20, curve_secret=self.cfg["secret"].encode())
        self.port = int(sock.getsockopt(zmq.LAST_ENDPOINT).decode().rsplit(":", 1)[1])
        self._dir_ready.set()
        with self._lock:
            self._save()
        cache = (0, None)
        while not self._stop.is_set():
            if not sock.poll(200):
                continue
            frames = sock.recv_multipart()
            ident, rest = frames[0], frames[1:]
            try:
                if len(rest) != 2:
                    raise CP.ProtocolError("BAD_FRAME", "expected (type, body)")
                msg = CP.decode(rest[0], rest[1], CP.REQUESTS)
                if msg.version != CP.CLUSTER_PROTOCOL_VERSION:
                    raise CP.ProtocolError("VERSION", f"directory protocol "
                                           f"{CP.CLUSTER_PROTOCOL_VERSION}, the client speaks "
                                           f"{msg.version}: use the same gpusched version")
                if cache[0] != self.epoch or cache[1] is None:
                    d = self.directory()
                    cache = (d["epoch"], d)
                d = cache[1]
                reply = CP.Directory(req_id=msg.req_id, epoch=d["epoch"], cluster=d["cluster"],
                                     unserved=d["unserved"],
                                     daemons=[CP.DaemonInfo(
                                         **{**x, "replicas": [CP.ReplicaInfo(**r)
                                                              for r in x["replicas"]]})
                                              for x in d["daemons"]])
            except CP.ProtocolError as e:
                reply = CP.Error(req_id=0, code=e.code, message=e.message)
            sock.send_multipart([ident, *CP.encode(reply)])
        sock.close(0)


def _pool_types(pool: dict[str, int], unlimited: bool = False):
    from gpusched.placement.pool import DEFAULT_PRICE, GpuType
    return tuple(GpuType(t, 100_000 if unlimited else n, DEFAULT_PRICE.get(t, 1.0))
                 for t, n in sorted(pool.items()) if t in DEFAULT_PRICE)
