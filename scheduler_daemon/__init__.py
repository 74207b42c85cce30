"""The scheduler daemon: wire, transport, core, clock, devices, pump, server and daemon.

The simulator's hot path (``COMPILED``) is plain Python compiled with Cython where it has been
built (``tools/build_sim.py``, run by ``make setup``): the extension modules sit beside the
sources and Python imports them instead. ``GPUSCHED_PURE=1`` imports the ``.py`` sources instead
(the same code, interpreted: the identical-results tests compare the two); so does a build older
than any of its sources, with a warning. The finder below only picks the file; nothing else in
the package knows which one runs.
"""
import os as _os
import sys as _sys

COMPILED = (
    "scheduler_daemon.core.gpu_specs",
    "scheduler_daemon.core.estimates",
    "scheduler_daemon.core.jobs",
    "scheduler_daemon.core.queues",
    "scheduler_daemon.core.policies",
    "scheduler_daemon.core.scheduler",
    "scheduler_daemon.clock",
    "scheduler_daemon.pump",
    "scheduler_daemon.simulation",
    "scheduler_daemon.devices.simgpu",
)


def _source(module: str) -> str:
    return _os.path.join(_os.path.dirname(__file__), *module.split(".")[1:]) + ".py"


def _built(module: str) -> str | None:
    """The compiled extension of ``module`` if one is there and newer than its sources."""
    import importlib.machinery

    py = _source(module)
    base = py[:-3]
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        if _os.path.exists(base + suffix):
            so = _os.path.getmtime(base + suffix)
            srcs = [p for p in (py, base + ".pxd") if _os.path.exists(p)]
            return base + suffix if all(_os.path.getmtime(p) <= so for p in srcs) else None
    return None


def compiled_state() -> str:
    """``"pure"`` (forced), ``"compiled"`` (every module built and current), ``"stale"`` (some
    built, not all current: all run interpreted) or ``"absent"`` (none built)."""
    if _os.environ.get("GPUSCHED_PURE", "") not in ("", "0"):
        return "pure"
    built = [_built(m) for m in COMPILED]
    if all(built):
        return "compiled"
    import importlib.machinery

    some = any(_os.path.exists(_source(m)[:-3] + s) for m in COMPILED
               for s in importlib.machinery.EXTENSION_SUFFIXES)
    return "stale" if some else "absent"


class _SourceFinder:
    """Imports the ``.py`` of the compiled modules (pure mode, or a stale build)."""

    @staticmethod
    def find_spec(fullname, path=None, target=None):
        if fullname not in COMPILED:
            return None
        import importlib.util

        return importlib.util.spec_from_file_location(fullname, _source(fullname))


_state = compiled_state()
if _state in ("pure", "stale"):
    if _state == "stale":
        import warnings

        warnings.warn("gpusched: the compiled simulator modules are older than their sources; "
                      "running them interpreted (make setup rebuilds them)", stacklevel=2)
    _sys.meta_path.insert(0, _SourceFinder())
