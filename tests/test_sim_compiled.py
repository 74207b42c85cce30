"""The compiled simulator (``tools/build_sim.py``: the scheduler core, clock, pump, virtual run and
simulated GPU compiled with Cython from their own ``.py`` sources) gives exactly the numbers the
interpreted one gives, and those of the code it replaced.

Each scenario runs the whole stack (``SchedulerCore`` + ``VirtualRun`` + ``SimGpu``) on a mix of
models and open-loop arrivals, and records every job's state, first start, finish and execution
time, the order the run reported them in, the device's counters and the learned estimates, floats
as ``repr`` (exact). The same scenarios run in a child process with ``GPUSCHED_PURE=1`` (the
``.py`` sources, interpreted) and in one with the compiled modules; the outcomes must be equal.

``GOLDEN`` holds the SHA-256 of the outcomes of the synthetic scenarios as the simulator computed
them before it was compiled (commit 43889f4, all interpreted, heapq and numpy): a change that
moves any number fails ``test_outcomes_are_those_of_the_code_before_compilation``. A deliberate
change of the model updates them: ``python tests/test_sim_compiled.py --golden``.

    python tests/test_sim_compiled.py [--golden]   # the outcomes (or their digests) as JSON
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# (name, scenario): a synthetic mix (varied block shapes, shared memory, registers, multi-wave
# grids, bandwidth and arithmetic fractions) under every kind of policy, with and without host
# costs, on two GPUs, several seeds
SCENARIOS = [
    ("slo-t4", dict(policy="slo", seed=1, rate=900.0)),
    ("srpt-t4-costs", dict(policy="srpt", seed=2, rate=1200.0, launch_us=4.5, notice_us=12.0)),
    ("paella-t4-costs", dict(policy="paella", seed=3, rate=1200.0, launch_us=4.5, notice_us=12.0,
                             max_extra=1)),
    ("cuda-ms-t4", dict(policy="cuda-ms", seed=4, rate=1200.0, launch_us=4.5)),
    ("triton-t4", dict(policy="triton", seed=5, rate=900.0, launch_us=4.5)),
    ("slo-h100-shed", dict(policy="slo", seed=6, rate=700.0, gpu="H100", shed=True,
                           launch_us=4.5, notice_us=12.0, hw_queues=8)),
    ("cuda-ms-h100", dict(policy="cuda-ms", seed=7, rate=3000.0, gpu="H100", hw_queues=8)),
    ("fifo-jbj-t4", dict(policy="fifo-jbj", seed=8, rate=600.0)),
    ("mps-t4-q1", dict(policy="mps", seed=9, rate=900.0, hw_queues=1, quantum_us=0.0)),
    ("clockwork-t4", dict(policy="clockwork", seed=10, rate=1500.0)),
    ("slo-srpt-t4", dict(policy="slo-srpt", seed=11, rate=1500.0, notice_us=12.0, max_extra=0)),
]
# the same stack on Paella's model mix (the zoo's kernels), as the experiments run it
ZOO_SCENARIOS = [
    ("zoo-slo", dict(policy="slo", seed=1, rate=1200.0, zoo=True, jobs=40)),
    ("zoo-cuda-ms", dict(policy="cuda-ms", seed=2, rate=1200.0, zoo=True, jobs=40,
                         launch_us=4.5)),
]
# runs (the core's quantum: a job's kernels chained on its stream, noticed once), which came
# after the golden digests: compared compiled against interpreted only
RUN_SCENARIOS = [
    ("srpt-t4-runs", dict(policy="srpt", seed=12, rate=1200.0, launch_us=4.5, notice_us=12.0,
                          run_us=1000.0)),
    ("zoo-slo-srpt-runs", dict(policy="slo-srpt", seed=13, rate=1500.0, zoo=True, jobs=60,
                               launch_us=4.5, notice_us=12.0, run_us=120.0)),
]
# MPS partitions (R8), which came after the golden digests: tenants t0-t2 on shares of the
# SMs (t2 unpartitioned in the first); compared compiled against interpreted only
PARTITION_SCENARIOS = [
    ("mps-t4-partitions", dict(policy="mps", seed=14, rate=900.0,
                               partitions={"t0": 0.5, "t1": 0.3})),
    ("mps-h100-partitions", dict(policy="mps", seed=15, rate=2000.0, gpu="H100", launch_us=4.5,
                                 partitions={"t0": 0.4, "t1": 0.3, "t2": 0.3})),
]

# the partition scenarios' digests as computed at 81629cb, before the per-SM loops were narrowed
# to a kernel's partition (the same numbers since: test_partition_outcomes_are_pinned)
PARTITION_GOLDEN = {
    "mps-t4-partitions":
        "304d553f3416f98e030987f5162c387ec0205c515ec426f2fab9aef6f08757f4",
    "mps-h100-partitions":
        "89694f5055ffd29e67821c9a3c11be466630fbf60bfcd7e48b2720375cd14a0a",
}

GOLDEN = {
    "slo-t4":
        "aa4e851dc7339f4ac014f9042bac2a3e0b959e2c70308f7f933e3f2a00fcb661",
    "srpt-t4-costs":
        "6db13c789162557bc1a3cfbea19b1857e50da63bef2994e7abf2dbd5cbb1e53b",
    "paella-t4-costs":
        "90b14a2ecf5f38ef075c34f343efc6a24cabe8de1215cb5f73c38b0f220c1ec8",
    "cuda-ms-t4":
        "e0253413c6c9e4fbe9f7ae6433623431744e3bc832d41e585f7217e2da668a4e",
    "triton-t4":
        "791f52c5b27c02679198fc9451caf33808971f5ec785a82e117294912b4004d9",
    "slo-h100-shed":
        "19ca2b1c4ff4a2c11690b06f3aed57e746e3086cb71357e6169407cf16f0d83c",
    "cuda-ms-h100":
        "e38df40251fc06f1b438509fddd44a1c862de8c033d9e510f36f41b2fb26c582",
    "fifo-jbj-t4":
        "2b686e5f1ef3d550a4611161ff34cf880ab267e42286a1ea3b2f30918c04498a",
    "mps-t4-q1":
        "b9fa4f11b4eca7ba34662671ef686e6262e25cbf351514627118d7f654edd3bc",
    "clockwork-t4":
        "d6729789cc0a4fe8a218cffb465731e43465d63d801f9c74003a32354a158200",
    "slo-srpt-t4":
        "084bd87217b0afadf62e3ceaf9d0049e070f8a8009ceabea9627a1368cfef6a6",
}


def _mix(gpu: str, seed: int):
    from scheduler_daemon.wire.kernels import KernelSpec

    rng = random.Random(1000 + seed)
    models = []
    for m in range(5):
        kernels = []
        for i in range(rng.randint(3, 25)):
            block = rng.choice([32, 64, 128, 256, 512, 1024])
            regs = rng.randint(16, min(128, 65536 // block))
            kernels.append(KernelSpec(
                f"m{m}.k{i}", est_us=round(rng.uniform(2.0, 300.0), 3),
                grid=rng.choice([1, 4, 40, 80, 160, rng.randint(1, 600)]), block=block,
                regs=regs, smem=rng.choice([0, 0, 1024, 16 * 1024, 48 * 1024]),
                mem_frac=rng.choice([0.0, 0.3, 0.7, 1.0]),
                comp_frac=rng.choice([0.0, 0.25, 0.5, 1.0])))
        models.append((f"m{m}", rng.uniform(0.5, 2.0), kernels))
    return models


def _zoo_mix(gpu: str):
    from profilers import zoo

    shares = {"mobilenetv2": .257, "resnet18": .272, "resnet34": .168, "squeezenet1.1": .0895,
              "resnet50": .0745, "densenet121": .0706, "googlenet": .0546, "inceptionv3": .0138}
    return [(m, s, zoo.zoo_kernels(m, 1, gpu, "fp16")) for m, s in shares.items()]


def run_scenario(policy: str, seed: int, rate: float, gpu: str = "T4", jobs: int = 150,
                 sigma: float = 2.0, launch_us: float = 0.0, notice_us: float = 0.0,
                 hw_queues: int = 32, max_extra: int = 2, shed: bool = False,
                 quantum_us: float = 0.5, zoo: bool = False, run_us: float = 0.0,
                 partitions: dict | None = None) -> dict:
    """One run of the whole stack; its outcome with every float as ``repr``."""
    from scheduler_daemon.core.gpu_specs import gpu_spec
    from scheduler_daemon.core.jobs import Job
    from scheduler_daemon.core.policies import Triton, make_policy
    from scheduler_daemon.core.scheduler import SchedulerCore
    from scheduler_daemon.devices.simgpu import SimGpu
    from scheduler_daemon.simulation import VirtualRun

    spec = gpu_spec(gpu)
    models = _zoo_mix(gpu) if zoo else _mix(gpu, seed)
    pol = (Triton(instance_groups={m: 1 + i % 3 for i, (m, _, _) in enumerate(models)})
           if policy == "triton" else make_policy(policy))
    core = SchedulerCore(pol, spec.capacity, max_extra=max_extra, shed=shed,
                         quantum_s=run_us * 1e-6, overlapping=bool(run_us))
    dev = SimGpu(spec, hw_queues=hw_queues, quantum_us=quantum_us, launch_us=launch_us,
                 partitions=partitions)
    run = VirtualRun(core, dev, notice_s=notice_us * 1e-6,
                     launch_s=launch_us * 1e-6 if run_us else 0.0)
    reports = [0]
    if run_us:   # count the device's completion reports (a run is one)
        inner = dev.on_complete

        def counted(job, now, d, per=None):
            reports[0] += 1
            inner(job, now, d, per)
        dev.on_complete = counted
    order: list = []
    run.on_finished = lambda j: order.append(j.id)
    entries = [core.make_model(m, m, list(ks)) for m, _, ks in models]
    solo = [sum(k.est_us for k in ks) * 1e-3 for _, _, ks in models]
    rng = random.Random(seed)
    mu = math.log(1.0 / rate) - sigma ** 2 / 2
    t = 0.0
    all_jobs = []
    for i in range(jobs):
        t += rng.lognormvariate(mu, sigma)
        mi = rng.choices(range(len(models)), weights=[w for _, w, _ in models])[0]
        job = Job(i, f"t{i % 3}", entries[mi], solo[mi] * rng.choice([2.0, 5.0, 10.0]), t)
        all_jobs.append(job)
        run.submit_at(job)
    run.run()
    out = {
        "jobs": [[j.id, j.state.value, repr(j.finish), repr(j.first_start), repr(j.exec_s)]
                 for j in all_jobs],
        "order": order,
        "device": [dev.kernels_done, repr(dev.busy_s), repr(dev.comp_s), repr(dev.mem_s),
                   repr(run.env.now)],
        "estimates": [[repr(e.estimates.get(i)) for i in range(len(e.estimates))]
                      for e in entries],
    }
    if run_us:
        out["reports"] = reports[0]
    return out


def digest(outcome: dict) -> str:
    return hashlib.sha256(json.dumps(outcome, sort_keys=True).encode()).hexdigest()


def _outcomes(golden_only: bool = False) -> dict:
    out = {}
    for name, sc in SCENARIOS + ([] if golden_only else
                                 ZOO_SCENARIOS + RUN_SCENARIOS + PARTITION_SCENARIOS):
        out[name] = run_scenario(**sc)
    return out


def _child(pure: bool) -> dict:
    """The outcomes, computed in a child process with or without ``GPUSCHED_PURE``."""
    env = {k: v for k, v in os.environ.items() if k != "GPUSCHED_PURE"}
    if pure:
        env["GPUSCHED_PURE"] = "1"
    r = subprocess.run([sys.executable, __file__], capture_output=True, text=True, cwd=ROOT,
                       env=env, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def _can_build() -> bool:
    return (importlib.util.find_spec("Cython") is not None
            and shutil.which(os.environ.get("CC", "cc")) is not None)


def _state_or_skip() -> None:
    import scheduler_daemon

    state = scheduler_daemon.compiled_state()
    if state == "pure":
        pytest.skip("GPUSCHED_PURE is set: the compiled modules are not in use")
    if state != "compiled" and not _can_build():
        pytest.skip("no Cython or C compiler here: the simulator runs interpreted")


# -- the fast path is there -------------------------------------------------------------------
def test_the_compiled_modules_are_loaded_when_built():
    """With Cython and a C compiler (make setup builds them), every hot-path module is the
    compiled one, so the fast path cannot silently disappear."""
    import importlib.machinery

    import scheduler_daemon

    _state_or_skip()
    assert scheduler_daemon.compiled_state() == "compiled", (
        "the simulator's compiled modules are missing or older than their sources: "
        "run `make setup` (tools/build_sim.py)")
    for name in scheduler_daemon.COMPILED:
        mod = importlib.import_module(name)
        assert mod.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)), mod.__file__


@pytest.mark.slow
def test_the_pure_switch_runs_the_sources():
    code = ("import scheduler_daemon, scheduler_daemon.devices.simgpu as g;"
            "print(scheduler_daemon.compiled_state(), g.__file__)")
    env = dict(os.environ, GPUSCHED_PURE="1")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env=env, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    state, path = r.stdout.split()
    assert state == "pure" and path.endswith("simgpu.py")


def test_bench_sim_speed_reports_kernels_per_second():
    """``gpusched bench sim-speed --json`` keeps ``kernels_per_s`` (no timing is asserted)."""
    from gpusched.bench.sim_speed import run_sim_speed

    res = run_sim_speed(jobs=20, repeat=1)
    assert res["kernels_per_s"] > 0 and set(res["by_policy"]) == {"slo", "cuda-ms"}
    assert res["by_policy"]["slo"]["kernels"] == res["by_policy"]["cuda-ms"]["kernels"] > 0
    import scheduler_daemon

    assert res["compiled"] == (scheduler_daemon.compiled_state() == "compiled")


def test_jobs_and_models_pickle_compiled_or_not():
    """Extension types do not pickle by default: jobs, models and their estimates still do."""
    import pickle

    from scheduler_daemon.core.gpu_specs import gpu_spec
    from scheduler_daemon.core.jobs import Job
    from scheduler_daemon.core.policies import make_policy
    from scheduler_daemon.core.scheduler import SchedulerCore
    from scheduler_daemon.wire.kernels import KernelSpec

    core = SchedulerCore(make_policy("slo"), gpu_spec("T4").capacity)
    m = core.make_model("m", "m", [KernelSpec("a", 10.0, grid=8), KernelSpec("b", 7.0)])
    m.estimates.observe(0, 3.3e-6)
    job = Job(7, "t", m, 5.0, 0.25, payload={"x": 1})
    job.finish, job.late, job.stream = 1.5, True, 12
    got = pickle.loads(pickle.dumps(job))
    for f in Job._fields:
        if f != "model":
            assert getattr(got, f) == getattr(job, f), f
    assert got.model.kernels == m.kernels and got.model.demands == m.demands
    assert [got.model.estimates.remaining(i) for i in range(3)] == \
        [m.estimates.remaining(i) for i in range(3)]
    assert pickle.loads(pickle.dumps(core.capacity)) == core.capacity


# -- same numbers -----------------------------------------------------------------------------
@pytest.mark.slow
def test_compiled_and_interpreted_runs_are_identical():
    _state_or_skip()
    pure, compiled = _child(pure=True), _child(pure=False)
    assert pure["_state"] == "pure" and compiled["_state"] == "compiled"
    assert set(pure) == set(compiled)
    for name in pure:
        if name.startswith("_"):
            continue
        p, c = pure[name], compiled[name]
        assert p["device"] == c["device"], name
        assert p["order"] == c["order"], name
        assert p["estimates"] == c["estimates"], name
        for jp, jc in zip(p["jobs"], c["jobs"], strict=True):
            assert jp == jc, (name, jp, jc)
        assert any(j[1] == "done" for j in p["jobs"]), name
    for name, _ in RUN_SCENARIOS:   # they did run runs: fewer reports than kernels
        assert pure[name]["reports"] == compiled[name]["reports"]
        assert 0 < pure[name]["reports"] < 0.8 * pure[name]["device"][0], name
        assert all(j[1] in ("done", "shed") for j in pure[name]["jobs"]), name   # none stuck


def test_outcomes_are_those_of_the_code_before_compilation():
    """The digests of the synthetic scenarios equal those of the simulator as it was before
    it was compiled (and in whichever mode this process runs)."""
    got = {name: digest(o) for name, o in _outcomes(golden_only=True).items()}
    assert got == GOLDEN


def test_partition_outcomes_are_pinned():
    """MPS partitions give the numbers they gave before the placement loops were narrowed to
    a partition's SMs (a kernel's slab row, the fit scratch and the spread read only those)."""
    got = {name: digest(run_scenario(**sc)) for name, sc in PARTITION_SCENARIOS}
    assert got == PARTITION_GOLDEN


if __name__ == "__main__":
    import scheduler_daemon

    if "--golden" in sys.argv:
        print(json.dumps({n: digest(o) for n, o in _outcomes(golden_only=True).items()},
                         indent=4))
    else:
        res = _outcomes()
        res["_state"] = scheduler_daemon.compiled_state()
        print(json.dumps(res))
