"""The cost model: shard sizes, Eq. 16 fit, paper presets, serialisation."""
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


def test_roundtrip_and_malformed_record():
    cost = paper_preset("qwen2.5-7b")
    assert CostModel.from_dict(cost.to_dict()) == cost
    with pytest.raises(InputError, match="malformed"):
        CostModel.from_dict({"name": "x"})
