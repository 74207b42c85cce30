"""Running code against the strict stand-in driver (cuda_stub.c) and NVML (nvml/pynvml.py).

The dynamic loader resolves ``libcuda.so.1`` once per process, from ``LD_LIBRARY_PATH`` read
at process start, and cuda-python's ``cuda.bindings.driver`` keeps the library it loaded at its
first call (``cuda.pathfinder`` -> ``dlopen("libcuda.so.1")``; it then finds every entry point
through ``cuGetProcAddress_v2``). So the stand-ins live only in a child process started with
this environment: ``run_cases`` runs a file of test cases (tests/stubs/cases_*.py) with pytest
there and returns each case's outcome; tests/test_cuda_stub.py reports them one by one. A GPU
machine's own driver is never shadowed in the parent.

In the child, ``report()`` is the stand-in driver's JSON report (violations, live objects, leaks
at context release, event waits, recent launches, module loads) and ``clear()`` resets it.
"""
from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STUBS = Path(__file__).resolve().parent
LIB_DIR = ROOT / "build" / "stubs"
LIB = LIB_DIR / "libcuda.so.1"
SOURCE = STUBS / "cuda_stub.c"
NVML_DIR = STUBS / "nvml"


def build() -> str:
    """Build the stand-in driver if it is missing or older than its source (``make stub-cuda``,
    the same rule ``make setup`` runs); "" when it is there, else why not."""
    if LIB.exists() and LIB.stat().st_mtime >= SOURCE.stat().st_mtime:
        return ""
    try:
        r = subprocess.run(["make", "-s", "stub-cuda"], cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"make stub-cuda: {e}"
    if r.returncode != 0 or not LIB.exists():
        return f"make stub-cuda failed: {(r.stderr or r.stdout).strip()[-2000:]}"
    return ""


def child_env(**extra: str) -> dict:
    env = dict(os.environ)
    for k in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER"):
        env.pop(k, None)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        [str(LIB_DIR)] + [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p])
    env["PYTHONPATH"] = os.pathsep.join([str(NVML_DIR), str(ROOT)])
    env["GPUSCHED_STUB"] = "1"
    env.update(extra)
    return env


def run_cases(*files: Path, timeout: float = 240.0, **extra: str) -> dict:
    """Run the cases in ``files`` in one child process on the stand-ins: case name ->
    (outcome, text), outcome "passed", "failed", "error" or "skipped"; a crashed child is one
    entry ``"<child>"`` with its output."""
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "cases.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o",
               "python_files=cases_*.py", f"--junitxml={xml}", *map(str, files)]
        try:
            r = subprocess.run(cmd, cwd=ROOT, env=child_env(**extra), capture_output=True,
                               text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            return {"<child>": ("failed", f"timed out after {timeout}s:\n{e.stdout}\n{e.stderr}")}
        out = {}
        if xml.exists():
            for tc in ET.parse(xml).getroot().iter("testcase"):
                name = tc.get("name", "")
                outcome, text = "passed", ""
                for tag in ("failure", "error", "skipped"):
                    el = tc.find(tag)
                    if el is not None:
                        outcome = {"failure": "failed"}.get(tag, tag)
                        text = (el.get("message") or "") + "\n" + (el.text or "")
                        break
                syserr = tc.find("system-err")
                if outcome != "passed" and syserr is not None and syserr.text:
                    text += "\n--- stderr ---\n" + syserr.text[-4000:]
                out[name] = (outcome, text)
        if not out or r.returncode not in (0, 1):
            out["<child>"] = ("failed" if r.returncode not in (0, 5) else "passed",
                              f"rc={r.returncode}\n{r.stdout[-6000:]}\n{r.stderr[-6000:]}")
        return out


# -- in the child ---------------------------------------------------------------------------
def _lib():
    lib = ctypes.CDLL("libcuda.so.1")
    lib.gpuschedStubReport.restype = ctypes.c_char_p
    return lib


def on_stub() -> bool:
    """Whether this process's libcuda.so.1 is the stand-in."""
    try:
        return hasattr(ctypes.CDLL("libcuda.so.1"), "gpuschedStubReport")
    except OSError:
        return False


def report() -> dict:
    return json.loads(_lib().gpuschedStubReport())


def clear() -> None:
    _lib().gpuschedStubClear()
