"""Offline profiling: the fits recover known coefficients; measurements scale as the model says."""
import numpy as np
import pytest
import torch

from components.base import InputError
from components.skrull.cost_model import SHARDED, CommModel
from components.skrull.profiling import fit_compute, fit_memory, local_cost_model, measure_microbatch

MODEL = dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2)


def test_fit_compute_recovers_the_cost_terms():
    true = {"c_mb": 0.02, "c_seq": 0.003, "c_seq_shard": 0.005, "c_tok": 2e-4, "c_quad": 2e-7}
    rows = []
    for kind in ("local", "sharded"):
        for s in (16, 64, 256, 1024):
            for n in (1, max(1, 1024 // s)):
                if kind == "local":
                    t = true["c_mb"] + n * (true["c_seq"] + true["c_tok"] * s + true["c_quad"] * s * s)
                else:
                    t = true["c_mb"] + n * (true["c_seq_shard"] + (true["c_tok"] * s + true["c_quad"] * s * s) / 2)
                rows.append({"kind": kind, "length": s, "n": n, "seconds": t, "tokens_on_rank": n * s, "saved_bytes": 100 * n * s})
    fit = fit_compute(rows, 2)
    for k, v in true.items():
        assert fit[k] == pytest.approx(v, rel=1e-6), k
    assert fit_memory(rows)["alpha_bytes_per_token"] == pytest.approx(100)
    with pytest.raises(InputError, match="at least 5"):
        fit_compute(rows[:3], 2)


def test_saved_activation_bytes_grow_linearly_with_tokens():
    from components.skrull.model import build_model

    torch.manual_seed(0)
    model = build_model(MODEL, 300, 512, seed=0)
    rng = np.random.default_rng(0)
    _, m64, t64 = measure_microbatch(model, [64], [0], 2, 300, 1, rng)
    _, m256, t256 = measure_microbatch(model, [64] * 4, [0] * 4, 2, 300, 1, rng)
    sec, m_sh, t_sh = measure_microbatch(model, [128], [SHARDED], 2, 300, 1, rng)
    assert (t64, t256, t_sh) == (64, 256, 64)
    assert m256 == pytest.approx(4 * m64, rel=0.05)
    assert sec > 0 and m_sh == pytest.approx(m64, rel=1e-3)        # a shard saves what its own tokens would
    cost = local_cost_model("t", MODEL, {"c_mb": 0, "c_seq": 0, "c_seq_shard": 0, "c_tok": 1e-4, "c_quad": 0},
                            {"alpha_bytes_per_token": m64 / 64}, {"all_gather": CommModel(1e-4), "reduce_scatter": CommModel(1e-4)},
                            budget_bytes=m64 * 10)
    assert cost.bucket_size == 640 and cost.kv_bytes_per_token == 2 * 2 * 8 * 4
    assert cost.kv_gathers == 2                      # the backward gathers the K/V again (context_parallel)
    assert cost.exposed_bwd_comm                     # ... and blocks on it and on the reduce-scatter


# --- the profiling design and the fit's uncertainty ---------------------------------------------------
TRUE = {"c_mb": 8e-3, "c_seq": 5e-4, "c_seq_shard": 1.5e-3, "c_tok": 6e-5, "c_quad": 7e-8}
QUICK_LENGTHS = (16, 32, 64, 128, 256, 512, 1024, 2048)


def _synthetic(design, noise, seed, lengths=QUICK_LENGTHS, cp=2):
    """Rows of compute_design timed by the cost model itself, times a seeded log-normal noise."""
    from components.skrull.profiling import compute_design

    rng = np.random.default_rng(seed)
    rows = []
    for kind, s, n in compute_design(lengths, 1024, cp, design):
        per_seq = TRUE["c_seq"] + TRUE["c_tok"] * s + TRUE["c_quad"] * s * s if kind == "local" else \
            TRUE["c_seq_shard"] + (TRUE["c_tok"] * s + TRUE["c_quad"] * s * s) / cp
        t = (TRUE["c_mb"] + n * per_seq) * float(np.exp(rng.normal(0.0, noise)))
        rows.append({"kind": kind, "length": s, "n": n, "seconds": t, "tokens_on_rank": n * s, "saved_bytes": n * s})
    return rows


def test_design_varies_the_number_of_sequences_at_every_fixed_length():
    from components.skrull.profiling import compute_design

    pts = compute_design([16, 64, 256, 1024, 2048], 1024, 2)
    for kind in ("local", "sharded"):
        ns = {s: sorted(n for k, ss, n in pts if k == kind and ss == s) for s in (16, 64, 256, 1024, 2048)}
        assert ns == {16: [1, 2, 4, 8, 16, 32, 64], 64: [1, 2, 4, 8, 16], 256: [1, 2, 4], 1024: [1], 2048: [1]}
    many = {n * s for k, s, n in pts if n > 1}
    assert len(many) > 3                                  # n·S is no longer constant along the n > 1 points
    assert compute_design([16, 48], 100, 2) == [(k, s, n) for s, ns in ((16, (1, 2, 4, 6)), (48, (1, 2)))
                                                 for n in ns for k in ("local", "sharded")]   # n_max kept
    old = compute_design([16, 64, 256, 1024, 2048], 1024, 2, "endpoints")
    assert sorted({n for _, s, n in old if s == 16}) == [1, 64] and len(old) == 16
    assert all(k == "local" for k, _, _ in compute_design([2, 8, 32], 64, 1))    # cp 1: nothing to shard
    assert ("sharded", 2, 1) not in compute_design([2, 8, 32], 64, 2)          # S < 2·cp cannot be sharded
    with pytest.raises(InputError, match="expected one of"):
        compute_design([16, 64], 1024, 2, "random")


def test_fit_compute_recovers_known_coefficients_from_noisy_points():
    from components.skrull.profiling import COMPUTE_TERMS

    fit = fit_compute(_synthetic("powers_of_two", 0.01, 0), 2)
    for k in COMPUTE_TERMS:                               # 1 % noise per point
        assert fit[k] == pytest.approx(TRUE[k], rel=0.12 if k == "c_seq" else 0.04), k
        assert abs(fit[k] - TRUE[k]) < 4 * fit[f"{k}_sd"], k     # the reported uncertainty covers the error
        assert 0 < fit[f"{k}_sd"] < 0.05 * TRUE[k], k
    assert fit["mape"] < 0.02 and fit["n_points"] == 58 and fit["bootstrap"] == 200
    wrong = fit_compute(_synthetic("powers_of_two", 0.01, 0), 4)           # a fit with the wrong CP degree
    assert any(wrong[k] != pytest.approx(TRUE[k], rel=0.12 if k == "c_seq" else 0.04) for k in COMPUTE_TERMS)


def test_fit_uncertainty_is_deterministic_and_smaller_on_the_new_design():
    rows = _synthetic("powers_of_two", 0.05, 0)
    a, b = fit_compute(rows, 2), fit_compute(list(rows), 2)
    assert a == b                                          # seeded bootstrap
    assert 1 < a["condition_number"] < 10 and all(np.isfinite(v) for v in a.values())
    assert fit_compute(rows, 2, seed=1)["c_tok_sd"] != a["c_tok_sd"]
    none = fit_compute(rows, 2, bootstrap=0)
    assert none["c_seq_sd"] is None and none["c_seq"] == a["c_seq"]
    old = fit_compute(_synthetic("endpoints", 0.05, 0, lengths=(16, 64, 256, 1024, 2048)), 2)
    # same noise, old design (n = 1 and n·S = 1024 only): c_seq is far less certain
    assert old["c_seq_sd"] > 2 * a["c_seq_sd"] and old["c_seq_shard_sd"] > 2 * a["c_seq_shard_sd"]
    with pytest.raises(InputError, match="bootstrap"):
        fit_compute(rows, 2, bootstrap=-1)
    with pytest.raises(InputError, match="positive"):
        fit_compute([{**r, "seconds": 0.0} for r in rows], 2)


def test_profile_compute_times_every_design_point():
    from components.skrull.profiling import compute_design, profile_compute

    torch.set_num_threads(1)
    rows = profile_compute(MODEL, 300, 2, [8, 16, 32], 32, 2, seed=0)
    assert [(r["kind"], r["length"], r["n"]) for r in rows] == compute_design([8, 16, 32], 32, 2)
    assert all(r["seconds"] > 0 and r["saved_bytes"] > 0 for r in rows)
    assert {r["n"] for r in rows if r["length"] == 8 and r["kind"] == "local"} == {1, 2, 4}
    assert [r["tokens_on_rank"] for r in rows if r["length"] == 8] == [8, 4, 16, 8, 32, 16]
    with pytest.raises(InputError, match="repeats"):
        profile_compute(MODEL, 300, 2, [8, 16, 32], 32, 0, seed=0)


def test_profiling_config_validates_the_design():
    from pydantic import ValidationError

    from components.skrull.config import ProfilingConfig

    old = ProfilingConfig(lengths=[16, 64, 256, 1024, 2048], tokens_per_config=1024, repeats=3)   # earlier params
    assert old.lengths == [16, 64, 256, 1024, 2048] and old.repeats == 3
    assert ProfilingConfig().lengths == list(QUICK_LENGTHS) and ProfilingConfig().repeats == 5
    with pytest.raises(ValidationError, match="per-sequence and per-micro-batch costs"):
        ProfilingConfig(lengths=[64, 256, 1024], tokens_per_config=100)
    with pytest.raises(ValidationError, match="repeats"):
        ProfilingConfig(repeats=0)


def test_comm_benchmark_takes_the_fastest_of_interleaved_passes_and_reports_the_fit_error():
    import json

    from components.skrull.profiling import comm_fit_report, comm_worker
    from tasks.launch import spawn

    sizes = [4096, 65536, 262144]
    per_rank = spawn(comm_worker, 2, sizes, 3, 0, timeout=300)
    for raw in per_rank:
        assert set(raw) == {"all_gather", "reduce_scatter"}
        assert all(len(raw[k]) == len(sizes) and min(raw[k]) > 0 for k in raw)
    comm = {k: CommModel.fit(sizes, per_rank[0][k]) for k in ("all_gather", "reduce_scatter")}
    report = comm_fit_report(sizes, per_rank[0], comm)
    for k, r in report.items():
        assert 0 <= r["base_s"] <= r["latency_s"]
        assert [p["bytes"] for p in r["points"]] == sizes
        assert [p["measured_s"] for p in r["points"]] == per_rank[0][k]
        assert r["max_abs_rel_error"] == max(abs(p["rel_error"]) for p in r["points"])
    json.dumps(report, allow_nan=False)                                   # what fit.json holds
    with pytest.raises(InputError, match="repeats=0"):
        comm_worker(0, 1, sizes, 0)


class _Engine:
    """What run_step needs of a DeepSpeed engine, on a plain module (single process)."""

    def __init__(self, module):
        self.module = module

    def __call__(self, **kw):
        return self.module(**kw)

    def backward(self, loss, scale_wrt_gas=False):
        loss.backward()

    def step(self):
        pass


def test_real_step_measures_the_saved_activation_bytes_of_every_micro_batch():
    """run_step counts what autograd saves in each micro-batch (the profile's memory measure), and a
    sharded micro-batch saves what a local one does per token on the rank — the linear memory model
    the token budget rests on (neither the gathered K/V nor a causal mask over it is saved)."""
    from components.skrull.context_parallel import LoopbackExchange, build_layout, microbatch_loss
    from components.skrull.model import build_model
    from components.skrull.profiling import _saved_bytes_counter
    from components.skrull.schedule import MicroBatch, Schedule
    from components.skrull.train import run_step

    torch.manual_seed(0)
    model = build_model(MODEL, 300, 512, seed=0)
    rng = np.random.default_rng(0)
    tokens = [rng.integers(0, 300, n) for n in (64, 64, 128)]
    sched = Schedule("t", dp=1, cp=2, ranks=((MicroBatch((0, 1), (0, 0)), MicroBatch((2,), (SHARDED,))),))
    saved: list[int] = []
    run_step(_Engine(model), sched, tokens, 0, 0, LoopbackExchange(2), 2, step=False, saved_bytes=saved)
    assert len(saved) == 2
    for mb, got in zip(sched.ranks[0], saved):
        lay = build_layout(mb.seqs, mb.placement, tokens, 0, 2, LoopbackExchange(2))
        hooks, seen = _saved_bytes_counter(model)
        with hooks:
            microbatch_loss(model, lay)
        assert got == sum(seen.values()) > 0
    assert saved[1] / 64 == pytest.approx(saved[0] / 128, rel=1e-3)      # per token on the rank


def test_activation_summary_counts_micro_batches_over_the_budget():
    from components.skrull.train import activation_summary

    rec = lambda v, b: {"variant": v, "saved_bytes_per_microbatch": b}      # noqa: E731
    results = [{"records": [rec("skrull", [10, 120]), rec("deepspeed", [50])]},
               {"records": [rec("skrull", [99, 100, 101]), rec("deepspeed", [])]}]
    out = activation_summary(results, 100.0, ["deepspeed", "skrull"])
    assert out == {"deepspeed": {"activation_bytes_max": 50, "activation_budget_violations": 0, "microbatches_measured": 1},
                   "skrull": {"activation_bytes_max": 120, "activation_budget_violations": 2, "microbatches_measured": 5}}
