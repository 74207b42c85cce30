"""The house drawn from its imports: layers that import only those below, no cycles, and a
client library that loads no daemon code. Read from the modules' own import statements (every
one, also those inside functions), so a lazy import cannot hide an arrow running up."""
import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("scheduler_daemon", "client_lib", "geo", "profilers", "gpusched")

# (unit, rank): a module belongs to the longest unit that prefixes its name, and may import
# only modules of its own unit or of units with a lower rank (docs/architecture.md draws it)
LAYERS = {
    "scheduler_daemon.wire": 0,        # messages and codec: msgspec only
    "scheduler_daemon.transport": 1,   # sockets, keys: zmq
    "scheduler_daemon.core": 2,        # the pure scheduler core
    "scheduler_daemon.clock": 2,
    "client_lib": 2,                   # the client library: wire + transport only
    "geo": 2,                          # the geo planner and its service: wire + transport only
    "scheduler_daemon.cuda": 3,        # NVRTC, instrumentation, launch checks
    "scheduler_daemon.devices": 4,     # simulated GPU, torch, CUDA driver
    "scheduler_daemon.pump": 5,        # the one dispatch loop
    "scheduler_daemon.simulation": 6,  # virtual-time runs
    "scheduler_daemon.server": 6,      # requests without I/O
    "profilers": 7,                    # zoo, profiles, interference (on the simulated GPU)
    "scheduler_daemon.metrics": 7,
    "scheduler_daemon.daemon": 8,      # the ZeroMQ process
    "gpusched.experiments": 8,         # workloads and virtual-time experiments
    "gpusched.placement": 9,           # placement and admission
    "gpusched": 10,                    # the CLI, benchmarks, demo, load generator
    "scheduler_daemon": 10,            # the package's docstring only
}


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            parts = p.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            mods[name] = p
    return mods


def _imports(path: Path) -> set[str]:
    """Every module this file imports, lazily or not (annotations under TYPE_CHECKING aside)."""
    tree = ast.parse(path.read_text())
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            skip.update(id(n) for n in ast.walk(node))
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: use absolute imports"
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: {t for t in _imports(p) if t in mods and t != m} for m, p in mods.items()}


def _unit(module: str) -> str:
    best = max((u for u in LAYERS if module == u or module.startswith(u + ".")), key=len)
    return best


def test_every_module_sits_in_a_layer_and_imports_only_downwards():
    bad = []
    for mod, targets in _graph().items():
        u = _unit(mod)
        for t in targets:
            v = _unit(t)
            if v != u and LAYERS[v] >= LAYERS[u] and not _is_package_of(t, mod):
                bad.append(f"{mod} ({u}, {LAYERS[u]}) imports {t} ({v}, {LAYERS[v]})")
    assert not bad, "arrows running up or sideways:\n" + "\n".join(sorted(bad))


def _is_package_of(target: str, module: str) -> bool:
    # "from scheduler_daemon.devices import torch_ops" names the (docstring-only) package
    return module.startswith(target + ".")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_between_modules_or_top_level_packages():
    g = _graph()
    # a package's __init__ naming its own submodules is not an arrow between parts
    g = {m: {t for t in ts if not _is_package_of(t, m) and not _is_package_of(m, t)}
         for m, ts in g.items()}
    assert _cycles(g) == []
    top = defaultdict(set)
    for m, ts in g.items():
        for t in ts:
            if t.split(".")[0] != m.split(".")[0]:
                top[m.split(".")[0]].add(t.split(".")[0])
    assert _cycles(top) == [], dict(top)


def test_the_wire_imports_only_msgspec():
    for p in (ROOT / "scheduler_daemon" / "wire").rglob("*.py"):
        third = {t.split(".")[0] for t in _imports(p)} - {"scheduler_daemon", "__future__"}
        assert third <= {"msgspec", "typing", "math", "enum"}, (p, third)


def _loaded_by(code: str) -> list[str]:
    r = subprocess.run([sys.executable, "-c", f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


@pytest.mark.slow
def test_importing_the_client_loads_no_daemon_code_and_no_torch():
    loaded = _loaded_by("import client_lib, client_lib.aio")
    ours = [m for m in loaded if m.split(".")[0] == "scheduler_daemon"]
    daemon = [m for m in ours if m != "scheduler_daemon"
              and not m.startswith(("scheduler_daemon.wire", "scheduler_daemon.transport"))]
    assert ours and daemon == []
    assert not [m for m in loaded if m.split(".")[0] in ("torch", "gpusched", "profilers", "geo")]


@pytest.mark.slow
def test_the_geo_service_uses_only_the_wire_and_transport_of_the_daemon():
    loaded = _loaded_by("import geo.service, geo.cli")
    daemon = [m for m in loaded if m.startswith("scheduler_daemon.")
              and not m.startswith(("scheduler_daemon.wire", "scheduler_daemon.transport"))]
    assert daemon == []
