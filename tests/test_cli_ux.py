"""A user's first hour (issue 20): clear errors, fast failures, tables that fit, help with
defaults. In-process only; the tests that start processes are marked slow."""
import asyncio
import socket
import time

import pytest

from client_lib import AsyncClient, Client, ConnectError
from client_lib._common import unreachable


def _stale_socket(path) -> str:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()   # the file stays, nobody listens: what a killed daemon leaves
    return f"ipc://{path}"


def _refused_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def test_connect_check_names_why_no_daemon_is_there(tmp_path):
    assert "does not exist" in unreachable(f"ipc://{tmp_path}/none.sock")
    assert "refused" in unreachable(_stale_socket(tmp_path / "stale.sock"))
    assert "refused" in unreachable(_refused_port())
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(tmp_path / "live.sock"))
    srv.listen()
    try:
        assert unreachable(f"ipc://{tmp_path}/live.sock") is None   # someone listens
    finally:
        srv.close()


@pytest.mark.parametrize("kind", ["missing", "stale", "tcp"])
def test_clients_without_a_daemon_fail_at_once(tmp_path, kind):
    """Finding 8: status/submit/the client waited their whole timeout (3-5 s) before saying
    there was no daemon. With a 30 s timeout they must fail in well under it (generous bound:
    a loaded machine)."""
    ep = {"missing": lambda: f"ipc://{tmp_path}/none.sock",
          "stale": lambda: _stale_socket(tmp_path / "stale.sock"),
          "tcp": _refused_port}[kind]()
    t0 = time.monotonic()
    with pytest.raises(ConnectError, match="no daemon at"):
        Client(ep, tenant="t", timeout=30)
    assert time.monotonic() - t0 < 3.0

    async def connect():
        async with AsyncClient(ep, tenant="t", timeout=30):
            pass
    t0 = time.monotonic()
    with pytest.raises(ConnectError, match="no daemon at"):
        asyncio.run(connect())
    assert time.monotonic() - t0 < 3.0


def _sub(parser, *names):
    import argparse
    for name in names:
        parser = next(a for a in parser._actions
                      if isinstance(a, argparse._SubParsersAction)).choices[name]
    return parser


def _help_of(parser, flag):
    return next(a.help for a in parser._actions if flag in a.option_strings)


def test_soak_json_help_describes_soak_not_fuzz():
    from gpusched.cli import build_parser
    ap = build_parser()
    soak = _help_of(_sub(ap, "bench", "soak"), "--json")
    fuzz = _help_of(_sub(ap, "bench", "fuzz"), "--json")
    assert soak != fuzz
    for key in ("answered", "duplicate_answers", "p99_ms", "client_errors"):
        assert key in soak


def test_help_texts_of_the_findings_state_their_defaults():
    """Finding 8: help lacked defaults (submit, top, place, daemon, keys, profile) or text
    (demo --duration/--rate, geo serve --endpoint)."""
    from gpusched.cli import build_parser
    ap = build_parser()
    for path, flag in ((("submit",), "--rate"), (("top",), "--interval"),
                       (("place",), "--time-limit"), (("daemon",), "--policy"),
                       (("keys",), "--out"), (("profile",), "--device"),
                       (("demo",), "--duration"), (("demo",), "--rate")):
        p = _sub(ap, *path)
        action = next(a for a in p._actions if flag in a.option_strings)
        assert action.help, (path, flag)
        assert "default" in p._get_formatter()._get_help_string(action).lower(), (path, flag)
    serve = _sub(ap, "geo", "serve")
    assert _help_of(serve, "--endpoint")


# -- tables fit 80 columns (finding 5) ------------------------------------------------------------
def _render_80(monkeypatch, fn, *args) -> str:
    """Run a printing function with every rich Console at 80 columns; its text."""
    import io

    import rich.console
    buf = io.StringIO()
    orig = rich.console.Console.__init__

    def init(self, *a, **kw):
        kw.update(file=buf, width=80)
        orig(self, *a, **kw)
    with monkeypatch.context() as m:   # undone at once: the next call patches afresh
        m.setattr(rich.console.Console, "__init__", init)
        fn(*args)
    return buf.getvalue()


def _fits(text: str) -> None:
    assert text.strip()
    assert max(len(line) for line in text.splitlines()) <= 80, text
    assert "…" not in text, text          # nothing cut


def test_profile_table_fits_80_columns(monkeypatch):
    from types import SimpleNamespace

    from gpusched.cli.profile import print_profiles
    rows = [SimpleNamespace(model=m, batch=b, latency_ms=44.771, flops=715.85e9,
                            bytes=9677.4 * 2**20, compute_demand=0.66, memory_demand=0.43,
                            occupancy=0.44, footprint_mb=257)
            for m in ("squeezenet1.1", "bert-base", "densenet121") for b in (1, 32)]
    text = _render_80(monkeypatch, print_profiles, rows, "sim:T4", "/tmp/x.sqlite")
    _fits(text)
    assert "squeezenet1.1" in text and "foot MB: memory footprint" in text


def test_placement_tables_fit_80_columns(monkeypatch):
    import json

    from gpusched.cli.place import print_plan
    with open("docs/results/usher/example_plan.json") as f:
        out = json.load(f)
    text = _render_80(monkeypatch, print_plan, out)
    _fits(text)
    assert all(a["replicas"][0]["model"] in text for a in out["assignments"])


def test_bench_tables_fit_80_columns(monkeypatch):
    import json

    from gpusched.bench.calibrate import print_calibrate
    from gpusched.bench.fig11_report import print_fig13
    from gpusched.bench.overhead import print_overhead
    with open("docs/results/extra/calibrate.json") as f:
        _fits(_render_80(monkeypatch, print_calibrate, json.load(f)))
    with open("docs/results/extra/overhead.json") as f:
        res = json.load(f)
    res.setdefault("kernel_overhead_us", 12.5)
    _fits(_render_80(monkeypatch, print_overhead, res))
    models = ("resnet50", "mobilenetv2", "densenet121", "inception3", "squeezenet1.1",
              "googlenet", "resnet18", "vgg16")
    rows = [{"threshold": t, "jain": 0.512, "p99_ms": 123.4,
             "per_model_p99_ms": {m: 1234.5 for m in models}} for t in (0.01, 1.0, 1e5)]
    text = _render_80(monkeypatch, print_fig13,
                      {"gpu": "T4", "sigma": 2.0, "rate_rps": 300.0, "rows": rows})
    _fits(text)
    assert "M8 vgg16" in text


def test_load_table_shows_both_clocks_in_80_columns(monkeypatch):
    from gpusched.report import load_table, print_table
    row = {"tenant": "a-long-tenant-name", "submitted": 123456, "completed": 123000,
           "failed": 456, "client_p50_ms": 1234.5, "client_p99_ms": 98765.4,
           "client_slo_attainment": 0.5, "daemon_p50_ms": 1200.0, "daemon_p99_ms": 98000.0,
           "daemon_slo_attainment": 0.75}
    res = {"workload": "mixed", "clients": 3, "rate": 60.0, "duration": 5.0,
           "tenants": [row], "overall": dict(row, tenant="overall"), "client_errors": []}
    text = _render_80(monkeypatch, lambda: print_table(load_table(res)))
    _fits(text)
    assert "client" in text and "daemon" in text and "98765" in text and "75.0%" in text


def test_placement_plot_tells_models_and_caps_apart(tmp_path, monkeypatch):
    """Finding 8: 12-13 near-identical colours (tab20's light/dark pairs) and one legend
    entry for two different caps."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from gpusched.placement.plot import series_style
    looks = [series_style(i) for i in range(32)]
    assert len(set(looks)) == 32
    assert len({c for c, _ in looks[:8]}) == 8            # eight distinct colours first

    import json

    from gpusched.placement import plot as plot_mod
    seen = {}
    real = Figure.savefig

    def keep(self, *a, **kw):
        seen["fig"] = self
        return real(self, *a, **kw)
    monkeypatch.setattr(Figure, "savefig", keep)
    plan = _example_plan()
    plot_mod.plot_plan(plan, str(tmp_path / "p.png"))
    legend = seen["fig"].axes[0].get_legend()
    labels = [t.get_text() for t in legend.get_texts()]
    assert len(labels) == len(set(labels))
    caps = [x for x in labels if "cap" in x]
    assert len(caps) == 2 and caps[0] != caps[1]
    faces = [(tuple(h.get_facecolor()), h.get_hatch()) for h in legend.legend_handles
             if hasattr(h, "get_hatch")]
    assert len(faces) == len(set(faces)) == len(labels) - 2
    json.dumps(labels)


def _example_plan():
    from gpusched.placement import spec
    from gpusched.placement.pool import parse_pool
    from gpusched.placement.solvers import place
    w = spec.load("examples/placement/models.yaml")
    return place(w.models, parse_pool(w.pool or "H100:8"), "heuristic", time_limit_s=10)


# -- errors in words (finding 8) ------------------------------------------------------------------
@pytest.mark.parametrize("argv, says", [
    (["--horizon", "0"], "--horizon must be > 0 seconds (got 0)"),
    (["--time-limit", "-1"], "--time-limit must be > 0 seconds (got -1)"),
    (["--plot", "/nonexistent-gpusched-dir/x.png"],
     ("--plot /nonexistent-gpusched-dir/x.png: the folder /nonexistent-gpusched-dir does not "
      "exist")),
])
def test_place_mistakes_say_which_argument(argv, says, capsys):
    """Finding 8: "--time-limit and --horizon must be > 0" did not say which; a missing --plot
    folder printed a raw [Errno 2] after the whole plan. Refused before any work now."""
    from gpusched.cli import main
    rc = main(["place", "examples/placement/models.yaml", *argv])
    err = capsys.readouterr().err
    assert rc == 2 and says in err, err
    assert "[Errno" not in err and "Traceback" not in err


def test_os_errors_are_described_without_errno(tmp_path):
    from gpusched.cli.common import describe_os_error
    missing = FileNotFoundError(2, "No such file or directory", str(tmp_path / "no" / "x.png"))
    text = describe_os_error(missing)
    assert "[Errno" not in text and f"the folder {tmp_path / 'no'} does not exist" in text
    assert describe_os_error(PermissionError(13, "Permission denied", "/root/x")) == \
        "/root/x: permission denied: pick a path you can use"
    assert "no such file" in describe_os_error(
        FileNotFoundError(2, "No such file or directory", str(tmp_path / "x.yaml")))


def test_submit_without_a_daemon_fails_before_starting_clients(tmp_path, capsys):
    """In the fast suite a started process would fail this test (conftest): the check comes
    first, and says why."""
    from gpusched.cli import main
    rc = main(["submit", "--endpoint", f"ipc://{tmp_path}/none.sock"])
    err = capsys.readouterr().err
    assert rc == 2 and "no daemon at" in err and "does not exist" in err, err
