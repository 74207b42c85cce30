"""WAN links between sites: explicit links in the spec, else the measured cloud-region data.

The measurements are Skyplane's published profiles (geo/data/wan_links.csv.gz; see
docs/geo-cost-model.md for attribution): RTT, best iperf3 throughput between two VMs, and the
source cloud's egress price.
"""
from __future__ import annotations

import csv
import functools
import gzip
import logging
import os
from typing import TYPE_CHECKING, NamedTuple

from geo.errors import GeoSpecError

if TYPE_CHECKING:  # the spec's structs, for the annotation only
    from geo.spec import Spec

log = logging.getLogger("geo.wan")

# packaged with geo (geo/data/README.md has its source); GPUSCHED_WAN_CSV names another file
PACKAGED_CSV = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "wan_links.csv.gz")


class LinkInfo(NamedTuple):
    alpha_s: float  # one-way latency: RTT / 2
    beta_Bps: float  # bytes per second
    egress_usd_per_gb: float


def wan_csv_path() -> str:
    return os.environ.get("GPUSCHED_WAN_CSV") or PACKAGED_CSV


@functools.lru_cache(maxsize=1)
def measured_links() -> dict[tuple[str, str], tuple[float | None, float | None, float | None]]:
    """(src, dst) -> (rtt_ms, gbps, usd_per_gb), None where a cell was not measured."""
    path = wan_csv_path()
    if not os.path.exists(path):
        raise GeoSpecError(f"WAN measurements {path} not found: unset GPUSCHED_WAN_CSV or point "
                           "it at a CSV of src_region,dst_region,rtt_ms,throughput_gbps,"
                           "egress_usd_per_gb")
    out = {}

    def num(x):
        return float(x) if x not in ("", None) else None

    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", newline="") as f:
        for row in csv.DictReader(f):
            out[(row["src_region"], row["dst_region"])] = (
                num(row["rtt_ms"]), num(row["throughput_gbps"]), num(row["egress_usd_per_gb"]))
    log.debug("geo: loaded %d measured links from %s", len(out), path)
    return out


def known_regions() -> list[str]:
    return sorted({a for a, _ in measured_links()} | {b for _, b in measured_links()})


class Wan:
    """Link lookup for one spec's sites; built eagerly so a missing link is an error at load."""

    def __init__(self, spec: "Spec"):
        self.links: dict[tuple[str, str], LinkInfo] = {}
        scale = spec.defaults.wan_scale
        explicit = {}
        for ln in spec.links:
            explicit[(ln.src, ln.dst)] = ln
            if ln.symmetric:
                explicit.setdefault((ln.dst, ln.src), ln)
        meas = measured_links()
        names = [s.name for s in spec.sites]
        for a in names:
            for b in names:
                if a == b:
                    continue
                if (a, b) in explicit:
                    ln = explicit[(a, b)]
                    self.links[(a, b)] = LinkInfo(ln.rtt_ms / 2e3, ln.gbps * 1e9 / 8 * scale,
                                                  ln.egress_usd_per_gb)
                    continue
                fwd, rev = meas.get((a, b)), meas.get((b, a))
                if fwd is None and rev is None:
                    raise GeoSpecError(
                        f"no WAN link between sites {a!r} and {b!r}: they are not both measured "
                        f"cloud regions (like 'aws:us-east-1'); add a links: entry "
                        f"{{src: {a}, dst: {b}, rtt_ms: ..., gbps: ...}}")
                rtt = _first(fwd, rev, 0)
                gbps = _first(fwd, rev, 1)
                usd = fwd[2] if fwd and fwd[2] is not None else _first(fwd, rev, 2, 0.0)
                if rtt is None or gbps is None:
                    raise GeoSpecError(f"the WAN link {a!r} -> {b!r} was not measured "
                                       f"(empty cell); add a links: entry for it")
                self.links[(a, b)] = LinkInfo(rtt / 2e3, gbps * 1e9 / 8 * scale, usd)

    def get(self, a: str, b: str) -> LinkInfo | None:
        """None inside a site."""
        return None if a == b else self.links[(a, b)]

    def ring(self, sites: list[str]) -> tuple[float, float]:
        """(slowest bandwidth, largest latency) over a ring through ``sites`` in order."""
        beta, alpha = float("inf"), 0.0
        k = len(sites)
        for i in range(k):
            ln = self.links[(sites[i], sites[(i + 1) % k])]
            beta, alpha = min(beta, ln.beta_Bps), max(alpha, ln.alpha_s)
        return beta, alpha


def _first(fwd, rev, i, default=None):
    for t in (fwd, rev):
        if t is not None and t[i] is not None:
            return t[i]
    return default
