"""The cost model: shard sizes, Eq. 16 fit, paper presets, serialisation."""
import json
from dataclasses import replace

import numpy as np
import pytest

from components.base import ConfigError, InputError
from components.skrull.cost_model import (SHARDED, CommModel, CostModel, paper_preset, quadratic_crossover,
                                          shard_sizes)


@pytest.mark.parametrize("length,cp", [(1, 2), (7, 2), (100, 8), (1001, 8), (31, 16)])
def test_zigzag_shards_cover_the_sequence_evenly(length, cp):
    sizes = shard_sizes(length, cp)
    assert sum(sizes) == length and len(sizes) == cp
    assert max(sizes) - min(sizes) <= 2


def test_comm_fit_recovers_latency_and_bandwidth():
    sizes = np.array([1e3, 1e4, 1e5, 1e6, 1e7, 1e8])
    true = CommModel(latency_s=50e-6, base_s=20e-6, bandwidth_Bps=2e9)
    fit = CommModel.fit(sizes, [true.time(s) for s in sizes])
    assert fit.latency_s == pytest.approx(50e-6, rel=0.05)
    assert fit.bandwidth_Bps == pytest.approx(2e9, rel=0.05)
    assert fit.time(0) == 0.0
    with pytest.raises(InputError, match="expected >= 3 positive"):
        CommModel.fit([1, 2], [1, 2])


def test_with_bucket_gives_exactly_the_requested_bucket_size():
    """``with_bucket(t)`` set the budget to t × α, and ``int(budget // α)`` floored to t - 1 for about
    half of the random α (the sensitivity study's C rows were one token short)."""
    rng = np.random.default_rng(0)
    base = paper_preset("qwen2.5-0.5b")
    for _ in range(2000):
        alpha = float(rng.choice([rng.uniform(0.01, 1.0), rng.uniform(1.0, 5000.0), rng.lognormal(8.0, 3.0)]))
        tokens = int(rng.integers(1, 200_000))
        cost = replace(base, mem_bytes_per_token=alpha).with_bucket(tokens)
        assert cost.bucket_size == tokens, (alpha, tokens)
        assert cost.mem_budget_bytes == pytest.approx(tokens * alpha, rel=1e-12)
        assert CostModel.from_dict(json.loads(json.dumps(cost.to_dict()))).bucket_size == tokens
    assert base.with_bucket(8 * 1024).bucket_size == 8 * 1024 and base.with_bucket(1).mem_budget_bytes == 1.0


def test_paper_presets_match_the_notes():
    small, big = paper_preset("qwen2.5-0.5b"), paper_preset("qwen2.5-7b")
    assert (small.bucket_size, big.bucket_size) == (26 * 1024, 13 * 1024)
    # "for Qwen2.5-0.5B the quadratic term dominates above ≈ 4K" (App. C.2): FLOPs crossover ≈ 5h
    assert 3500 < quadratic_crossover(paper_preset("qwen2.5-0.5b", fwd_bwd_attention=3.0)) < 5000
    # 32K costs ~30x the FLOPs of 4K (App. C.2)
    r = small.flops_time(32 * 1024) / small.flops_time(4 * 1024)
    assert 20 < r < 40
    # Table 5: 512 MB all-gather reproduced within 6 %
    assert small.all_gather.time(512 * 2**20) == pytest.approx(3416e-6, rel=0.06)
    with pytest.raises(ConfigError, match="expected one of"):
        paper_preset("llama-70b")


def test_rank_times_follow_eq_1_2():
    cost = paper_preset("qwen2.5-0.5b")
    lengths, placement = [1000, 2000, 30000], [0, 1, SHARDED]
    t = cost.rank_times(lengths, placement, 8)
    comm = cost.t_comm(cost.volume(30000))
    dist = cost.t_comp_shard(30000, 8)
    assert t[0] == pytest.approx(max(comm, cost.t_comp(1000)) + dist)
    assert t[2] == pytest.approx(comm + dist)          # no local work: the comm is exposed
    assert cost.microbatch_time(lengths, placement, 8) == pytest.approx(max(t))
    # K/V gathered again in the backward (this repo's CP implementation): one more all-gather per layer
    v = cost.volume(30000)
    again = replace(cost, kv_gathers=2)
    assert again.t_comm(v) == pytest.approx(comm + cost.layers * cost.all_gather.time(v))
    assert CostModel.from_dict(again.to_dict()).kv_gathers == 2
    assert type(CostModel.from_dict({**again.to_dict(), "kv_gathers": 2.0}).kv_gathers) is int


def test_roundtrip_and_malformed_record():
    cost = paper_preset("qwen2.5-7b")
    assert CostModel.from_dict(cost.to_dict()) == cost
    with pytest.raises(InputError, match="malformed"):
        CostModel.from_dict({"name": "x"})


def test_comm_fit_latency_floor_binds_for_small_messages():
    """Noiseless points of a collective whose large messages switch to a slower protocol (+0.8 ms from
    1 MB): the large-message line's intercept lies above the small-message latency. The fit keeps
    base <= latency, so small messages cost the measured latency (the unclamped fit charged them
    1.5x), and every measured point is within a sane factor."""
    sizes = np.array([4, 64, 256, 1024, 4096]) * 1024.0
    times = np.array([0.5e-3 + s / 1.5e9 + (0.8e-3 if s >= 2**20 else 0.0) for s in sizes])
    fit = CommModel.fit(sizes, times)
    assert 0.0 <= fit.base_s <= fit.latency_s == pytest.approx(times[0])
    for s in (1, 4096):
        assert fit.time(s) <= 1.01 * fit.latency_s                           # the latency floor binds
    ratio = np.array([fit.time(s) for s in sizes]) / times
    assert np.all((ratio > 0.6) & (ratio < 1.25)), ratio
    errors = fit.relative_errors(sizes, times)
    assert [e["bytes"] for e in errors] == sizes.tolist()
    assert [e["rel_error"] for e in errors] == pytest.approx((ratio - 1).tolist())
    # the committed profile's shape (4 KB in 0.59 ms, a line through 1.9 ms from 256 KB on): the
    # unclamped fit predicted 4 KB-64 KB messages at 3x their measured time
    times = np.array([0.6e-3, 0.8e-3, *(1.9e-3 + s / 1.1e9 for s in sizes[2:])])
    fit = CommModel.fit(sizes, times)
    assert fit.time(4096) <= 1.05 * times[0] and fit.time(64 * 1024) <= 1.25 * times[1]
    assert fit.time(sizes[-1]) == pytest.approx(times[-1], rel=0.1)


def test_comm_fit_of_noiseless_eq_16_points_is_exact():
    sizes = np.array([4, 64, 256, 1024, 4096, 16384]) * 1024.0
    true = CommModel(latency_s=0.5e-3, base_s=0.3e-3, bandwidth_Bps=1.5e9)
    fit = CommModel.fit(sizes, [true.time(s) for s in sizes])
    for e in fit.relative_errors(sizes, [true.time(s) for s in sizes]):
        assert abs(e["rel_error"]) < 1e-9
    with pytest.raises(InputError, match="expected >= 3 positive"):
        CommModel.fit([1, 2, 3], [1e-3, float("nan"), 2e-3])


@pytest.mark.parametrize("key,value,match", [
    ("mem_bytes_per_token", 0.0, r"mem_bytes_per_token=0\.0; expected a finite number > 0"),
    ("mem_bytes_per_token", float("nan"), r"mem_bytes_per_token=nan; expected a finite number > 0"),
    ("c_tok", "abc", r"c_tok='abc'; expected a finite number >= 0"),
    ("c_quad", -1e-9, r"c_quad=-1e-09; expected a finite number >= 0"),
    ("c_mb", float("inf"), r"c_mb=inf; expected a finite number >= 0"),
    ("layers", -3, r"layers=-3; expected a finite integer > 0"),
    ("layers", 2.5, r"layers=2\.5; expected a finite integer > 0"),
    ("layers", True, r"layers=True; expected a finite integer > 0"),
    ("mem_budget_bytes", -1e9, r"mem_budget_bytes=-1000000000\.0; expected a finite number > 0"),
    ("all_gather", {"latency_s": 1e-3, "bandwidth_Bps": 0}, r"all_gather\.bandwidth_Bps=0; expected a finite number > 0"),
    ("reduce_scatter", {"latency_s": -1e-3}, r"reduce_scatter\.latency_s=-0\.001; expected a finite number >= 0"),
    ("kv_gathers", 0, r"kv_gathers=0; expected a finite integer > 0"),
    ("kv_gathers", 1.5, r"kv_gathers=1\.5; expected a finite integer > 0"),
    ("overlap", "yes", r"overlap='yes'; expected true or false"),
])
def test_cost_model_record_is_validated_field_by_field(key, value, match):
    d = json.loads(json.dumps(paper_preset("qwen2.5-0.5b").to_dict()))
    d[key] = value
    with pytest.raises(InputError, match=r"cost model results/x/cost_model\.json: " + match):
        CostModel.from_dict(d, source="results/x/cost_model.json")
    with pytest.raises(InputError, match=r"^cost model: "):
        CostModel.from_dict(d)


def test_comm_fit_without_a_visible_bandwidth_term_predicts_the_latency():
    """Sizes that are all latency-bound, timed with noise (large ones faster): no positive slope.
    The fit charges every measured size the latency instead of a steep line through the origin."""
    sizes = [1024.0, 4096.0, 16384.0]
    times = [1.17e-3, 0.83e-3, 0.74e-3]
    fit = CommModel.fit(sizes, times)
    assert [fit.time(s) for s in sizes] == pytest.approx([fit.latency_s] * 3)
    assert fit.latency_s == 1.17e-3 and fit.base_s == 0.0
    assert max(abs(e["rel_error"]) for e in fit.relative_errors(sizes, times)) < 0.6


def test_exposed_backward_comm_is_outside_eq_2s_max():
    """The profiled model's Eq. 2: only the forward all-gathers may hide under the local compute; the
    backward's second gather and reduce-scatter always add (this repo's CP attention blocks on them)."""
    base = replace(paper_preset("qwen2.5-0.5b"), kv_gathers=2)
    cost = replace(base, exposed_bwd_comm=True)
    v = cost.volume(30000)
    ag, rs = cost.layers * cost.all_gather.time(v), cost.layers * cost.reduce_scatter.time(v)
    assert cost.comm_split(v) == pytest.approx((ag, ag + rs))
    assert base.comm_split(v) == pytest.approx((2 * ag + rs, 0.0))
    assert replace(cost, overlap=False).comm_split(v) == pytest.approx((0.0, 2 * ag + rs))
    assert cost.comm_split(0.0) == (0.0, 0.0)
    dist = cost.t_comp_shard(30000, 8)
    for local_len in (100, 60000):                  # comm-bound and compute-bound rank 0
        t = cost.rank_times([local_len, 30000], [0, SHARDED], 8)
        assert t[0] == pytest.approx(max(ag, cost.t_comp(local_len)) + ag + rs + dist)
        assert t[1] == pytest.approx(2 * ag + rs + dist)   # no local work: the whole comm shows
        assert t[0] >= base.rank_times([local_len, 30000], [0, SHARDED], 8)[0]
    assert CostModel.from_dict(cost.to_dict()) == cost
    with pytest.raises(InputError, match=r"exposed_bwd_comm=1; expected true or false"):
        CostModel.from_dict({**cost.to_dict(), "exposed_bwd_comm": 1})
