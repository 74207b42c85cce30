"""Token generation through a live ``--backend torch`` daemon: TTFT/TPOT on the daemon's real
clock, their SLO misses in STATUS and the metrics, and the README's snippet as written."""
from __future__ import annotations

import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from gpusched.bench.compat_env import ensure_torchvision  # noqa: E402

ensure_torchvision()
transformers = pytest.importorskip("transformers")

from client_lib import Client  # noqa: E402
from client_lib.generate import generate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=97,
                                  n_positions=64, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).eval()


@pytest.mark.slow
def test_ttft_and_tpot_per_tenant_in_status_and_metrics(daemon_factory):
    _, ep = daemon_factory("--backend", "torch", "--torch-device", "cpu", "--metrics-port", "0")
    m = _gpt2()
    ids = torch.randint(1, 97, (1, 6))
    with Client(ep, tenant="llm") as c, Client(ep, tenant="other") as o:
        # a tight TPOT SLO: every later token misses it; a loose TTFT SLO: the first does not
        g = c.generate(m, ids, max_new_tokens=8, ttft_slo_ms=60_000, tpot_slo_ms=0.001)
        assert torch.equal(g.tokens, generate(None, m, ids, 8).tokens)
        with o.intercept():                      # another tenant's work meanwhile
            y = m(ids).logits
        assert torch.equal(y.cpu(), m(ids).logits.detach())
        st = {t.tenant: t for t in c.status().tenants}
    t = st["llm"]
    assert t.tokens == 8 and t.ttft_p50_ms > 0 and t.tpot_p50_ms > 0
    assert t.ttft_slo_missed == 0 and t.tpot_slo_missed == 7
    assert st["other"].tokens == 0
    log = Path(ep.removeprefix("ipc://")).parent / "daemon0.log"
    port = re.search(r"metrics: serving http://127.0.0.1:(\d+)", log.read_text())
    assert port, log.read_text()[-2000:]
    body = urllib.request.urlopen(f"http://127.0.0.1:{port[1]}/metrics", timeout=5).read().decode()
    assert re.search(r'gpusched_ttft_seconds_count\{tenant="llm"\} 1\.0', body)
    assert re.search(r'gpusched_tpot_seconds_count\{tenant="llm"\} 7\.0', body)
    assert re.search(r'gpusched_token_slo_missed_total\{kind="tpot",tenant="llm"\} 7\.0', body)


@pytest.mark.slow
def test_the_readme_generation_snippet_runs_as_written(daemon_factory, tmp_path):
    readme = (ROOT / "README.md").read_text()
    (code,) = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "c.generate(" in b]
    _, ep = daemon_factory("--backend", "torch", "--torch-device", "cpu")
    script = tmp_path / "snippet.py"
    script.write_text(code)
    env = {**__import__("os").environ, "GPUSCHED_ENDPOINT": ep}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "TTFT p50" in out.stdout
