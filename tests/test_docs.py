"""Every code block of README.md and docs/*.md is checked or run as written (issue 20, finding
1: none of the documented Python snippets ran).

A block says what it is with its info string (``python``, ``sh``, or ``text`` for pictures and
output) and, where it needs more than this machine, with a marker comment on the line before
its fence::

    <!-- docs-test: daemon -->          run with a daemon on the simulated GPU
    <!-- docs-test: daemon=torch -->    run with a --backend torch daemon (torch on the CPU)
    <!-- docs-test: geo-service -->     run with a `gpusched geo serve` of examples/geo/spec.yaml
    <!-- docs-test: gpu -->             run only where NVML sees a GPU (a --backend cuda daemon)
    <!-- docs-test: synopsis -->        a command reference: every `gpusched` line names commands,
                                        options and choices the parser has (not run)
    <!-- docs-test: skip: REASON -->    not run (long-running, or it runs this suite); REASON said

The daemon or service is found as a user's would be: its endpoint in ``GPUSCHED_ENDPOINT`` /
``GPUSCHED_GEO_ENDPOINT``. Blocks run in a scratch folder holding ``examples/`` (what they
write lands there). Checking (every block classified, synopses against the parser, Python
that compiles and names nothing undefined) is in-process; running blocks starts processes,
so those tests are marked slow.
"""
from __future__ import annotations

import argparse
import ast
import builtins
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"<!--\s*docs-test:\s*(?P<kind>[a-z-]+)(?:=(?P<arg>[a-z]+))?"
                    r"(?::\s*(?P<reason>.*?))?\s*-->")
KINDS = {"daemon", "geo-service", "gpu", "synopsis", "skip"}
LANGS = {"python", "sh", "text"}
BIN = os.path.dirname(sys.executable)


@dataclass
class Block:
    path: Path
    line: int            # of the opening fence, 1-based
    lang: str
    code: str
    kind: str = ""       # a marker's kind, "" for none
    arg: str = ""
    reason: str = ""

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks() -> list[Block]:
    out = []
    for path in DOCS:
        lines = path.read_text().splitlines()
        i = 0
        while i < len(lines):
            m = re.match(r"^(\s*)```(.*)$", lines[i])
            if not m:
                i += 1
                continue
            start, lang = i, m.group(2).strip()
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith("```"):
                j += 1
            b = Block(path, start + 1, lang, "\n".join(lines[start + 1:j]) + "\n")
            k = start - 1
            while k >= 0 and not lines[k].strip():
                k -= 1
            mk = MARKER.search(lines[k]) if k >= 0 else None
            if mk:
                b.kind, b.arg, b.reason = mk["kind"], mk["arg"] or "", mk["reason"] or ""
            out.append(b)
            i = j + 1
    return out


ALL = blocks()


def _ids(bs):
    return [b.id for b in bs]


# -- checks, in-process -------------------------------------------------------------------------
def test_every_block_says_what_it_is():
    bad = [f"{b.id}: info string {b.lang!r} (say python, sh or text)" for b in ALL
           if b.lang not in LANGS]
    bad += [f"{b.id}: unknown marker {b.kind!r}" for b in ALL if b.kind and b.kind not in KINDS]
    bad += [f"{b.id}: skip needs a reason" for b in ALL if b.kind == "skip" and not b.reason]
    bad += [f"{b.id}: a {b.lang} block cannot run ({b.kind})" for b in ALL
            if b.lang == "text" and b.kind not in ("", "synopsis")]
    assert not bad, "\n".join(bad)
    assert len(ALL) >= 15   # the extraction finds the blocks (README alone has several)


def _commands(code: str) -> list[str]:
    """Logical command lines: ``\\`` continuations and indented option lines joined, comments
    dropped."""
    out: list[str] = []
    for raw in code.splitlines():
        line = raw.split(" #")[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        if out and (out[-1].endswith("\\") or raw[:1].isspace()):
            out[-1] = out[-1].rstrip("\\").rstrip() + " " + line.strip()
        else:
            out.append(line.strip())
    return [c.rstrip("\\").strip() for c in out]


def _subparsers(p: argparse.ArgumentParser) -> dict:
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            return a.choices
    return {}


def _check_command(cmd: str) -> list[str]:
    from gpusched.cli import build_parser
    words = cmd.replace("[", " ").replace("]", " ").split()
    while words and words[0] != "gpusched" and not words[0].endswith("/gpusched"):
        words.pop(0)          # nice -n 15, .venv/bin/...
    if not words:
        return []
    p, path, rest = build_parser(), ["gpusched"], words[1:]
    i = 0
    while i < len(rest):
        w = rest[i]
        if w == "--log-level":
            i += 2
            continue
        subs = _subparsers(p)
        if w in subs:
            p = subs[w]
            path.append(w)
        elif not w.startswith("-") and subs:
            return [f"{cmd!r}: {' '.join(path)} has no command {w!r}"]
        i += 1
    where = " ".join(path)
    options = {o: a for a in p._actions for o in a.option_strings}
    bad = []
    for m in re.finditer(r"(?<![\w-])(--?[A-Za-z][\w-]*)(?:[ =]([^\s\[\]]+))?", " ".join(rest)):
        opt, val = m.group(1), m.group(2)
        if opt not in options:
            bad.append(f"{cmd!r}: {where} has no option {opt}")
            continue
        a = options[opt]
        if val and "|" in val and a.choices:
            for alt in val.split("|"):
                if alt not in ("...", "…") and alt not in a.choices:
                    bad.append(f"{cmd!r}: {where} {opt} has no choice {alt!r}")
    return bad


SYNOPSES = [b for b in ALL if b.kind == "synopsis"]


@pytest.mark.parametrize("block", SYNOPSES, ids=_ids(SYNOPSES))
def test_synopsis_names_what_the_parser_has(block):
    cmds = [c for c in _commands(block.code) if "gpusched" in c.split(" ")[0:4]
            or c.split()[0].endswith("gpusched")]
    assert cmds, f"{block.id}: a synopsis without a gpusched command"
    bad = [x for c in cmds for x in _check_command(c)]
    assert not bad, "\n".join(bad)


PYTHON = [b for b in ALL if b.lang == "python"]


def _undefined(code: str) -> set[str]:
    """Names the code reads but never binds (nor are built in): a NameError as written."""
    tree = ast.parse(code)
    bound, read = set(dir(builtins)), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (bound if isinstance(node.ctx, (ast.Store, ast.Del)) else read).add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return read - bound


@pytest.mark.parametrize("block", PYTHON, ids=_ids(PYTHON))
def test_python_compiles_and_names_nothing_undefined(block):
    compile(block.code, block.id, "exec")
    assert not _undefined(block.code), f"{block.id}: undefined {sorted(_undefined(block.code))}"


# -- running, with processes ----------------------------------------------------------------------
RUN = [b for b in ALL if b.lang in ("python", "sh") and b.kind not in ("synopsis", "skip")]


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    """Daemons and the geo service, started once for the blocks that need them."""
    from gpusched.procs import start_daemon, stop_daemon
    tmp = tmp_path_factory.mktemp("docs-services")
    procs, eps = [], {}

    def get(kind: str):
        if kind in eps:
            return eps[kind]
        if kind == "geo-service":
            ep = f"ipc://{tmp}/geo.sock"
            p = subprocess.Popen([sys.executable, "-m", "gpusched.cli", "geo", "serve", "--spec",
                                  str(ROOT / "examples/geo/spec.yaml"), "--state",
                                  str(tmp / "geo-state.json"), "--endpoint", ep],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            procs.append(p)
            _wait_geo(ep, p)
        else:
            backend = {"daemon": "sim", "daemon=torch": "torch", "gpu": "cuda"}[kind]
            extra = ("--torch-device", "cpu") if backend == "torch" else ()
            p, ep = start_daemon("--backend", backend, *extra,
                                 endpoint=f"ipc://{tmp}/{backend}.sock")
            procs.append(p)
        eps[kind] = ep
        return ep

    yield get
    for p in procs:
        stop_daemon(p)


def _wait_geo(ep: str, proc, timeout: float = 60.0) -> None:
    import time

    from geo.service import GeoClient
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"geo serve exited: {proc.stderr.read()[-2000:]}"
        try:
            with GeoClient(ep, timeout_s=2) as c:
                c.status()
            return
        except Exception:  # noqa: BLE001 - not up yet, whatever it says
            assert time.monotonic() < deadline, "geo serve did not answer"
            time.sleep(0.2)


def _scratch(tmp_path: Path) -> Path:
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    return tmp_path


def _has_gpu() -> bool:
    from scheduler_daemon.devices.factory import visible_gpus
    return bool(visible_gpus())


@pytest.mark.slow
@pytest.mark.parametrize("block", RUN, ids=_ids(RUN))
def test_block_runs_as_written(block, services, tmp_path, monkeypatch):
    """Python runs in this interpreter (torch is imported once, not per block), in a fresh
    namespace, from the scratch folder; shell blocks run in bash with ``set -e``."""
    if block.kind == "gpu" and not _has_gpu():
        pytest.skip("needs an NVIDIA GPU (a --backend cuda daemon): make test-gpu")
    env = {"PYTHONPATH": str(ROOT), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    if block.kind == "geo-service":
        env["GPUSCHED_GEO_ENDPOINT"] = services("geo-service")
    elif block.kind in ("daemon", "gpu"):
        env["GPUSCHED_ENDPOINT"] = services(block.kind + (f"={block.arg}" if block.arg else ""))
    cwd = _scratch(tmp_path)
    if block.lang == "python":
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        monkeypatch.chdir(cwd)
        exec(compile(block.code, block.id, "exec"), {"__name__": "__main__"})  # noqa: S102
        return
    argv = ["bash", "-e", "-o", "pipefail", "-c", block.code]
    r = subprocess.run(argv, cwd=cwd, env=dict(os.environ, **env), capture_output=True,
                       text=True, timeout=300, check=False)
    assert r.returncode == 0, (f"{block.id} failed ({r.returncode}):\n{block.code}\n"
                               f"--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-3000:]}")
    assert "Traceback" not in r.stderr, r.stderr[-3000:]


def test_the_runner_knows_every_marker_it_may_meet():
    kinds = {b.kind + (f"={b.arg}" if b.arg else "") for b in RUN}
    assert kinds <= {"", "daemon", "daemon=torch", "geo-service", "gpu"}, kinds


def test_commands_parse_like_a_shell():
    # the splitter of synopsis lines keeps quoted pool specs whole
    assert shlex.split('gpusched place m.yaml --pool "H100:8"')[-1] == "H100:8"
    assert _commands("gpusched a \\\n    --b 1   # c\n  [--d]\n")[0] == "gpusched a --b 1 [--d]"


def test_synopsis_check_catches_what_rots():
    assert "no option --loads" in _check_command("gpusched bench paella [--loads 0.5,0.7]")[0]
    assert "no choice 'gpu'" in _check_command("gpusched daemon [--backend auto|sim|gpu]")[0]
    assert "no command 'frob'" in _check_command("gpusched frob --x")[0]
    assert _check_command("nice -n 15 gpusched --log-level WARNING bench geo --json") == []


def test_undefined_names_are_found():
    assert _undefined("with Client(endpoint) as c:\n    y = model(x)\n") == \
        {"Client", "endpoint", "model", "x"}
    assert _undefined("import numpy as np\nfor i in range(3):\n    a = np.ones(i)\n") == set()
