"""`gpusched bench models` argument checks (the measurement itself is run by hand: slow)."""
import argparse

import pytest

from gpusched.bench.models import _parse


def _args(**kw):
    d = {"models": "resnet18", "batches": "1,8", "reps": 5, "json": True}
    d.update(kw)
    return argparse.Namespace(**d)


def test_parse_accepts_zoo_names_and_batches():
    assert _parse(_args(models="resnet18,bert-base", batches="1,8")) == (["resnet18", "bert-base"], [1, 8])


@pytest.mark.parametrize("kw,match", [({"models": "nope"}, "unknown zoo model"),
                                      ({"batches": "1,x"}, "comma-separated"),
                                      ({"batches": "0"}, "1..1024"), ({"reps": 0}, "reps")])
def test_parse_rejects_user_mistakes(kw, match):
    with pytest.raises(ValueError, match=match):
        _parse(_args(**kw))
