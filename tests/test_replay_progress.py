"""``place --validate`` shows progress from the start (issue 20): each simulated GPU reports
its requests as their arrivals are simulated, and running in chunks changes no result."""
import pytest

from gpusched.placement.pool import parse_pool
from gpusched.placement.replay import CHUNKS, _simulate_gpu, replay, tasks_of
from gpusched.placement.solvers import place
from gpusched.placement.spec import ModelSpec

MODELS = (ModelSpec("a", "resnet18", 300.0, 40.0, line=1),
          ModelSpec("b", "squeezenet1.1", 200.0, 30.0, line=2))


def _plan():
    return place(MODELS, parse_pool("H100:4"), "heuristic")


def test_chunked_gpu_run_reports_every_request_and_changes_nothing():
    (task, *_) = tasks_of(_plan(), MODELS, horizon_s=0.5)
    total = sum(len(r[5]) for r in task[2])
    told: list[int] = []
    chunked = _simulate_gpu(task, told.append)
    assert chunked == _simulate_gpu(task)        # same latencies, request for request
    assert sum(told) == total and len(told) >= CHUNKS // 2   # many reports, not one at the end
    assert all(n > 0 for n in told)


def test_replay_says_the_total_first_then_progress_adds_up_to_it():
    seen: dict = {"total": None, "done": 0, "before_total": 0}

    def on_total(n):
        seen["total"] = n

    def progress(n):
        if seen["total"] is None:
            seen["before_total"] += 1
        seen["done"] += n

    res = replay(_plan(), MODELS, horizon_s=0.5, workers=1, progress=progress,
                 on_total=on_total)
    assert seen["before_total"] == 0 and seen["total"] > 0
    assert seen["done"] == seen["total"]
    assert res == replay(_plan(), MODELS, horizon_s=0.5, workers=1)


def test_worker_processes_report_through_the_queue():
    models = MODELS + (ModelSpec("c", "resnet50", 400.0, 30.0, line=3),
                       ModelSpec("d", "bert-base", 150.0, 60.0, line=4))
    plan = place(models, parse_pool("H100:8"), "one-per-gpu")
    assert len(tasks_of(plan, models, horizon_s=0.3)) >= 2
    seen = {"total": 0, "done": 0, "calls": 0}

    def progress(n):
        seen["done"] += n
        seen["calls"] += 1

    res = replay(plan, models, horizon_s=0.3, workers=2, progress=progress,
                 on_total=lambda n: seen.update(total=n))
    assert seen["done"] == seen["total"] > 0 and seen["calls"] > len(plan.gpus)
    assert res == replay(plan, models, horizon_s=0.3, workers=1)


@pytest.mark.parametrize("policy, share", [("slo", None), ("mps", 0.9), ("clockwork", None)])
def test_a_replay_that_stops_at_the_last_deadline_gives_the_same_attainment(policy, share):
    """``late=False`` (bench usher, the trials) stops each GPU at its last request's deadline:
    an overloaded GPU's backlog is not run, its requests are inf, and every request meets or
    misses its SLO as in the full run: the replays' policies, and an MPS partition (the
    partition trials)."""
    models = MODELS + (ModelSpec("c", "resnet50", 8000.0, 30.0, line=3),
                       ModelSpec("d", "bert-base", 8000.0, 20.0, line=4))
    plan = place(models, parse_pool("H100:16"), "mem-packing")    # all on one GPU: overloaded
    (task,) = tasks_of(plan, models, horizon_s=0.2)
    # (mps: the replicas split ``share`` of the SMs between them)
    task = (task[0], policy, [(*r[:6], share and share / len(task[2])) for r in task[2]])
    full, cut = _simulate_gpu(task), _simulate_gpu(task, late=False)
    slo = {m.name: m.slo_ms for m in models}
    for name in full:
        assert [x * 1e3 <= slo[name] for x in full[name]] == \
            [x * 1e3 <= slo[name] for x in cut[name]]
        assert all(x == y for x, y in zip(full[name], cut[name]) if y != float("inf"))
    # the backlog was not run: requests the full run finished (late) are never done here
    # (clockwork sheds a hopeless job: nothing is left to run late)
    assert policy == "clockwork" or sum(x == float("inf") for v in cut.values() for x in v) > \
        sum(x == float("inf") for v in full.values() for x in v)
    if policy == "slo":   # and the scores agree on attainment, not on a broken model's p99
        a = replay(plan, models, horizon_s=0.2, workers=1)
        b = replay(plan, models, horizon_s=0.2, workers=1, late=False)
        assert [m["slo_attainment"] for m in a["models"]] == \
            [m["slo_attainment"] for m in b["models"]]
        assert min(m["slo_attainment"] for m in b["models"]) < 0.99


def test_a_gpu_with_no_requests_stops_at_once():
    assert _simulate_gpu(("H100", "slo", []), late=False) == {}
    gpu, policy, reps = tasks_of(_plan(), MODELS, horizon_s=0.1)[0]
    assert _simulate_gpu((gpu, policy, [(*r[:5], [], r[6]) for r in reps]), late=False) == {}
