"""The exact ILP of Eqs. 1-11 and the heuristic's optimality gap."""
from dataclasses import replace

import numpy as np
import pytest

from components.base import ConfigError
from components.skrull.baselines import deepspeed_schedule
from components.skrull.cost_model import paper_preset
from components.skrull.gds import skrull_schedule
from components.skrull.ilp import solve_exact
from components.skrull.lengths import TABLE1
from components.skrull.schedule import price, validate
from components.skrull.simulate import ilp_study, max_group_length


@pytest.mark.parametrize("kv_gathers,exposed", [(1, False), (2, False), (2, True)])
def test_ilp_optimum_is_a_valid_schedule_no_slower_than_any_heuristic(kv_gathers, exposed):
    cost = replace(paper_preset("qwen2.5-0.5b").with_bucket(6000), kv_gathers=kv_gathers,   # tight bucket: memory binds
                   exposed_bwd_comm=exposed)
    rng = np.random.default_rng(4)
    lengths = np.minimum(TABLE1["chatqa2"].sample(6, rng), max_group_length(2, 6000))
    res = solve_exact(lengths, 2, 2, cost, time_limit_s=60)
    assert res.optimal, res.status
    validate(res.schedule, lengths, cost.bucket_size)
    opt = price(res.schedule, lengths, cost).iteration_s
    assert opt == pytest.approx(res.objective_s, rel=1e-6)       # the ILP models the simulator exactly
    for other in (skrull_schedule(lengths, 2, 2, cost), deepspeed_schedule(lengths, 2, 2, cost, 1)):
        assert opt <= price(other, lengths, cost).iteration_s * (1 + 1e-9)


def test_ilp_study_reports_gaps():
    cost = paper_preset("qwen2.5-0.5b")
    pools = {n: TABLE1[n].sample(500, np.random.default_rng(0)) for n in ("wikipedia", "chatqa2")}
    rows = ilp_study(pools, cost, 2, 2, 5, 2, 30.0, seed=0)
    assert [r["dataset"] for r in rows] == ["chatqa2", "wikipedia"]
    for r in rows:
        assert r["solved"] and r["gap"] >= -1e-9 and r["heuristic_ms"] > 0


def test_ilp_refuses_large_instances():
    with pytest.raises(ConfigError, match="expected <= 16"):
        solve_exact(np.full(20, 100), 1, 2, paper_preset("qwen2.5-7b"))


@pytest.mark.parametrize("kv_gathers,exposed", [(1, False), (2, False), (2, True)])
@pytest.mark.parametrize("dp", [1, 2])
def test_ilp_prices_micro_batches_that_mix_sharded_and_local_sequences_exactly(kv_gathers, exposed, dp):
    """Two sequences longer than the bucket must be sharded; the short ones hide their comm as local
    work in the same micro-batches, where Eq. 2's max and the exposed backward comm both matter."""
    cost = replace(paper_preset("qwen2.5-0.5b").with_bucket(6000), kv_gathers=kv_gathers, exposed_bwd_comm=exposed,
                   c_seq=2e-5, c_seq_shard=1e-5, c_mb=3e-5)       # per-sequence/micro-batch costs (profiled model)
    lengths = np.array([9000, 9000, 1200, 1000, 800, 700])
    res = solve_exact(lengths, dp, 2, cost, time_limit_s=60)
    assert res.optimal, res.status
    assert any(-1 in mb.placement and len(set(mb.placement)) > 1 for mbs in res.schedule.ranks for mb in mbs)
    assert price(res.schedule, lengths, cost).iteration_s == pytest.approx(res.objective_s, rel=1e-9)


def test_ilp_charges_no_collective_when_a_sharded_sequence_exchanges_no_bytes():
    """With kv_bytes_per_token = 0 the simulator prices T_comm(0) = 0; the ILP must not charge the
    collectives' latency floor for a micro-batch that shards (it did: ag >= L * latency * z)."""
    cost = replace(paper_preset("qwen2.5-0.5b").with_bucket(6000), kv_bytes_per_token=0.0)
    lengths = np.array([9000, 7000])                               # both > C: sharded, no local work hides comm
    res = solve_exact(lengths, 1, 2, cost, time_limit_s=60)
    assert res.optimal, res.status
    assert any(-1 in mb.placement for mbs in res.schedule.ranks for mb in mbs)
    assert price(res.schedule, lengths, cost).iteration_s == pytest.approx(res.objective_s, rel=1e-9)
