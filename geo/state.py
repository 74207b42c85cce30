"""The geo service's state on disk: the fleet spec (jobs carry where they run), the objective,
the GPU counts of sites that are down, and the last plan and diff. Written atomically (temp
file, fsync, os.replace) after every re-plan, so a crash leaves the old or the new state.

A job placed by the arrival fast path is not worth rewriting the whole state (half a MB at
900 jobs: ~5 ms): its ``Arrival`` record (the job, its plan row, the new site rows and plan
totals) is appended to ``STATE.journal`` as one JSON line and fsynced (~1 ms), and loading
replays the journal over the state. Every full save empties the journal (the service also
saves when idle); records carry the event count, so one already in the state is skipped, and
a torn last line (a crash before its fsync, so never answered) is dropped.
"""
from __future__ import annotations

import logging
import os
import tempfile
from typing import Literal, Optional

import msgspec

from geo.plan import JobPlan, Plan, SitePlan
from geo.protocol import Change
from geo.spec import Count, GeoSpecError, Job, Spec, check_spec

log = logging.getLogger("geo.state")
STATE_VERSION = 1


class GeoState(msgspec.Struct, omit_defaults=False):
    spec: Spec
    objective: Literal["throughput", "cost", "makespan", "balance"] = "throughput"
    solver: Literal["auto", "cpsat", "decomposed"] = "auto"
    down: dict[str, dict[str, Count]] = {}  # site -> GPU type -> count before it went down
    events: int = 0
    plan: Optional[Plan] = None
    diff: list[Change] = []
    version: int = STATE_VERSION


class Arrival(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=False):
    """One job placed on arrival: what it changes in the state (``apply_arrival``)."""
    events: int  # the state's event count after it
    job: Job  # with ``running`` set
    job_plan: JobPlan
    sites: list[SitePlan]
    objective_value: float
    cost_per_hour: float
    makespan_h: float
    max_demand_supply: float
    solve_time_s: float
    diff: list[Change]


def arrival_record(state: GeoState, job: Job, plan: Plan, diff: list[Change]) -> Arrival:
    """The record of ``plan`` = ``state.plan`` plus ``job`` (from ``plan.add_arrival``)."""
    return Arrival(state.events + 1, job, plan.jobs[-1], plan.sites, plan.objective_value,
                   plan.cost_per_hour, plan.makespan_h, plan.max_demand_supply,
                   plan.solve_time_s, diff)


def apply_arrival(state: GeoState, a: Arrival) -> GeoState:
    """A new state with the arrival in it (``state`` is not changed)."""
    plan = msgspec.structs.replace(
        state.plan, jobs=[*state.plan.jobs, a.job_plan], sites=a.sites, solver="arrival",
        solve_time_s=a.solve_time_s, objective_value=a.objective_value, gap=None,
        cost_per_hour=a.cost_per_hour, makespan_h=a.makespan_h,
        max_demand_supply=a.max_demand_supply)
    spec = msgspec.structs.replace(state.spec, jobs=[*state.spec.jobs, a.job])
    return msgspec.structs.replace(state, spec=spec, plan=plan, diff=a.diff, events=a.events)


def journal_path(path: str) -> str:
    return path + ".journal"


def append_arrival(a: Arrival, path: str) -> None:
    """Append one record to the state's journal and fsync it (the directory too when the
    journal is new): on disk before the service answers."""
    jp = journal_path(path)
    new = not os.path.exists(jp)
    fd = os.open(jp, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        size = os.fstat(fd).st_size
        data = msgspec.json.encode(a) + b"\n"
        try:
            if os.write(fd, data) != len(data):
                raise OSError(f"short write to {jp}")
            os.fsync(fd)
        except BaseException:
            try:  # no half record in the middle of the journal: the next one would follow it
                os.ftruncate(fd, size)
            except OSError:
                pass
            raise
    finally:
        os.close(fd)
    if new:
        _fsync_dir(jp)


def _fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def default_state_path() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                            "state")
    return os.path.join(base, "gpusched", "geo-state.json")


def save_state(state: GeoState, path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".geo-state-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(msgspec.json.encode(state))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # the state holds every arrival now (a record left by a crash here is skipped);
        # emptied, not removed: the next arrival need not create it (and fsync the folder)
        fd = os.open(journal_path(path), os.O_WRONLY)
    except FileNotFoundError:
        return
    try:
        if os.fstat(fd).st_size:
            os.ftruncate(fd, 0)
            os.fsync(fd)
    finally:
        os.close(fd)


def load_state(path: str) -> GeoState | None:
    """The saved state, None if there is none; a damaged file is an error naming it."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    try:
        state = msgspec.json.decode(raw, type=GeoState)
        state = _replay(state, path)
        check_spec(state.spec, {}, path)
        sites = {s.name: {g.type for g in s.gpus} for s in state.spec.sites}
        for site, counts in state.down.items():  # what site-up will restore
            if site not in sites or not set(counts) <= sites[site]:
                raise GeoSpecError(f"down: {site!r} is not a site with GPU types {sorted(counts)}")
    except (msgspec.ValidationError, msgspec.DecodeError, GeoSpecError) as e:
        raise GeoSpecError(f"geo state {path} is damaged ({e}); move it away to start afresh "
                           f"with --spec") from None
    if state.version != STATE_VERSION:
        raise GeoSpecError(f"geo state {path} has version {state.version}, expected "
                           f"{STATE_VERSION}")
    log.info("geo: state loaded from %s: %d sites, %d jobs, %d events", path,
             len(state.spec.sites), len(state.spec.jobs), state.events)
    return state


def _replay(state: GeoState, path: str) -> GeoState:
    """The state with its journal's arrivals applied (see the module docstring)."""
    try:
        with open(journal_path(path), "rb") as f:
            lines = f.read().split(b"\n")
    except FileNotFoundError:
        return state
    dec = msgspec.json.Decoder(Arrival)
    n = 0
    for k, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            a = dec.decode(line)
        except (msgspec.ValidationError, msgspec.DecodeError) as e:
            if k == len(lines) - 1:  # torn by a crash before its fsync: never answered
                log.warning("geo: %s: last record torn, dropped", journal_path(path))
                break
            raise GeoSpecError(f"journal {journal_path(path)} record {k + 1}: {e}") from None
        if a.events <= state.events:
            continue  # saved in the state already
        if state.plan is None or a.events != state.events + 1:
            raise GeoSpecError(f"journal {journal_path(path)} record {k + 1}: event "
                               f"{a.events} does not follow the state's {state.events}")
        state = apply_arrival(state, a)
        n += 1
    if n:
        log.info("geo: %d arrivals replayed from %s", n, journal_path(path))
    return state
