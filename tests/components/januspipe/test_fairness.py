"""Fair comparison (same admission rule under the same budget for every family), per-pair message
order of the runtime's receives, the budget admission's candidate search and the nccl refusal."""
from __future__ import annotations

import pytest

from components.base import ConfigError
from components.januspipe.config import PipelineConfig
from components.januspipe.runtime import check_backend
from components.januspipe.schedules import (SCHEDULE_NAMES, ScheduleError, family_grid, janus_sweeps, predecessor,
                                            receive_order, successor, vfold)
from components.januspipe import simulator as simmod
from components.januspipe.simulator import CostModel, build, canonical_1f1b_budget, simulate, tune

UNIT = CostModel(block_s=(1.0, 1.1, 3.3, 1.06), stage_overhead_s=(0.3,) * 4, first_extra_s=(0.0,) * 4,
                 last_extra_s=(0.0,) * 4, block_act_forward_bytes=1.0, block_act_force_bytes=1.34,
                 stage_act_forward_bytes=0.5, stage_act_force_bytes=0.5,
                 state_bytes=100.0, latency_s=0.01, bandwidth_Bps=1e4)


@pytest.mark.parametrize("name", ["1f1b4", "hanayo4", "symfold", "wavek"])
def test_every_compared_family_gets_the_budget_admission(name):
    D, M, nb = 3, 6, 12
    grid = family_grid(name, D, M, max_stages=nb)
    assert name == "wavek" or any(p.get("admission") == "budget" for p in grid)
    budget = canonical_1f1b_budget(D, M, UNIT, nb)
    t = tune(name, D, M, UNIT, nb, budget)
    assert t.best is not None and t.best.peak_memory_max_bytes <= budget * (1 + 1e-9)
    labels = {r.label for r in t.candidates}
    assert any("admission=budget" in lab for lab in labels)
    # the budget-admitted candidates are only built when there is a budget
    assert all("admission=budget" not in r.label for r in tune(name, D, M, UNIT, nb, None).candidates) \
        or name == "wavek"


def _pairs_in_sender_order(s):
    V, dev = s.num_stages, s.placement.stage_device
    for dst in range(s.num_devices):
        posted = receive_order(s, dst)
        for src in range(s.num_devices):
            if src == dst:
                continue
            sends = [successor(a, V) for a in s.actions[src]
                     if successor(a, V) is not None and dev[successor(a, V).stage] == dst]
            recvs = [a for a in posted if dev[predecessor(a, V).stage] == src]
            assert recvs == sends, (s.label, src, dst)
        # every remote input is posted exactly once
        remote = [a for a in s.actions[dst] if predecessor(a, V) is not None and dev[predecessor(a, V).stage] != dst]
        assert sorted(posted) == sorted(remote)


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
@pytest.mark.parametrize("devices", [1, 2, 3, 4])
def test_receives_are_posted_in_each_senders_send_order(name, devices):
    M, nb = 2 * devices, 4 * devices
    budget = canonical_1f1b_budget(devices, M, UNIT, nb)
    for params in family_grid(name, devices, M, max_stages=nb):
        try:
            sched = build(name, devices, M, UNIT, nb, budget, **params)
        except ScheduleError:  # a budget-admitted wave that never fits (two stages' geometry on 1 device)
            assert params.get("admission") == "budget" or name == "wavek"
            continue
        _pairs_in_sender_order(sched)


def test_multi_rank_nccl_is_refused_with_a_clear_error():
    with pytest.raises(ValueError, match="nccl"):
        PipelineConfig(backend="nccl", process_counts=[2])
    PipelineConfig(backend="nccl", process_counts=[1])
    with pytest.raises(ConfigError, match="backend='nccl' with 2 ranks"):
        check_backend("nccl", 2)
    check_backend("gloo", 4)


def test_budget_admission_tries_the_last_candidate(monkeypatch):
    """Only the last entry candidate of micro-batch 1 (the first micro-batch's final release, index 12
    of 13: not a power of two) fits: the gallop 1, 2, 4, 8 must still try it."""
    D, nb = 3, 6
    pl = vfold(D)
    first = simulate(build("wavek", D, 1, UNIT, nb, None, K=1), UNIT, nb)
    n_cand = 1 + len(set(first.release_times))
    assert n_cand == 13
    T1 = first.makespan_s

    def only_last(result, budget):  # entering at T1 (the last candidate) gives makespan 2 T1 exactly
        return result.num_microbatches < 2 or result.makespan_s >= 2 * T1 - 1e-9

    monkeypatch.setattr(simmod, "fits_budget", only_last)
    sched = simmod.budget_admission("wavek", pl, 2, UNIT, nb, janus_sweeps, 1.0)
    assert simulate(sched, UNIT, nb).makespan_s == pytest.approx(2 * T1)

