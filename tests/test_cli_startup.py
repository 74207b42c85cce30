"""The ``gpusched`` command starts at once: building its parser imports nothing heavy.

Asserted from the modules a fresh interpreter loaded, never from timings (shared machines are
noisy). The parser's choices are copies of the registries' names: checked equal here.
"""
import argparse
import json
import subprocess
import sys
import typing

import pytest

from gpusched.cli import build_parser, choices

# what building the parser, --help or a client command must not load
HEAVY = ("torch", "numpy", "zmq", "scheduler_daemon.devices", "profilers", "gpusched.placement",
         "ortools", "matplotlib", "rich")
# `gpusched status` talks to the daemon (zmq, msgspec) and prints a rich table: these only
NOT_FOR_STATUS = ("torch", "numpy", "scheduler_daemon.devices", "profilers",
                  "gpusched.placement", "ortools", "matplotlib")


def _loaded_after(code: str) -> tuple[int, list[str]]:
    """Run code in a fresh interpreter; its exit code and the modules it had loaded."""
    probe = ("import atexit, json, sys\n"
             "atexit.register(lambda: print(json.dumps(sorted(sys.modules))))\n" + code)
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                       check=False)
    return r.returncode, json.loads(r.stdout.strip().splitlines()[-1])


def _heavy(modules: list[str], heavy=HEAVY) -> list[str]:
    return [m for m in modules if any(m == h or m.startswith(h + ".") for h in heavy)]


@pytest.mark.slow
def test_building_the_parser_imports_nothing_heavy():
    rc, mods = _loaded_after("from gpusched.cli import build_parser\nbuild_parser()")
    assert rc == 0
    assert _heavy(mods) == []
    assert "gpusched.cli.daemon" in mods and "geo.cli" in mods  # it did build every command


@pytest.mark.parametrize("argv", [["--help"], ["status", "--help"], ["place", "--help"],
                                  ["geo", "plan", "--help"], ["bench", "paella", "--help"],
                                  ["daemon", "--help"], ["status", "--log-level", "DEBUG", "-h"]])
@pytest.mark.slow
def test_help_imports_nothing_heavy(argv):
    rc, mods = _loaded_after(f"from gpusched.cli import main\nmain({argv!r})")
    assert rc == 0
    assert _heavy(mods) == []


@pytest.mark.slow
def test_status_loads_the_client_but_not_torch_or_numpy():
    # a bad endpoint fails fast, after the command imported what it needs
    rc, mods = _loaded_after("import sys\nfrom gpusched.cli import main\n"
                             "sys.exit(main(['status', '--endpoint', 'tcp://127.0.0.1:abc']))")
    assert rc == 2
    assert "client_lib" in mods
    assert _heavy(mods, NOT_FOR_STATUS) == []


@pytest.mark.slow
def test_client_lib_does_not_import_torch():
    rc, mods = _loaded_after("import client_lib")
    assert rc == 0
    assert _heavy(mods, ("torch",)) == []


def test_choices_equal_the_registries():
    from gpusched.bench.fig11 import POLICIES as FIG11_POLICIES
    from gpusched.cli.bench_fig11 import FIG11_POLICIES as CLI_FIG11
    from gpusched.experiments.mixes import WORKLOADS as PAELLA_WORKLOADS
    from gpusched.placement.solvers import METHODS
    from gpusched.workloads import WORKLOADS
    from scheduler_daemon.core.gpu_specs import PRESETS
    from scheduler_daemon.core.policies import ALL_POLICIES
    from scheduler_daemon.devices.factory import BACKENDS

    assert choices.BACKENDS == tuple(BACKENDS)
    assert choices.GPU_PRESETS == tuple(sorted(PRESETS))
    assert choices.POLICIES == tuple(sorted(ALL_POLICIES))
    assert choices.WORKLOADS == tuple(sorted(WORKLOADS))
    assert CLI_FIG11 == FIG11_POLICIES
    assert choices.PAELLA_WORKLOADS == tuple(PAELLA_WORKLOADS)
    assert choices.PLACE_SOLVERS == tuple(METHODS)
    assert choices.LOG_LEVELS == ("DEBUG", "INFO", "WARNING", "ERROR")


def test_geo_choices_equal_geo_registries():
    from geo import cli
    from geo.bench import METHODS
    from geo.protocol import EventKind
    from geo.spec import Planner

    assert cli.OBJECTIVES == typing.get_args(typing.get_type_hints(Planner)["objective"])
    assert cli.PLAN_SOLVERS == tuple(METHODS)
    assert cli.EVENT_KINDS == typing.get_args(EventKind)


def _parsers(p: argparse.ArgumentParser, path=("gpusched",)):
    yield " ".join(path), p
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sub in a.choices.items():
                yield from _parsers(sub, (*path, name))


def test_every_option_has_help_that_states_its_default():
    for where, p in _parsers(build_parser()):
        fmt = p._get_formatter()
        for a in p._actions:
            if isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert a.help, f"{where} {a.option_strings or a.dest}: no help"
            if a.default is None or a.default is False:
                continue
            text = fmt._get_help_string(a)
            assert "default" in text.lower(), f"{where} {a.option_strings}: {text!r}"


@pytest.mark.parametrize("argv, level", [
    (["status"], "INFO"),
    (["--log-level", "DEBUG", "status"], "DEBUG"),
    (["status", "--log-level", "ERROR"], "ERROR"),
    (["--log-level", "DEBUG", "status", "--json"], "DEBUG"),   # the subcommand leaves it alone
    (["bench", "overhead", "--log-level", "WARNING"], "WARNING"),
    (["geo", "plan", "spec.yaml", "--log-level", "DEBUG"], "DEBUG"),
])
def test_log_level_before_or_after_the_command(argv, level):
    assert build_parser().parse_args(argv).log_level == level
