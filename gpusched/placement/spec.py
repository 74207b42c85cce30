"""The placement input: a YAML list of models (zoo model, request rate, SLO, allowed batches).

    pool: "H100:8"              # optional; --pool on the command line wins
    models:
      - name: web-resnet        # optional, unique; defaults to the zoo model's name
        model: resnet50         # a zoo model (profilers/zoo_models.py)
        rate: 400               # requests/s
        slo_ms: 25              # per-request latency objective
        batches: [1, 4, 8, 16]  # optional; default every profiled batch size

Every mistake names the model and the YAML line (``models.yaml:7: ...``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import yaml

from profilers.zoo import BATCHES, ZOO_MODELS


class SpecError(ValueError):
    """A mistake in the placement input: printed as one line, exit code 2."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    model: str
    rate: float
    slo_ms: float
    batches: tuple[int, ...] = BATCHES
    line: int = 0  # where it was written, for error messages


@dataclass(frozen=True)
class Workload:
    models: tuple[ModelSpec, ...]
    pool: str | None = None
    source: str = "<workload>"


class _LineLoader(yaml.SafeLoader):
    """Records each mapping's line (1-based) under the key ``__line__``."""

    def construct_mapping(self, node, deep=False):
        m = super().construct_mapping(node, deep=deep)
        m["__line__"] = node.start_mark.line + 1
        return m


# YAML 1.1 (PyYAML) reads ``rate: 1e4`` as the string "1e4"; read it as the number it means
_LineLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def loads(text: str, source: str = "<workload>") -> Workload:
    try:
        doc = yaml.load(text, Loader=_LineLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise SpecError(f"{where}: malformed YAML: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), list) or not doc["models"]:
        raise SpecError(f"{source}: expected a mapping with a non-empty 'models:' list "
                        "(see gpusched place --help)")
    unknown = set(doc) - {"models", "pool", "__line__"}
    if unknown:
        raise SpecError(f"{source}:{doc['__line__']}: unknown top-level keys {sorted(unknown)}; "
                        "allowed: models, pool")
    pool = doc.get("pool")
    if pool is not None and not isinstance(pool, str):
        raise SpecError(f"{source}: 'pool' must be a string like \"H100:8\"")
    models, seen = [], {}
    for i, m in enumerate(doc["models"]):
        if not isinstance(m, dict):
            raise SpecError(f"{source}: models[{i}] must be a mapping with model, rate, slo_ms")
        ms = _model(m, i, source)
        if ms.name in seen:
            raise SpecError(f"{source}:{ms.line}: model name {ms.name!r} is used twice (also "
                            f"line {seen[ms.name]}); give each a unique 'name:'")
        seen[ms.name] = ms.line
        models.append(ms)
    return Workload(tuple(models), pool, source)


def load(path: str) -> Workload:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise SpecError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        line = text_line(path, e.start)
        raise SpecError(f"{path}:{line}: not UTF-8 text (byte 0x{e.object[e.start]:02x}); "
                        "save the file as UTF-8") from None
    return loads(text, path)


def text_line(path: str, offset: int) -> int:
    """The 1-based line of byte ``offset`` in the file."""
    with open(path, "rb") as f:
        return f.read(offset).count(b"\n") + 1


def _model(m: dict, i: int, source: str) -> ModelSpec:
    line = m.pop("__line__", 0)
    where = f"{source}:{line}"
    label = m.get("name") or m.get("model") or f"models[{i}]"
    bad = set(m) - {"name", "model", "rate", "slo_ms", "batches"}
    if bad:
        raise SpecError(f"{where}: model {label!r}: unknown keys {sorted(bad)}; allowed: name, "
                        "model, rate, slo_ms, batches")
    zoo = m.get("model")
    if zoo not in ZOO_MODELS:
        raise SpecError(f"{where}: model {label!r}: unknown zoo model {zoo!r}; choose from "
                        f"{', '.join(ZOO_MODELS)}")
    name = m.get("name", zoo)
    if not isinstance(name, str) or not name or len(name) > 128:
        raise SpecError(f"{where}: model {label!r}: 'name' must be a non-empty string")
    nums = {}
    for key, hi in (("rate", 1e7), ("slo_ms", 1e6)):
        v = m.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= hi:
            hint = " (a quoted string: drop the quotes)" if isinstance(v, str) else ""
            raise SpecError(f"{where}: model {label!r}: '{key}' must be a number in (0, {hi:g}], "
                            f"got {v!r}{hint}")
        nums[key] = float(v)
    batches = m.get("batches", list(BATCHES))
    if (not isinstance(batches, list) or not batches
            or any(isinstance(b, bool) or b not in BATCHES for b in batches)):
        raise SpecError(f"{where}: model {label!r}: 'batches' must be a list drawn from "
                        f"{list(BATCHES)}, got {batches!r}")
    return ModelSpec(name, zoo, nums["rate"], nums["slo_ms"], tuple(sorted(set(batches))), line)
