import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from gpusched.procs import start_daemon, stop_daemon  # noqa: E402


def _has_gpu() -> bool:
    """An NVIDIA GPU NVML sees (torch may be a CPU build: tests that need torch on CUDA say
    so themselves)."""
    from scheduler_daemon.devices.factory import visible_gpus
    return bool(visible_gpus())


# tests that start daemons as processes are end-to-end tests: marked slow wherever they are
PROCESS_FIXTURES = {"daemon", "daemon_factory", "service"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    if _has_gpu():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (run 'make test-gpu' on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fast_tests_start_no_process(request, monkeypatch):
    """Under ``-m "not slow"`` (make test-fast) a test that starts a process fails, naming the
    fix, so the fast suite stays free of subprocesses without anyone having to remember."""
    if "not slow" not in (request.config.option.markexpr or "") or \
            request.node.get_closest_marker("slow"):
        return
    import subprocess
    real = subprocess.Popen.__init__

    def refuse(self, args, *rest, **kwargs):
        argv = [args] if isinstance(args, (str, bytes)) else list(args)
        if argv and (argv[0] == sys.executable or "gpusched" in str(argv[0])):
            raise AssertionError("this test starts a process: mark it @pytest.mark.slow (the "
                                 "fast suite runs in-process only)")
        real(self, args, *rest, **kwargs)   # a library's helper (ldconfig): not ours
    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


@pytest.fixture
def daemon_factory(tmp_path):
    """Start daemons as subprocesses; they are drained (SIGTERM) at the end of the test."""
    procs = []

    def start(*args, endpoint=None):
        ep = endpoint or f"ipc://{tmp_path}/d{len(procs)}.sock"
        log = open(tmp_path / f"daemon{len(procs)}.log", "w")
        proc, ep = start_daemon(*args, endpoint=ep, log_level="INFO", stderr=log)
        procs.append(proc)
        return proc, ep

    yield start
    for p in procs:
        stop_daemon(p)


@pytest.fixture
def daemon(daemon_factory):
    """A daemon on the simulated GPU (T4), default policy. Raw protocol peers in the tests do
    not ping, so silent clients are dropped only after 10 s (not the default 1 s)."""
    proc, ep = daemon_factory("--backend", "sim", "--client-timeout", "10")
    return ep
