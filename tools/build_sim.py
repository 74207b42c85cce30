"""Compile the simulator's hot path with Cython: ``python tools/build_sim.py`` (``make setup``).

The modules in ``scheduler_daemon.COMPILED`` are plain Python; each has an augmenting ``.pxd``
beside it that declares its classes as extension types with typed fields and typed locals, so
Cython compiles the very same source to C. The extensions land beside the sources
(``*.cpython-*.so``, ignored by git; the generated C in ``build/sim``), where Python imports them
in place of the ``.py``. Without Cython or a C compiler this prints why and exits 0: everything
runs interpreted, with the same results. ``GPUSCHED_PURE=1`` forces the interpreted modules
(scheduler_daemon/__init__.py); a built module older than its sources is not used.

    python tools/build_sim.py [--clean] [--force] [-j N]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

os.environ["GPUSCHED_PURE"] = "1"  # (the build reads the list; it imports none of them)
from scheduler_daemon import COMPILED

# compiled and interpreted runs must give the same floats: no contraction of a * b + c into a
# fused multiply-add (the C compiler may do it where the CPU has FMA), no fast-math
CFLAGS = ["-O2", "-ffp-contract=off", "-fno-fast-math", "-g0",
          "-Wno-unused-function", "-Wno-unreachable-code"]
DIRECTIVES = dict(language_level=3, annotation_typing=False, boundscheck=False,
                  wraparound=False, initializedcheck=False, cdivision=False,
                  embedsignature=False, binding=False)


def ext_suffix() -> str:
    return sysconfig.get_config_var("EXT_SUFFIX") or ".so"


def targets() -> list[tuple[str, Path]]:
    return [(m, ROOT / (m.replace(".", "/") + ".py")) for m in COMPILED]


def clean() -> None:
    for _, py in targets():
        for so in py.parent.glob(py.stem + ".*.so"):
            so.unlink()
    shutil.rmtree(ROOT / "build" / "sim", ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clean", action="store_true", help="remove the built extensions")
    ap.add_argument("--force", action="store_true", help="rebuild even if up to date")
    ap.add_argument("-j", type=int, default=os.cpu_count() or 1, help="parallel compiles")
    args = ap.parse_args()
    if args.clean:
        clean()
        return 0
    try:
        from Cython.Build import cythonize
        from setuptools import Extension
        from setuptools.dist import Distribution
    except ImportError as e:
        print(f"build_sim: {e}; the simulator runs interpreted (pip install cython)")
        return 0
    t = time.perf_counter()
    os.chdir(ROOT)
    exts = [Extension(m, [str(py.relative_to(ROOT))], extra_compile_args=CFLAGS)
            for m, py in targets()]
    try:
        mods = cythonize(exts, build_dir="build/sim", compiler_directives=DIRECTIVES,
                         nthreads=max(1, args.j), force=args.force, quiet=True)
        dist = Distribution({"name": "gpusched-sim", "ext_modules": mods})
        cmd = dist.get_command_obj("build_ext")
        cmd.inplace = True
        cmd.parallel = max(1, args.j)
        cmd.build_temp = str(ROOT / "build" / "sim" / "obj")
        cmd.force = args.force
        cmd.ensure_finalized()
        cmd.run()
    except Exception as e:  # noqa: BLE001 (no compiler, no headers: run interpreted)
        print(f"build_sim: could not compile ({type(e).__name__}: {e}); the simulator runs "
              "interpreted")
        clean()
        return 0
    # a module is used only when newer than its sources: touch what was up to date
    now = time.time()
    for _, py in targets():
        for so in py.parent.glob(py.stem + ext_suffix()):
            os.utime(so, (now, now))
    print(f"build_sim: {len(exts)} modules compiled in {time.perf_counter() - t:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
