"""Tests that read ../shared (the measured V100 kernel traces) skip, naming it, where it is absent:
the package ships what it needs at run time; ../shared holds benchmark and optional data."""
import pytest

from profilers import zoo


def _available() -> bool:
    try:
        return (zoo.shared_dir() / "data" / "kernel_traces_v100").is_dir()
    except FileNotFoundError:
        return False


needs_shared = pytest.mark.skipif(
    not _available(), reason="needs ../shared/data/kernel_traces_v100 (or $GPUSCHED_SHARED): the "
    "measured V100 traces are benchmark data, not shipped in the package")
