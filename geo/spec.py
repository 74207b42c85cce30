"""The geo spec (sites, WAN links, datasets, jobs): typed structs and a loader whose errors name
the field and the YAML line.

The YAML is composed into its node tree first so that every value's line is known; msgspec then
converts the plain data into the structs (types and ranges), and ``check_spec`` checks what
types cannot say (references, min <= max). Both report ``file:line: field: problem``.
"""
from __future__ import annotations

import re
from typing import Annotated, Literal, Optional

import msgspec
import yaml

from geo.errors import GeoSpecError

MODES = ("single-site", "data-parallel", "pipeline", "local-sgd")
Mode = Literal["single-site", "data-parallel", "pipeline", "local-sgd"]

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@/+-]+$")]
Pos = Annotated[float, msgspec.Meta(gt=0, le=1e30)]
NonNeg = Annotated[float, msgspec.Meta(ge=0, le=1e30)]
Count = Annotated[int, msgspec.Meta(ge=0, le=10_000_000)]
PosInt = Annotated[int, msgspec.Meta(ge=1, le=10_000_000_000)]
Price = Annotated[float, msgspec.Meta(ge=0, le=1e6)]  # $/GPU-hour: a spec's and a price event's

# Dense BF16 tensor TFLOP/s per GPU (vendor data sheets); a spec's gpu_tflops overrides them.
DEFAULT_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0,
                  "L4": 121.0, "V100": 125.0, "T4": 65.0, "MI300X": 1307.0}


class S(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    pass


class GpuPool(S):
    type: Name
    count: Count
    usd_per_hour: Price
    spot_share: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0  # the part that can be preempted


class Site(S):
    name: Name  # a cloud region ("aws:us-east-1") or any name with explicit links
    gpus: Annotated[list[GpuPool], msgspec.Meta(min_length=1, max_length=64)]
    storage_tb: NonNeg = 1e6


class Link(S):
    src: Name
    dst: Name
    rtt_ms: NonNeg
    gbps: Pos
    egress_usd_per_gb: NonNeg = 0.0
    symmetric: bool = True


class Dataset(S):
    name: Name
    size_gb: NonNeg
    replicas: Annotated[list[Name], msgspec.Meta(min_length=1)]


class Job(S):
    name: Name
    params: Annotated[float, msgspec.Meta(gt=0, le=1e15)]  # model parameters
    iterations: PosInt
    gpu_types: Annotated[list[Name], msgspec.Meta(min_length=1)]
    min_gpus: PosInt
    max_gpus: PosInt
    tokens_per_iter: Optional[Annotated[float, msgspec.Meta(gt=0, le=1e12)]] = None
    samples_per_iter: Optional[Annotated[float, msgspec.Meta(gt=0, le=1e12)]] = None
    flops_per_sample: Optional[Annotated[float, msgspec.Meta(gt=0, le=1e20)]] = None  # needed with samples_per_iter
    priority: Annotated[float, msgspec.Meta(gt=0, le=1e6)] = 1.0
    deadline_h: Optional[Pos] = None
    budget_usd: Optional[Pos] = None
    dataset: Optional[Name] = None
    modes: Annotated[list[Mode], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["single-site"])
    local_sgd_h: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 32  # sync every H steps
    grad_bytes_per_param: Annotated[float, msgspec.Meta(gt=0, le=16)] = 2.0  # bf16 gradients
    checkpoint_gb: Optional[NonNeg] = None  # default: params * 12 bytes (weights + Adam)
    hidden_size: PosInt = 4096  # pipeline boundary activations = tokens * hidden * 2 bytes
    microbatches: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 8
    # the job's state between re-plans: where it runs now (site -> GPU type -> n), how, and
    # how far it got; None = not running (new, or waiting for GPUs)
    running: Optional[dict[Name, dict[Name, Count]]] = None
    running_mode: Optional[Mode] = None
    done_iterations: Count = 0


class Defaults(S, frozen=True):
    mfu: Annotated[float, msgspec.Meta(ge=0.001, le=1)] = 0.4
    intra_site_gbps: Pos = 400.0  # per-GPU fabric (InfiniBand NDR)
    intra_site_latency_us: NonNeg = 10.0
    wan_scale: Pos = 1.0  # site-to-site bandwidth = measured VM-pair throughput * wan_scale
    restart_s: NonNeg = 300.0  # a migrated job's restart time


class Planner(S, frozen=True):
    objective: Literal["throughput", "cost", "makespan", "balance"] = "throughput"
    budget_usd_per_hour: Optional[Pos] = None
    time_limit_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 10.0
    max_candidates: Annotated[int, msgspec.Meta(ge=1, le=500)] = 16
    max_sites_per_job: Annotated[int, msgspec.Meta(ge=1, le=8)] = 3
    workers: Annotated[int, msgspec.Meta(ge=1, le=64)] = 2


class Spec(S):
    sites: Annotated[list[Site], msgspec.Meta(min_length=1, max_length=1000)]
    jobs: list[Job] = []
    links: list[Link] = []
    datasets: list[Dataset] = []
    gpu_tflops: dict[Name, Annotated[float, msgspec.Meta(ge=0.001, le=1e6)]] = {}
    defaults: Defaults = Defaults()
    planner: Planner = Planner()


# -- YAML with line numbers -------------------------------------------------------------------
MAX_YAML_DEPTH = 64  # a spec nests a few levels; deeper is an error, not a RecursionError


def _lines(root, out: dict[str, int], source: str) -> None:
    """Fill ``out`` with the line of every path. Iterative, and each node is walked once: an
    alias (``*a``) points at a node seen before, so its paths fall back to the alias's parent
    line instead of expanding it again (a "billion laughs" file stays linear)."""
    seen: set[int] = set()
    stack = [(root, "$", 0)]
    while stack:
        node, path, depth = stack.pop()
        out.setdefault(path, node.start_mark.line + 1)
        if id(node) in seen:
            continue
        seen.add(id(node))
        if depth > MAX_YAML_DEPTH:
            raise GeoSpecError(f"{source}:{node.start_mark.line + 1}: malformed YAML: nested "
                               f"deeper than {MAX_YAML_DEPTH} levels")
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = k.value if isinstance(k, yaml.ScalarNode) else "?"
                out[f"{path}.{key}"] = k.start_mark.line + 1  # a field's line is its key's line
                stack.append((v, f"{path}.{key}", depth + 1))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                stack.append((v, f"{path}[{i}]", depth + 1))


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``7e9`` as a number (YAML 1.2; 1.1 wants ``7.0e+9``), so that
    types can be strict: a quoted ``"8"`` stays a string, and a string is refused where a
    number belongs."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def load_yaml(text: str, source: str = "<spec>") -> tuple[object, dict[str, int]]:
    """Parse YAML; returns (data, {"$.jobs[0].name": line}). Syntax errors name the line."""
    lines: dict[str, int] = {}
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            if node is not None:
                _lines(node, lines, source)  # first: it refuses deep nesting before recursion
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except RecursionError:
        raise GeoSpecError(f"{source}: malformed YAML: nested too deeply") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else "?"
        raise GeoSpecError(f"{source}:{line}: malformed YAML: {e.problem or e}") from None
    except yaml.YAMLError as e:
        raise GeoSpecError(f"{source}: malformed YAML: {e}") from None
    return data, lines


def _line_of(lines: dict[str, int], path: str) -> int | str:
    while path:
        if path in lines:
            return lines[path]
        path = re.sub(r"(\.[^.\[]*|\[\d+\])$", "", path) if path != "$" else ""
    return "?"


def convert_error(e: msgspec.ValidationError, lines: dict[str, int], source: str,
                  prefix: str = "$") -> GeoSpecError:
    """msgspec's ``... - at `$.jobs[0].x``` -> ``file:LINE: jobs[0].x: ...``."""
    msg = str(e)
    m = re.search(r" - at `(\$[^`]*)`$", msg)
    path = m.group(1) if m else "$"
    text = msg[:m.start()] if m else msg
    unknown = re.search(r"unknown field `([^`]*)`", text) or re.search(r"required field `([^`]*)`", text)
    field = path
    if unknown and f"{path}.{unknown.group(1)}" in lines:
        field = f"{path}.{unknown.group(1)}"
    full = prefix + path[1:]
    if "got `str`" in text:  # strict types: "8" is a string
        text += " (write numbers and true/false without quotes)"
    return GeoSpecError(f"{source}:{_line_of(lines, field)}: {full.lstrip('$.') or 'spec'}: {text}")


def parse_spec(text: str, source: str = "<spec>") -> Spec:
    data, lines = load_yaml(text, source)
    if not isinstance(data, dict):
        raise GeoSpecError(f"{source}:1: spec: expected a mapping with sites/jobs, got "
                           f"{type(data).__name__}")
    try:
        spec = msgspec.convert(data, Spec, strict=True)
    except msgspec.ValidationError as e:
        raise convert_error(e, lines, source) from None
    check_spec(spec, lines, source)
    check_links(spec, lines, source)
    return spec


def check_links(spec: Spec, lines: dict[str, int], source: str) -> None:
    """Every pair of sites needs a WAN link (explicit or measured): the error names the site's
    line, which is most often an unknown or misspelt region."""
    from geo.wan import Wan

    try:
        Wan(spec)
    except GeoSpecError as e:
        names = [s.name for s in spec.sites]
        bad = re.findall(r"'([^']*)'", str(e))
        i = max((names.index(n) for n in bad if n in names), default=0)
        raise _err(lines, source, f"$.sites[{i}].name", str(e)) from None


def load_spec(path: str) -> Spec:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise GeoSpecError(f"cannot read spec {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise GeoSpecError(f"{path}: not UTF-8 text (byte {e.start})") from None
    return parse_spec(text, path)


def parse_job(text: str, source: str = "<job>") -> Job:
    """A job YAML (``gpusched geo submit``): the same fields as an entry of ``jobs:``."""
    data, lines = load_yaml(text, source)
    try:
        job = msgspec.convert(data, Job, strict=True)
    except msgspec.ValidationError as e:
        raise convert_error(e, lines, source) from None
    check_job(job, lines, source, "$")
    return job


# -- checks that types cannot express ----------------------------------------------------------
def _err(lines, source, path, msg) -> GeoSpecError:
    line = _line_of(lines, path)  # "?" for a job that came over the wire: no YAML lines
    where = source if line == "?" else f"{source}:{line}"
    return GeoSpecError(f"{where}: {path[2:] or 'spec'}: {msg}")


def check_job(job: Job, lines: dict[str, int], source: str, path: str) -> None:
    if job.min_gpus > job.max_gpus:
        raise _err(lines, source, f"{path}.min_gpus",
                   f"min_gpus {job.min_gpus} is above max_gpus {job.max_gpus}")
    if (job.tokens_per_iter is None) == (job.samples_per_iter is None):
        raise _err(lines, source, path, "give exactly one of tokens_per_iter and samples_per_iter")
    if job.samples_per_iter is not None and job.flops_per_sample is None:
        raise _err(lines, source, f"{path}.samples_per_iter",
                   "samples_per_iter needs flops_per_sample (FLOPs of forward+backward per sample)")
    if len(set(job.modes)) != len(job.modes):
        raise _err(lines, source, f"{path}.modes", "a mode is listed twice")
    if len(set(job.gpu_types)) != len(job.gpu_types):
        raise _err(lines, source, f"{path}.gpu_types", "a GPU type is listed twice")
    # where the job runs now (the service's state): only what the job allows
    if job.running_mode is not None and job.running_mode not in job.modes:
        raise _err(lines, source, f"{path}.running_mode",
                   f"running_mode {job.running_mode!r} is not one of the job's modes "
                   f"({', '.join(job.modes)})")
    for site, types in (job.running or {}).items():
        for t in types:
            if t not in job.gpu_types:
                raise _err(lines, source, f"{path}.running",
                           f"runs on {t} at {site}, not one of its gpu_types "
                           f"({', '.join(job.gpu_types)})")
    if len(job.running or {}) > 1 and job.running_mode in (None, "single-site"):
        raise _err(lines, source, f"{path}.running",
                   "runs at several sites: give running_mode (data-parallel, pipeline or "
                   "local-sgd)")
    if job.done_iterations > job.iterations:
        raise _err(lines, source, f"{path}.done_iterations", "done_iterations is above iterations")


def check_spec(spec: Spec, lines: dict[str, int] | None = None, source: str = "<spec>") -> None:
    """Cross-field checks (names unique, references resolve); raises GeoSpecError."""
    lines = lines or {}
    site_names = set()
    for i, s in enumerate(spec.sites):
        if s.name in site_names:
            raise _err(lines, source, f"$.sites[{i}].name", f"site {s.name!r} is listed twice")
        site_names.add(s.name)
        types = [g.type for g in s.gpus]
        if len(set(types)) != len(types):
            raise _err(lines, source, f"$.sites[{i}].gpus", "a GPU type is listed twice")
    tflops = {**DEFAULT_TFLOPS, **spec.gpu_tflops}
    known_types = {g.type for s in spec.sites for g in s.gpus}
    for t in known_types:
        if t not in tflops:
            i = next(i for i, s in enumerate(spec.sites) if any(g.type == t for g in s.gpus))
            raise _err(lines, source, f"$.sites[{i}].gpus",
                       f"GPU type {t!r} has no known speed: add it to gpu_tflops "
                       f"(known: {', '.join(sorted(tflops))})")
    for i, ln in enumerate(spec.links):
        for end in ("src", "dst"):
            if getattr(ln, end) not in site_names:
                raise _err(lines, source, f"$.links[{i}].{end}",
                           f"{getattr(ln, end)!r} is not a site")
        if ln.src == ln.dst:
            raise _err(lines, source, f"$.links[{i}].dst",
                       f"a link from {ln.src!r} to itself (inside a site: defaults.intra_site_gbps)")
    ds_names = set()
    for i, d in enumerate(spec.datasets):
        if d.name in ds_names:
            raise _err(lines, source, f"$.datasets[{i}].name", f"dataset {d.name!r} is listed twice")
        ds_names.add(d.name)
        for r, site in enumerate(d.replicas):
            if site not in site_names:
                raise _err(lines, source, f"$.datasets[{i}].replicas[{r}]",
                           f"{site!r} is not a site")
            if site in d.replicas[:r]:
                raise _err(lines, source, f"$.datasets[{i}].replicas[{r}]",
                           f"{site!r} is listed twice")
    pools_at = {s.name: {g.type for g in s.gpus} for s in spec.sites}
    names = set()
    for i, j in enumerate(spec.jobs):
        p = f"$.jobs[{i}]"
        if j.name in names:
            raise _err(lines, source, f"{p}.name", f"job {j.name!r} is listed twice")
        names.add(j.name)
        check_job(j, lines, source, p)
        check_job_refs(spec, j, lines, source, p, tflops, ds_names, site_names, pools_at)


def check_job_refs(spec: Spec, j: Job, lines, source, p, tflops=None, ds_names=None,
                   site_names=None, pools_at=None) -> None:
    tflops = tflops or {**DEFAULT_TFLOPS, **spec.gpu_tflops}
    ds_names = ds_names if ds_names is not None else {d.name for d in spec.datasets}
    site_names = site_names if site_names is not None else {s.name for s in spec.sites}
    for k, t in enumerate(j.gpu_types):
        if t not in tflops:
            raise _err(lines, source, f"{p}.gpu_types[{k}]", f"unknown GPU type {t!r}")
    fleet = {g.type for s in spec.sites for g in s.gpus}
    if not fleet & set(j.gpu_types):  # no event adds a GPU type: it could never run
        raise _err(lines, source, f"{p}.gpu_types",
                   f"no site has {' or '.join(j.gpu_types)} GPUs, so job {j.name!r} could "
                   f"never run; the fleet has {', '.join(sorted(fleet))}")
    if j.dataset is not None and j.dataset not in ds_names:
        raise _err(lines, source, f"{p}.dataset", f"{j.dataset!r} is not a dataset")
    for site, types in (j.running or {}).items():
        if site not in site_names:
            raise _err(lines, source, f"{p}.running", f"{site!r} is not a site")
        pools = pools_at[site] if pools_at is not None else {
            g.type for s in spec.sites if s.name == site for g in s.gpus}
        for t in types:
            if t not in pools:
                raise _err(lines, source, f"{p}.running", f"site {site} has no {t} GPUs")


def job_work_flop(job: Job) -> float:
    if job.tokens_per_iter is not None:
        return 6.0 * job.params * job.tokens_per_iter
    return job.samples_per_iter * job.flops_per_sample


def job_tokens(job: Job) -> float:
    """Tokens (or samples) per iteration: sizes pipeline activations."""
    return job.tokens_per_iter if job.tokens_per_iter is not None else job.samples_per_iter


def checkpoint_bytes(job: Job) -> float:
    return job.checkpoint_gb * 1e9 if job.checkpoint_gb is not None else job.params * 12.0


def tflops(spec: Spec, gpu_type: str) -> float:
    return spec.gpu_tflops.get(gpu_type) or DEFAULT_TFLOPS[gpu_type]
