"""Which replica runs a job: the router's decision and its bookkeeping, pure.

No I/O, no clock, no threads: the live cluster client (``cluster/client.py``) and the
virtual-time simulation over 1,000 GPUs (``cluster/sim.py``) drive this same object, passing
``now`` and telling it what happened (a job finished, a daemon died or came back, the routes
changed). It answers with what to send where.

Model of a daemon (one GPU): the router holds the jobs it bound to a daemon in that daemon's
queue and sends at most ``window`` of them at a time. A job is *not started* while the router
holds it, or once sent until the daemon says it queued it (ACCEPTED): the daemon never saw it.
Once accepted it counts as *started* (the daemon starts what it is given at once while its queue
stays this short). When a daemon dies, its not-started jobs are routed again to the survivors
and its started ones fail (they may have run: running them again silently could run them
twice). Jobs finishing free window slots, and the held jobs go out in order.

Policies (``POLICIES``), each choosing among the live daemons that serve the job's model:

- ``expected-completion``: the daemon whose queue would finish the job first, counting the work
  this router bound there and not yet seen finish (its estimate per (model, daemon), learned
  from observed service times), the work other routers put there (``set_external``, from the
  daemon's STATUS), and the job's own service time there. One vectorised argmin.
- ``random``: uniformly at random, blind to load.
- ``round-robin``: in turn, per model, blind to load.
"""
from __future__ import annotations

import random
from collections import deque

import numpy as np

POLICIES = ("expected-completion", "random", "round-robin")


class NoReplica(LookupError):
    """No live daemon serves the model: the message says whether none ever did, or why not
    now, and what to do."""


class RouteJob:
    """The router's record of one job: which daemon it is bound to, sent or held, and the work
    it was charged there."""
    __slots__ = ("acked", "daemon", "est", "model", "sent", "token")

    def __init__(self, token, model: str):
        self.token, self.model = token, model
        self.daemon = -1
        self.est = 0.0
        self.sent = False
        self.acked = False


class Router:
    def __init__(self, policy: str = "expected-completion", window: int = 4, seed: int = 0,
                 learn: float = 0.2, prior_s: float = 0.01):
        if policy not in POLICIES:
            raise ValueError(f"unknown routing policy {policy!r}: choose from "
                             f"{', '.join(POLICIES)}")
        if window < 1:
            raise ValueError(f"window must be >= 1 job in flight per daemon, got {window}")
        if not 0 < learn <= 1:
            raise ValueError(f"learn must be in (0, 1], got {learn}")
        self.policy = policy
        self.window = window
        self.learn = learn
        self.prior_s = prior_s
        self._rng = random.Random(seed)
        self.keys: list[str] = []             # daemon index -> key
        self.index: dict[str, int] = {}
        self.alive: list[bool] = []
        self.work = np.zeros(0)               # seconds of work bound there, not yet finished
        self.external = np.zeros(0)           # seconds of other routers' work there
        self.load = np.zeros(0)               # work + external: what a new job waits behind
        self.inflight: list[int] = []         # sent, not yet finished
        self.held: list[deque] = []           # bound, not yet sent
        self.routes: dict[str, dict[int, float]] = {}  # model -> {daemon: estimate s}
        self._est: dict[str, np.ndarray] = {}          # model -> estimate per daemon index
        self._cand: dict[str, np.ndarray] = {}         # model -> live daemons serving it
        self._ect: dict[str, np.ndarray] = {}          # model -> estimate, inf where it cannot go
        self._rr: dict[str, int] = {}
        self.jobs: dict[object, RouteJob] = {}
        self.decisions = 0

    # -- daemons and routes -------------------------------------------------------------------
    def add_daemon(self, key: str) -> int:
        """Known from now on (alive); returns its index. Idempotent."""
        i = self.index.get(key)
        if i is not None:
            return i
        i = len(self.keys)
        self.keys.append(key)
        self.index[key] = i
        self.alive.append(True)
        self.inflight.append(0)
        self.held.append(deque())
        self.work = np.append(self.work, 0.0)
        self.external = np.append(self.external, 0.0)
        self.load = np.append(self.load, 0.0)
        for m, est in self._est.items():
            self._est[m] = np.append(est, np.inf)
        for m, ect in self._ect.items():
            self._ect[m] = np.append(ect, np.inf)
        return i

    def set_routes(self, routes: dict[str, dict[str, float]]) -> None:
        """The models each daemon serves: ``{model: {daemon key: prior service time s}}``
        (the prior is kept once a time has been learned). Replaces the previous table; jobs
        already bound stay where they are (a daemon that no longer serves their model still
        finishes what it holds)."""
        new: dict[str, dict[int, float]] = {}
        for model, daemons in routes.items():
            new[model] = {self.add_daemon(k): float(s) for k, s in daemons.items()}
        n = len(self.keys)
        for model, daemons in new.items():
            old = self._est.get(model)
            est = np.full(n, np.inf)
            for i, prior in daemons.items():
                learned = old is not None and i < len(old) and np.isfinite(old[i]) and \
                    i in self.routes.get(model, {})
                est[i] = old[i] if learned else (prior if prior > 0 else self.prior_s)
            self._est[model] = est
        self.routes = new
        for model in list(self._est):
            if model not in new:
                del self._est[model]
        self._refresh()

    def _refresh(self) -> None:
        self._cand = {m: np.array(sorted(i for i in ds if self.alive[i]), dtype=np.int64)
                      for m, ds in self.routes.items()}
        alive = np.array(self.alive, dtype=bool)
        self._ect = {m: np.where(alive, est, np.inf) for m, est in self._est.items()}

    def mark_down(self, key: str) -> tuple[list[tuple[str, object]], list[object],
                                           list[tuple[object, NoReplica]]]:
        """The daemon died (or stopped answering). Returns ``(send, failed, unroutable)``:
        its not-started jobs routed again (``(daemon key, token)`` to send now), the tokens of
        its started jobs (the caller fails them), and not-started jobs no live daemon can take
        (with the error to fail them with). A second call for a daemon already down does
        nothing."""
        i = self.index.get(key)
        if i is None or not self.alive[i]:
            return [], [], []
        self.alive[i] = False
        self._refresh()
        failed = [t for t, j in self.jobs.items() if j.daemon == i and j.acked]
        for t in failed:
            self._forget(self.jobs.pop(t))
        unacked = [j for j in self.jobs.values() if j.daemon == i and j.sent]
        held, self.held[i] = unacked + list(self.held[i]), deque()
        send: list[tuple[str, object]] = []
        unroutable: list[tuple[object, NoReplica]] = []
        for job in held:
            self._forget(job)
            del self.jobs[job.token]
            try:
                send.extend(self.submit(job.token, job.model))
            except NoReplica as e:
                unroutable.append((job.token, e))
        self.inflight[i] = 0
        self.work[i] = self.external[i] = self.load[i] = 0.0
        return send, failed, unroutable

    def mark_up(self, key: str) -> None:
        """The daemon is back (restarted): it takes jobs again, with an empty queue."""
        i = self.add_daemon(key)
        if not self.alive[i]:
            self.alive[i] = True
            self.inflight[i] = 0
            self.work[i] = self.external[i] = self.load[i] = 0.0
            self._refresh()

    def set_external(self, key: str, jobs: int, mean_s: float | None = None) -> None:
        """Jobs at the daemon that other routers sent (from its STATUS: its unfinished jobs
        less those this router has sent there), charged at ``mean_s`` each (default: the mean
        estimate of the models it serves)."""
        i = self.index.get(key)
        if i is None:
            return
        if mean_s is None:
            ests = [e[i] for e in self._est.values() if np.isfinite(e[i])]
            mean_s = sum(ests) / len(ests) if ests else self.prior_s
        self.external[i] = max(0, jobs) * mean_s
        self.load[i] = self.work[i] + self.external[i]

    # -- jobs ---------------------------------------------------------------------------------
    def choose(self, model: str) -> int:
        """The daemon (index) the policy picks for a job of ``model`` now."""
        cand = self._cand.get(model)
        if cand is None or not len(cand):
            raise self._no_replica(model)
        self.decisions += 1
        if len(cand) == 1:
            return int(cand[0])
        if self.policy == "expected-completion":
            # one add and one argmin over every daemon (inf where the model cannot go)
            return int(np.argmin(self.load + self._ect[model]))
        if self.policy == "random":
            return int(cand[self._rng.randrange(len(cand))])
        n = self._rr.get(model, 0)
        self._rr[model] = n + 1
        return int(cand[n % len(cand)])

    def submit(self, token, model: str) -> list[tuple[str, object]]:
        """A new job: bind it to a daemon; returns ``[(daemon key, token)]`` if it goes out now
        (else it is held until a slot frees). Raises ``NoReplica``."""
        if token in self.jobs:
            raise ValueError(f"job {token!r} is already routed")
        i = self.choose(model)
        job = RouteJob(token, model)
        job.daemon = i
        job.est = float(self._est[model][i])
        self.jobs[token] = job
        self.work[i] += job.est
        self.load[i] += job.est
        if self.inflight[i] < self.window:
            job.sent = True
            self.inflight[i] += 1
            return [(self.keys[i], token)]
        self.held[i].append(job)
        return []

    def accepted(self, token) -> None:
        """The daemon queued the job (ACCEPTED): from now on it counts as started there."""
        job = self.jobs.get(token)
        if job is not None and job.sent:
            job.acked = True

    def finished(self, token, service_s: float | None = None) -> list[tuple[str, object]]:
        """A sent job got its answer (done or an error of its own); ``service_s`` its observed
        service time, learned for its (model, daemon). Returns what goes out in its place."""
        job = self.jobs.pop(token, None)
        if job is None:
            return []
        i = job.daemon
        self._forget(job)
        if service_s is not None and service_s >= 0:
            est = self._est.get(job.model)
            if est is not None and np.isfinite(est[i]):
                est[i] += self.learn * (service_s - est[i])
                if self.alive[i]:
                    self._ect[job.model][i] = est[i]
        return self._drain(i)

    def withdraw(self, token) -> list[tuple[str, object]]:
        """Forget a job (cancelled by its caller): a held one is dropped, a sent one frees its
        slot. Returns what goes out in its place."""
        job = self.jobs.pop(token, None)
        if job is None:
            return []
        if not job.sent:
            try:
                self.held[job.daemon].remove(job)
            except ValueError:
                pass
        self._forget(job)
        return self._drain(job.daemon)

    def _forget(self, job: RouteJob) -> None:
        i = job.daemon
        self.work[i] = max(0.0, self.work[i] - job.est)
        self.load[i] = self.work[i] + self.external[i]
        if job.sent:
            self.inflight[i] -= 1

    def _drain(self, i: int) -> list[tuple[str, object]]:
        out = []
        q = self.held[i]
        while q and self.inflight[i] < self.window and self.alive[i]:
            job = q.popleft()
            job.sent = True
            self.inflight[i] += 1
            out.append((self.keys[i], job.token))
        return out

    # -- state --------------------------------------------------------------------------------
    def sent_to(self, key: str) -> list:
        """Tokens of the jobs sent to that daemon and not finished."""
        i = self.index.get(key)
        return [t for t, j in self.jobs.items() if j.daemon == i and j.sent]

    def is_sent(self, token) -> bool:
        job = self.jobs.get(token)
        return job is not None and job.sent

    def daemon_of(self, token) -> str | None:
        job = self.jobs.get(token)
        return None if job is None else self.keys[job.daemon]

    def held_count(self) -> int:
        return sum(len(q) for q in self.held)

    def estimate(self, model: str, key: str) -> float:
        return float(self._est[model][self.index[key]])

    def _no_replica(self, model: str) -> NoReplica:
        if model not in self.routes or not self.routes[model]:
            served = ", ".join(sorted(self.routes)) or "none"
            return NoReplica(f"no daemon serves model {model!r} (served: {served}): place it "
                             "first ('gpusched place MODELS.yaml --cluster')")
        down = ", ".join(self.keys[i] for i in sorted(self.routes[model]))
        return NoReplica(f"no live replica of model {model!r}: its daemons ({down}) are down; "
                         "they restart where the cluster has room, or re-place it on the GPUs "
                         "left ('gpusched place MODELS.yaml --cluster')")
