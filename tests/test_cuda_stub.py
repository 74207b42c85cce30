"""The CUDA driver backend and NVML paths through cuda-python's real ``cuda.bindings`` over the
strict stand-ins (tests/stubs: a C libcuda.so.1 built by ``make setup``/``make stub-cuda``, and
a Python pynvml), on any machine: no GPU needed.

The dynamic loader picks libcuda.so.1 once per process, so the cases run in a child process
started with ``LD_LIBRARY_PATH=build/stubs`` (tests/stubs/stub_env.py): one child per
environment (the default GPUs, with the GPU tests of issue 18 rehearsed too; then
``CUDA_VISIBLE_DEVICES`` set to a UUID), and one test here per case, which fails with that
case's own report.
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
# child -> (files of cases, the child's extra environment). test_gpu_paths.py is the five GPU
# tests of issue 18 rehearsed on the stand-ins: their code and their calls through the real
# bindings, not a GPU's behaviour (the torch half of (a) skips there).
CHILDREN = {"default": ([TESTS / "stubs" / "cases_driver.py", TESTS / "test_gpu_paths.py"], {}),
            "visible": ([TESTS / "stubs" / "cases_visible.py"],
                        {"CUDA_VISIBLE_DEVICES": "GPU-a1"})}


def _cases(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    return [n.name for n in tree.body if isinstance(n, ast.FunctionDef)
            and n.name.startswith("test_")]


CASES = [(child, f.stem, name) for child, (files, _) in CHILDREN.items() for f in files
         for name in _cases(f)]
_results: dict = {}


def _run(child: str) -> dict:
    if child not in _results:
        why = stub_env.build()
        if why:
            pytest.skip(f"the stand-in driver could not be built ({why}): it needs a C "
                        "compiler (make stub-cuda)")
        files, env = CHILDREN[child]
        _results[child] = stub_env.run_cases(*files, **env)
    return _results[child]


def _outcomes(results: dict, case: str) -> dict:
    """The case's results (a parametrized case has one per parameter set)."""
    return {k: v for k, v in results.items() if k == case or k.startswith(case + "[")}


@pytest.mark.parametrize("child,file,case", CASES, ids=[f"{f}:{c}" for _, f, c in CASES])
def test_on_the_stand_in_driver(child, file, case):
    results = _run(child)
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
    for child, (files, _) in CHILDREN.items():
        results = _run(child)
        assert "<child>" not in results or results["<child>"][0] == "passed", \
            results["<child>"][1]
        assert all(_outcomes(results, c) for f in files for c in _cases(f)), child
