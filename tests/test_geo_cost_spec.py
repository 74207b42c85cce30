"""Geo spec validation (field + YAML line) and each cost-model term against a hand calculation."""

import pytest

from geo import cost_model as cm
from geo.candidates import Model, multi_site, single_site
from geo.spec import GeoSpecError, parse_job, parse_spec

SMALL = """\
sites:
  - name: a
    gpus: [{type: H100, count: 16, usd_per_hour: 2.0}]
  - name: b
    gpus: [{type: H100, count: 16, usd_per_hour: 3.0}]
links:
  - {src: a, dst: b, rtt_ms: 20, gbps: 8, egress_usd_per_gb: 0.05}
datasets:
  - {name: d, size_gb: 100, replicas: [a]}
jobs:
  - name: j
    params: 1.0e+9
    tokens_per_iter: 1.0e+6
    iterations: 1000
    gpu_types: [H100]
    min_gpus: 8
    max_gpus: 16
    dataset: d
    modes: [single-site, data-parallel, pipeline, local-sgd]
    local_sgd_h: 10
    microbatches: 4
    hidden_size: 1000
"""


# -- each cost term vs a hand calculation ---------------------------------------------------
def test_compute_term():
    # 6 * 1e9 params * 1e6 tokens = 6e15 FLOP over 8 GPUs of 1e15 FLOP/s at 50% -> 1.5 s
    assert cm.transformer_work_flop(1e9, 1e6) == 6e15
    assert cm.compute_s(6e15, 8, 1e15, 0.5) == pytest.approx(1.5)


def test_ring_allreduce_term():
    # 4 peers, 1 GB, 1 GB/s, 1 ms: 2*3*0.001 + 2*3/4*1 = 0.006 + 1.5
    assert cm.ring_allreduce_s(1e9, 4, 1e9, 1e-3) == pytest.approx(1.506)
    assert cm.ring_allreduce_s(1e9, 1, 1e9, 1e-3) == 0.0


def test_hierarchical_and_local_sgd_terms():
    # intra: 8 GPUs, 2 GB at 50 GB/s, 10 us: 2*7*1e-5 + 2*7/8*2e9/5e10 = 0.00014 + 0.07
    # cross: 2 sites, 1 GB/s, 10 ms: 2*1*0.01 + 2*1/2*2e9/1e9 = 0.02 + 2.0
    intra = 0.00014 + 0.07
    cross = 2.02
    got = cm.hierarchical_allreduce_s(2e9, [8, 8], 5e10, 1e-5, 1e9, 1e-2)
    assert got == pytest.approx(intra + cross)
    # local-SGD with H = 10 divides only the cross-site term
    assert cm.hierarchical_allreduce_s(2e9, [8, 8], 5e10, 1e-5, 1e9, 1e-2, sync_every=10) == \
        pytest.approx(intra + cross / 10)


def test_pipeline_terms():
    # 4 micro-batches of 100 MB over 1 GB/s with 5 ms: 2 * 4 * (0.005 + 0.1) = 0.84 s
    assert cm.pipeline_boundary_s(1e8, 4, 1e9, 5e-3) == pytest.approx(0.84)
    assert cm.pipeline_bubble_factor(3, 8) == pytest.approx(1.25)


def test_data_read_money_and_migration_terms():
    # 100 GB over 1000 iterations at 0.5 GB/s -> 0.2 s per iteration; overlapped with a 1 s step
    assert cm.data_read_s(100e9, 1000, 0.5e9) == pytest.approx(0.2)
    assert cm.iteration_s(1.0, 0.2) == 1.0 and cm.iteration_s(0.1, 0.2) == 0.2
    assert cm.gpu_usd_per_hour([(8, 2.0), (4, 3.0)]) == 28.0
    assert cm.egress_usd([(10e9, 0.05), (2e9, 0.1)]) == pytest.approx(0.7)
    assert cm.allreduce_wan_bytes_per_site(1e9, 4) == pytest.approx(1.5e9)
    # 100 GB at 1 GB/s + 10 ms + 300 s restart
    assert cm.migration_s(100e9, 1e9, 0.01, 300) == pytest.approx(400.01)
    assert cm.migration_s(100e9, None, 0.01, 300) == 300


def test_single_site_candidate_matches_hand_calculation():
    spec = parse_spec(SMALL)
    m = Model(spec)
    job = spec.jobs[0]
    # compute: 6e15 / (8 * 989e12 * 0.4); all-reduce: 2 GB bf16 grads over 8 GPUs at 50 GB/s
    comp = 6e15 / (8 * 989e12 * 0.4)
    ar = 2 * 7 * 1e-5 + 2 * 7 / 8 * 2e9 / 50e9
    c = single_site(m, job, "a", "H100", 8)
    assert c.iteration_s == pytest.approx(comp + ar)
    assert c.gpu_usd_per_hour == 16.0 and c.egress_usd_per_hour == 0.0
    assert c.runtime_h == pytest.approx(1000 * (comp + ar) / 3600)
    # at b the dataset (at a) streams over the 8 Gb/s link: 100 GB / 1000 it / 1 GB/s = 0.1 s
    cb = single_site(m, job, "b", "H100", 8)
    assert cb.iteration_s == pytest.approx(max(comp + ar, 0.1))
    assert cb.total_usd == pytest.approx(24.0 * cb.runtime_h + 100 * 0.05)


def test_data_parallel_local_sgd_and_pipeline_candidates():
    spec = parse_spec(SMALL)
    m = Model(spec)
    job = spec.jobs[0]
    comp16 = 6e15 / (16 * 989e12 * 0.4)
    intra = 2 * 7 * 1e-5 + 2 * 7 / 8 * 2e9 / 50e9
    cross = 2 * 1 * 0.01 + 2 * 1 / 2 * 2e9 / 1e9  # rtt 20 ms -> alpha 10 ms; 8 Gb/s = 1 GB/s
    dp = multi_site(m, job, "data-parallel", ["a", "b"], "H100", 8)
    # each site reads half the dataset: b's half over the link: 50 GB / 1000 / 1 GB/s = 0.05 s
    assert dp.iteration_s == pytest.approx(comp16 + intra + cross)
    # egress per iteration: each site sends 2(k-1)/k * 2 GB = 2 GB at $0.05 -> $0.2
    assert dp.egress_usd_per_hour == pytest.approx(0.2 * 3600 / dp.iteration_s)
    ls = multi_site(m, job, "local-sgd", ["a", "b"], "H100", 8)
    assert ls.iteration_s == pytest.approx(comp16 + intra + cross / 10)
    pp = multi_site(m, job, "pipeline", ["a", "b"], "H100", 8)
    act_mb = 1e6 * 1000 * 2 / 4  # tokens * hidden * 2 bytes / micro-batches = 500 MB
    boundary = 2 * 4 * (0.01 + act_mb / 1e9)
    intra_half = 2 * 7 * 1e-5 + 2 * 7 / 8 * 1e9 / 50e9  # each stage holds half the gradients
    assert pp.iteration_s == pytest.approx(comp16 * (1 + 1 / 4) + intra_half + boundary)


# -- spec errors name the field and the line -------------------------------------------------
@pytest.mark.parametrize("old, new, line, needle", [
    ("    min_gpus: 8", "    min_gpus: eight", 16, "jobs[0].min_gpus"),
    ("    max_gpus: 16", "    max_gpus: 4", 16, "min_gpus 8 is above max_gpus 4"),
    ("    dataset: d", "    dataset: nope", 18, "'nope' is not a dataset"),
    ("    local_sgd_h: 10", "    local_sgd_h: 10\n    colour: red", 21, "unknown field `colour`"),
    ("    modes: [single-site, data-parallel, pipeline, local-sgd]", "    modes: [teleport]", 19,
     "jobs[0].modes[0]"),
    ("{type: H100, count: 16, usd_per_hour: 3.0}", "{type: H100, count: -1, usd_per_hour: 3.0}",
     5, "sites[1].gpus[0].count"),
    ("replicas: [a]", "replicas: [zz]", 9, "'zz' is not a site"),
])
def test_spec_errors_name_field_and_line(old, new, line, needle):
    assert old in SMALL
    with pytest.raises(GeoSpecError) as e:
        parse_spec(SMALL.replace(old, new), "s.yaml")
    msg = str(e.value)
    assert msg.startswith(f"s.yaml:{line}:"), msg
    assert needle in msg


def test_malformed_yaml_names_the_line():
    with pytest.raises(GeoSpecError, match=r"^s.yaml:3: malformed YAML"):
        parse_spec("sites:\n  - name: a\n  gpus: [\n", "s.yaml")


def test_unknown_region_without_link_is_an_error():
    text = SMALL.replace("links:\n  - {src: a, dst: b, rtt_ms: 20, gbps: 8, egress_usd_per_gb: 0.05}\n",
                         "")
    with pytest.raises(GeoSpecError, match="no WAN link between sites 'a' and 'b'"):
        Model(parse_spec(text))


def test_measured_regions_need_no_links():
    text = SMALL.replace("name: a", "name: aws:us-east-1").replace("name: b", "name: aws:eu-west-1")
    text = text.replace("links:\n  - {src: a, dst: b, rtt_ms: 20, gbps: 8, egress_usd_per_gb: 0.05}\n", "")
    text = text.replace("replicas: [a]", "replicas: [aws:us-east-1]")
    m = Model(parse_spec(text))
    ln = m.wan.get("aws:us-east-1", "aws:eu-west-1")
    assert 0.02 < ln.alpha_s < 0.06 and ln.beta_Bps > 0 and ln.egress_usd_per_gb > 0


def test_job_yaml_parses_and_validates():
    job = parse_job("name: x\nparams: 1.0e+9\ntokens_per_iter: 1000\niterations: 10\n"
                    "gpu_types: [A100]\nmin_gpus: 1\nmax_gpus: 2\n")
    assert job.modes == ["single-site"] and job.max_gpus == 2
    with pytest.raises(GeoSpecError, match=r"j.yaml:5: gpu_types: .*length >= 1"):
        parse_job("name: x\nparams: 1.0e+9\ntokens_per_iter: 1000\niterations: 10\n"
                  "gpu_types: []\nmin_gpus: 1\nmax_gpus: 2\n", "j.yaml")
    with pytest.raises(GeoSpecError, match="exactly one of tokens_per_iter and samples_per_iter"):
        parse_job("name: x\nparams: 1.0e+9\niterations: 10\ngpu_types: [A100]\n"
                  "min_gpus: 1\nmax_gpus: 2\n")


def test_yaml_aliases_are_walked_once_and_cycles_or_depth_are_errors():
    import time
    # 4**12 paths if every alias were expanded: must answer in well under a second
    lines = ['x0: &x0 ["a", "a"]'] + [f"x{i}: &x{i} [*x{i-1}, *x{i-1}, *x{i-1}, *x{i-1}]"
                                      for i in range(1, 13)]
    t0 = time.perf_counter()
    with pytest.raises(GeoSpecError, match="unknown field"):
        parse_spec("\n".join(lines), "bomb.yaml")
    assert time.perf_counter() - t0 < 2.0
    with pytest.raises(GeoSpecError, match="got list"):
        parse_spec("&a [*a]\n", "cyc.yaml")
    with pytest.raises(GeoSpecError, match="deep"):
        parse_spec("sites: " + "[" * 3000 + "]" * 3000, "deep.yaml")
    with pytest.raises(GeoSpecError, match="deeper than"):
        parse_spec("sites: " + "[" * 100 + "]" * 100, "deep.yaml")


def test_spec_rejects_values_outside_realistic_ranges():
    for old, new, field in (("usd_per_hour: 2.0", "usd_per_hour: 1.0e+29", "usd_per_hour"),
                            ("params: 1.0e+9", "params: 1.0e+30", "params"),
                            ("tokens_per_iter: 1.0e+6", "tokens_per_iter: 1.0e+30",
                             "tokens_per_iter")):
        with pytest.raises(GeoSpecError, match=field):
            parse_spec(SMALL.replace(old, new, 1), "s.yaml")


def test_non_utf8_spec_is_a_one_line_error(tmp_path):
    from geo.spec import load_spec
    f = tmp_path / "bin.yaml"
    f.write_bytes(b"\xff\xfe garbage")
    with pytest.raises(GeoSpecError, match="not UTF-8"):
        load_spec(str(f))


def test_site_without_a_link_names_its_line():
    text = SMALL.replace("links:\n  - {src: a, dst: b, rtt_ms: 20, gbps: 8, egress_usd_per_gb: 0.05}\n",
                         "")
    with pytest.raises(GeoSpecError, match=r"^s.yaml:4: sites\[1\].name: no WAN link"):
        parse_spec(text, "s.yaml")


# -- cross-field checks: every field a spec (or the service's state) can hold -----------------
@pytest.mark.parametrize("old, new, needle", [
    ("    gpu_types: [H100]", "    gpu_types: [H100, H100]", "jobs[0].gpu_types: a GPU type is listed twice"),
    ("replicas: [a]", "replicas: [a, b, a]", "datasets[0].replicas[2]: 'a' is listed twice"),
    ("{src: a, dst: b,", "{src: a, dst: a,", "links[0].dst: a link from 'a' to itself"),
    ("    hidden_size: 1000", "    hidden_size: 1000\n    running: {a: {A100: 8}}",
     "runs on A100 at a, not one of its gpu_types"),
    ("    gpu_types: [H100]", "    gpu_types: [H100, A100]\n    running: {a: {A100: 8}}",
     "site a has no A100 GPUs"),
    ("    modes: [single-site, data-parallel, pipeline, local-sgd]",
     "    modes: [single-site]\n    running: {a: {H100: 8}}\n    running_mode: pipeline",
     "running_mode 'pipeline' is not one of the job's modes"),
    ("    hidden_size: 1000", "    hidden_size: 1000\n    running: {a: {H100: 8}, b: {H100: 8}}",
     "runs at several sites: give running_mode"),
])
def test_cross_field_mistakes_are_refused(old, new, needle):
    assert old in SMALL
    with pytest.raises(GeoSpecError) as e:
        parse_spec(SMALL.replace(old, new, 1), "s.yaml")
    assert needle in str(e.value) and str(e.value).startswith("s.yaml:"), str(e.value)


def test_a_consistent_running_state_is_accepted():
    spec = parse_spec(SMALL.replace("    hidden_size: 1000", "    hidden_size: 1000\n"
                                    "    running: {a: {H100: 8}, b: {H100: 8}}\n"
                                    "    running_mode: data-parallel", 1))
    assert spec.jobs[0].running_mode == "data-parallel"


def test_price_event_has_the_specs_bound_so_the_state_reloads(tmp_path):
    import msgspec

    from geo.protocol import REQUESTS, GeoProtocolError, decode, event_from_args
    from geo.replan import apply_event
    from geo.state import GeoState, load_state, save_state
    # a price the spec would refuse is refused as an event too (it used to be accepted, and
    # the saved state then failed to load after a restart: "geo state ... is damaged")
    with pytest.raises(ValueError,
                       match="USD_PER_HOUR must be a price.*at most 1,000,000.*got 1e9"):
        event_from_args("price", ["a", "H100", "1e9"])
    with pytest.raises(GeoProtocolError):
        decode([b"EVENT", msgspec.msgpack.encode({"req_id": 1, "event": {
            "kind": "price", "site": "a", "gpu_type": "H100", "usd_per_hour": 1e9}})], REQUESTS)
    spec = parse_spec(SMALL)
    apply_event(spec, event_from_args("price", ["a", "H100", "1e6"]), {})  # the largest allowed
    save_state(GeoState(spec=spec), str(tmp_path / "st.json"))
    assert load_state(str(tmp_path / "st.json")).spec.sites[0].gpus[0].usd_per_hour == 1e6


@pytest.mark.parametrize("field, value", [("objective", "fastest"), ("solver", "magic"),
                                          ("down", {"zz": {"H100": 4}}),
                                          ("down", {"a": {"B200": 4}}),
                                          ("down", {"a": {"H100": -4}})])
def test_damaged_state_fields_are_refused_on_load(tmp_path, field, value):
    import json

    from geo.state import GeoState, load_state, save_state
    f = tmp_path / "st.json"
    save_state(GeoState(spec=parse_spec(SMALL)), str(f))
    d = json.loads(f.read_text())
    d[field] = value
    f.write_text(json.dumps(d))
    with pytest.raises(GeoSpecError, match="is damaged"):
        load_state(str(f))
