"""``gpusched bench compat`` on two small architectures, in process (the whole benchmark runs
separately: ``gpusched bench compat``); its table's rows and the CLI's expected mistakes."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
from gpusched.bench.compat_env import ensure_torchvision

ensure_torchvision()     # before torchvision/transformers are imported (see compat_env.py)
pytest.importorskip("transformers")
pytest.importorskip("torchvision")

from gpusched.bench import compat
from gpusched.bench.compat_models import ALL, build
from tests.inproc_client import InProcClient, torch_harness

KEYS = {"name", "family", "registered_ok", "intercept_ok", "max_abs_err", "generate_ok",
        "registered_ratio"}


@pytest.fixture
def client():
    h = torch_harness()
    c = InProcClient(h, tenant="compat")
    yield c
    c.close()
    h.close()


def test_the_benchmark_covers_what_the_issue_lists():
    assert len(ALL) >= 25
    fams = {build(n).family for n in ("alexnet", "lraspp_mobilenet_v3", "bert", "roberta",
                                       "distilbert", "gpt2", "llama", "t5", "vit-hf",
                                       "clip-vision", "whisper-encoder")}
    assert fams == {"torchvision-classification", "torchvision-segmentation", "encoder-only",
                    "decoder-only", "encoder-decoder", "vision", "audio"}


@pytest.mark.parametrize("name", ["squeezenet", "gpt2"])
def test_a_row_of_the_table(client, name):
    row = compat.check_model(client, name, reps=1, settle_s=0.0)
    assert KEYS <= set(row)
    assert row["registered_ok"] and row["intercept_ok"], row["errors"]
    assert row["max_abs_err"] is not None and row["max_abs_err"] <= compat.TOL
    assert row["ops"] > 10 and row["registered_ratio"] > 0
    assert row["generate_ok"] is (True if name == "gpt2" else None)
    json.loads(compat.to_json({"models": [row], "summary": compat.summarize([row]),
                               "reps": 1}))


def test_a_wrong_result_is_reported_not_hidden():
    import torch
    ok, err, why = compat._compare({"a": torch.ones(2)}, {"a": torch.ones(2) + 1e-3})
    assert not ok and err == pytest.approx(1e-3, rel=1e-3) and "max abs error" in why
    ok, err, why = compat._compare((torch.ones(2),), [torch.ones(2)])
    assert not ok and err is None and "structure differs" in why


def test_cli_mistakes_exit_2_without_a_traceback(capsys):
    from gpusched.cli import main
    assert main(["bench", "compat", "--models", "nosuch"]) == 2
    assert "unknown architecture(s) nosuch" in capsys.readouterr().err
    assert main(["bench", "compat", "--list"]) == 0
    assert "whisper-encoder" in capsys.readouterr().out
