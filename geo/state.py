"""The geo service's state on disk: the fleet spec (jobs carry where they run), the objective,
the GPU counts of sites that are down, and the last plan and diff. Written atomically (temp
file, fsync, os.replace) after every change, so a crash leaves the old or the new state.
"""
from __future__ import annotations

import logging
import os
import tempfile
from typing import Literal, Optional

import msgspec

from .plan import Plan
from .protocol import Change
from .spec import Count, GeoSpecError, Spec, check_spec

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


def load_state(path: str) -> GeoState | None:
    """The saved state, None if there is none; a damaged file is an error naming it."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    try:
        state = msgspec.json.decode(raw, type=GeoState)
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
