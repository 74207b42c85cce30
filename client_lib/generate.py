"""Greedy token generation through the daemon (issue 17): ``client.generate(model, ids)``.

A decoder-only model's generate loop runs in the client as the model's own Python code, with
every aten op in the daemon (the intercept path, client_lib/intercept.py): the KV cache the
model keeps between steps is made of ``RemoteTensor``s, so it lives in the daemon, counted
in the tenant's memory quota, and only each step's chosen token comes back. Each token step
is sent as one ``EAGER_OPS`` batch (up to 4,096 ops; a model that syncs inside its forward
sends more), so each step is one job of the daemon's scheduler core and other tenants' jobs
interleave between steps and ops under its policy. The batch that ends a token carries a mark:
the daemon measures time to first token (from the generation's first batch) and time per
output token (since the previous token) per tenant, in STATUS and its metrics, against the
SLOs given here (``ttft_slo_ms`` for the first token's batches, ``tpot_slo_ms`` for each later
one, which are also those jobs' SLOs for the daemon's policy).

With ``client=None`` the same loop runs locally: the same ops, so the same tokens.
"""
from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass, field

log = logging.getLogger("gpusched.client.generate")

STEP_BATCH = 4096      # ops per EAGER_OPS message at most (wire/protocol.py)


@dataclass
class Generation:
    """What ``generate`` made: ``tokens`` [batch, new] (int64), ``sequences`` the prompt
    followed by them, and the client's clock: time to first token and each later token's
    time (ms)."""
    tokens: object
    sequences: object
    ttft_ms: float = 0.0
    tpot_ms: list = field(default_factory=list)


def _takes_cache(model) -> bool:
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError, AttributeError):
        return False
    return "past_key_values" in params


def _logits(out):
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


def generate(client, model, input_ids, max_new_tokens: int = 16, attention_mask=None,
             eos_token_id: int | None = None, ttft_slo_ms: float = 0.0,
             tpot_slo_ms: float = 0.0, priority: int = 0, **model_kwargs) -> Generation:
    """Greedy decoding of ``max_new_tokens`` tokens after ``input_ids`` ([batch, len], int64).

    ``model``: a ``transformers`` causal LM (called with ``input_ids``, ``attention_mask``,
    ``past_key_values``, ``use_cache=True``; the cache stays in the daemon) or any module
    mapping ids [batch, len] to logits [batch, len, vocab] (called on the whole sequence each
    step). Stops early when every sequence has made ``eos_token_id``. ``client=None`` runs it
    locally. Errors of the daemon (a step over the tenant's memory quota, an op it refuses)
    raise ``InterceptError`` naming the token step."""
    import torch

    from client_lib.intercept import InterceptError
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be at least 1")
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError("input_ids must be a [batch, length] tensor of token ids")
    cached = _takes_cache(model)
    seq = input_ids
    cur, past, mask = input_ids, None, attention_mask
    new: list = []
    t_start = time.perf_counter()
    t_last = t_start
    ttft, tpot = 0.0, []
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool)
    sess = None
    if client is not None:
        with client.intercept() as sess:   # the session, checked against the daemon once
            pass
    old_batch = sess.batch if sess is not None else 0
    if sess is not None:
        sess.batch = STEP_BATCH   # the finally below puts the caller's back
    try:
        for step in range(max_new_tokens):
            slo = ttft_slo_ms if step == 0 else tpot_slo_ms
            try:
                nxt, past = _step(client, sess, model, cached, step, slo, priority, cur, past,
                                  mask, seq, model_kwargs)
                tok = nxt.cpu() if sess is not None else nxt      # the one sync of a step
            except InterceptError as e:
                raise InterceptError(e.code, f"generate: token {step + 1} of "
                                     f"{max_new_tokens}: {e.message}") from None
            now = time.perf_counter()
            if step == 0:
                ttft = (now - t_start) * 1e3
            else:
                tpot.append((now - t_last) * 1e3)
            t_last = now
            new.append(tok)
            seq = torch.cat([seq, tok[:, None]], dim=-1)
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
            cur = tok[:, None] if cached else seq
            if eos_token_id is not None:
                done |= tok == eos_token_id
                if bool(done.all()):
                    break
    finally:
        if sess is not None:
            sess.batch = old_batch
    tokens = torch.stack(new, dim=1)
    return Generation(tokens=tokens, sequences=seq, ttft_ms=ttft, tpot_ms=tpot)


def _step(client, sess, model, cached, step, slo, priority, cur, past, mask, seq, kwargs):
    """One token: the forward and the argmax, in the daemon when there is a client."""
    import torch

    def forward():
        if cached:
            out = model(input_ids=cur, attention_mask=mask, past_key_values=past,
                        use_cache=True, **kwargs)
            cache = getattr(out, "past_key_values", None)
        else:
            out, cache = model(seq, **kwargs), None
        return _logits(out)[:, -1, :].argmax(dim=-1), cache
    if client is None:
        with torch.no_grad():
            return forward()
    with client.intercept(slo_ms=slo, priority=priority):
        if step == 0:
            sess.gen_start = True
        res = forward()
        sess.token = 1 if step == 0 else 2
    return res
