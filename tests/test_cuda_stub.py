"""The CUDA driver backend and NVML paths through cuda-python's real ``cuda.bindings`` over the
strict stand-ins (tests/stubs: a C libcuda.so.1 built by ``make setup``/``make stub-cuda``, and
a Python pynvml), on any machine: no GPU needed.

The dynamic loader picks libcuda.so.1 once per process, so the cases run in a child process
started with ``LD_LIBRARY_PATH=build/stubs`` (tests/stubs/stub_env.py): one child per
environment (the default GPUs, then ``CUDA_VISIBLE_DEVICES`` set to a UUID), and one test here
per case, which fails with that case's own report. The parent process never loads the stand-in,
so on a GPU machine the real driver is untouched (tests/test_gpu*.py use it).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.stubs import stub_env

pytest.importorskip("cuda.bindings", reason="cuda-python is installed by 'make setup'")

pytestmark = pytest.mark.slow   # each environment is one child process

STUBS = Path(__file__).resolve().parent / "stubs"
RUNS = {"driver": ("cases_driver.py", {}),
        "visible": ("cases_visible.py", {"CUDA_VISIBLE_DEVICES": "GPU-a1"})}


def _cases(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    return [n.name for n in tree.body if isinstance(n, ast.FunctionDef)
            and n.name.startswith("test_")]


CASES = [(run, name) for run, (file, _) in RUNS.items() for name in _cases(STUBS / file)]
_results: dict = {}


def _run(run: str) -> dict:
    if run not in _results:
        why = stub_env.build()
        if why:
            pytest.skip(f"the stand-in driver could not be built ({why}): it needs a C "
                        "compiler (make stub-cuda)")
        file, env = RUNS[run]
        _results[run] = stub_env.run_cases(STUBS / file, **env)
    return _results[run]


@pytest.mark.parametrize("run,case", CASES, ids=[f"{r}:{c}" for r, c in CASES])
def test_on_the_stand_in_driver(run, case):
    results = _run(run)
    if case not in results:
        crash = results.get("<child>", ("failed", "the case did not run"))[1]
        pytest.fail(f"{case} did not report:\n{crash}")
    outcome, text = results[case]
    assert outcome == "passed", f"{case} {outcome} on the stand-in driver:\n{text}"


def test_every_case_file_ran_cleanly():
    """The child processes themselves: no crash, no case missing from their reports."""
    for run, (file, _) in RUNS.items():
        results = _run(run)
        assert "<child>" not in results or results["<child>"][0] == "passed", \
            results["<child>"][1]
        assert set(_cases(STUBS / file)) <= set(results), run
