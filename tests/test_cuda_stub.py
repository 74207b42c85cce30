"""The CUDA driver backend and NVML paths through cuda-python's real ``cuda.bindings`` over the
strict stand-ins (tests/stubs: a C libcuda.so.1 built by ``make setup``/``make stub-cuda``, and
a Python pynvml), on any machine: no GPU needed.

The dynamic loader picks libcuda.so.1 once per process, so the cases run in a child process
started with ``LD_LIBRARY_PATH=build/stubs`` (tests/stubs/stub_env.py): one child per
environment (the default GPUs, then ``CUDA_VISIBLE_DEVICES`` set to a UUID, then the GPU tests
of issue 18 rehearsed), and one test here per case, which fails with that case's own report.
The parent process never loads the stand-in, so on a GPU machine the real driver is untouched
(tests/test_gpu*.py use it).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.stubs import stub_env

pytest.importorskip("cuda.bindings", reason="cuda-python is installed by 'make setup'")

pytestmark = pytest.mark.slow   # each environment is one child process

TESTS = Path(__file__).resolve().parent
# run -> (file of cases, the child's extra environment). "gpu-rehearsal" is the five GPU tests
# of tests/test_gpu_paths.py on the stand-ins: their code and their calls through the real
# bindings, not a GPU's behaviour (the torch half of (a) skips: torch here has no CUDA).
RUNS = {"driver": (TESTS / "stubs" / "cases_driver.py", {}),
        "visible": (TESTS / "stubs" / "cases_visible.py", {"CUDA_VISIBLE_DEVICES": "GPU-a1"}),
        "gpu-rehearsal": (TESTS / "test_gpu_paths.py", {})}


def _cases(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    return [n.name for n in tree.body if isinstance(n, ast.FunctionDef)
            and n.name.startswith("test_")]


CASES = [(run, name) for run, (file, _) in RUNS.items() for name in _cases(file)]
_results: dict = {}


def _run(run: str) -> dict:
    if run not in _results:
        why = stub_env.build()
        if why:
            pytest.skip(f"the stand-in driver could not be built ({why}): it needs a C "
                        "compiler (make stub-cuda)")
        file, env = RUNS[run]
        _results[run] = stub_env.run_cases(file, **env)
    return _results[run]


def _outcomes(results: dict, case: str) -> dict:
    """The case's results (a parametrized case has one per parameter set)."""
    return {k: v for k, v in results.items() if k == case or k.startswith(case + "[")}


@pytest.mark.parametrize("run,case", CASES, ids=[f"{r}:{c}" for r, c in CASES])
def test_on_the_stand_in_driver(run, case):
    results = _run(run)
    got = _outcomes(results, case)
    if not got:
        crash = results.get("<child>", ("failed", "the case did not run"))[1]
        pytest.fail(f"{case} did not report:\n{crash}")
    bad = {k: v for k, v in got.items() if v[0] not in ("passed", "skipped")}
    assert not bad, "\n".join(f"{k} {o} on the stand-in driver:\n{t}" for k, (o, t) in bad.items())
    if all(o == "skipped" for o, _ in got.values()):
        pytest.skip(f"skipped in the child: {next(iter(got.values()))[1].strip()[:300]}")


def test_every_case_file_ran_cleanly():
    """The child processes themselves: no crash, no case missing from their reports."""
    for run, (file, _) in RUNS.items():
        results = _run(run)
        assert "<child>" not in results or results["<child>"][0] == "passed", \
            results["<child>"][1]
        assert all(_outcomes(results, c) for c in _cases(file)), run
