"""What to do with the replicas of daemons that died: pure, shared by the controller (live) and
the simulation.

The placement is ``{daemon key: [Rep, ...]}``. When daemons die, in this order:

1. **move**: a dead daemon's whole replica set goes to a live daemon of the same GPU type that
   holds nothing (a spare): the same set on the same type, so the same prediction.
2. **spread**: a replica with live replicas of the same model elsewhere adds its rate to them,
   in proportion to their rates (each daemon then admits its larger set, or refuses).
3. **lost**: replicas neither can take: the caller re-plans the whole placement on the GPUs
   left (``place`` with the live pool), or reports the models unserved and how many GPUs are
   missing.

A daemon that comes back later holds nothing and is a spare for the next failure.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Rep:
    """One replica as a daemon admits it (the ADMIT fields). A plan may put two replicas of
    a model on one GPU: the second is ``copy`` 1, admitted as ``NAME@1`` (admission counts each
    replica's interference), routed to as ``NAME`` like the first."""
    name: str          # the model's name in the placement
    zoo_model: str
    batch: int
    rate: float        # requests/s planned for this replica
    slo_ms: float
    copy: int = 0

    @property
    def admitted_name(self) -> str:
        return f"{self.name}@{self.copy}" if self.copy else self.name

    def admit(self) -> tuple:
        return (self.admitted_name, self.zoo_model, self.batch, self.rate, self.slo_ms)

    def as_dict(self) -> dict:
        d = {"model": self.name, "zoo_model": self.zoo_model, "batch": self.batch,
             "rate": self.rate, "slo_ms": self.slo_ms}
        if self.copy:
            d["copy"] = self.copy
        return d

    @staticmethod
    def of(d: dict, copy: int | None = None) -> Rep:
        """From a plan report's replica (``gpusched place --json``)."""
        return Rep(str(d["model"]), str(d["zoo_model"]), int(d["batch"]), float(d["rate"]),
                   float(d["slo_ms"]), int(d.get("copy", 0) if copy is None else copy))


def numbered(reps: list[Rep]) -> list[Rep]:
    """The same replicas with a ``copy`` number for each repeat of a model on one GPU."""
    seen: dict[str, int] = {}
    out = []
    for r in reps:
        n = seen.get(r.name, 0)
        seen[r.name] = n + 1
        out.append(replace(r, copy=n))
    return out


@dataclass
class Recovery:
    moves: dict[str, str] = field(default_factory=dict)          # dead key -> spare key
    changed: dict[str, list[Rep]] = field(default_factory=dict)  # key -> its new replica set
    lost: list[Rep] = field(default_factory=list)                # nobody can take these

    @property
    def empty(self) -> bool:
        return not (self.moves or self.changed or self.lost)


def recover(placement: dict[str, list[Rep]], gpu_type: dict[str, str], alive: set[str]) -> Recovery:
    """The new replica sets after the daemons not in ``alive`` died (``gpu_type``: key -> GPU
    type of every daemon known). A dead daemon's set is emptied (in ``changed``) only as far
    as its replicas went elsewhere: what nobody could take stays there, to be admitted again
    if it restarts, and is listed in ``lost``."""
    out = Recovery()
    dead = [k for k, reps in placement.items() if reps and k not in alive]
    if not dead:
        return out
    spares = [k for k in sorted(alive) if not placement.get(k)]
    new = {k: list(v) for k, v in placement.items() if k in alive}
    orphans: list[tuple[str, Rep]] = []
    for k in sorted(dead):
        spare = next((s for s in spares if gpu_type.get(s) == gpu_type.get(k)), None)
        if spare is not None:
            spares.remove(spare)
            out.moves[k] = spare
            out.changed[spare] = new[spare] = list(placement[k])
            out.changed[k] = []
        else:
            orphans.extend((k, r) for r in placement[k])
    kept: dict[str, list[Rep]] = {}
    for k, rep in orphans:
        holders = [(h, i) for h, reps in sorted(new.items()) for i, r in enumerate(reps)
                   if r.name == rep.name]
        if not holders:
            out.lost.append(rep)
            kept.setdefault(k, []).append(rep)
            continue
        total = sum(new[h][i].rate for h, i in holders)
        for h, i in holders:
            r = new[h][i]
            share = r.rate / total if total > 0 else 1 / len(holders)
            new[h][i] = replace(r, rate=round(r.rate + rep.rate * share, 3))
            out.changed[h] = new[h]
    for k, _rep in orphans:
        if kept.get(k) != placement[k]:
            out.changed[k] = kept.get(k, [])
    return out


def served(placement: dict[str, list[Rep]], alive: set[str]) -> dict[str, float]:
    """Requests/s each model has on live daemons."""
    out: dict[str, float] = {}
    for k, reps in placement.items():
        for r in reps:
            out.setdefault(r.name, 0.0)
            if k in alive:
                out[r.name] += r.rate
    return out
