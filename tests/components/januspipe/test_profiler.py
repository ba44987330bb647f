"""The profile stage's phase-cost estimators and the samples it keeps."""
from __future__ import annotations

import statistics

import pytest

from components.base import InputError
from components.januspipe.profiler import ESTIMATORS, measure_costs, phase_costs, time_fields, with_estimator

from tests.components.januspipe.test_four_phase import CFG, FORCES, emt_clusters


def _times():
    # (stage, phase, micro-batch) -> one sample per repetition; micro-batch 1 is twice micro-batch 0's size
    return {(0, 1, 0): [1.0, 5.0, 1.2], (0, 1, 1): [2.0, 2.4, 9.0],
            (1, 1, 0): [3.0, 3.0, 3.0], (1, 1, 1): [6.0, 7.0, 6.5]}


def test_the_median_pools_micro_batches_and_the_min_takes_each_micro_batch_fastest_repetition():
    med = phase_costs(_times(), "median")
    assert med == {(0, 1): statistics.median([1.0, 5.0, 1.2, 2.0, 2.4, 9.0]), (1, 1): 4.5}
    fast = phase_costs(_times(), "min")
    # not min over pooled samples (1.0, the smaller micro-batch): the mean of the per-micro-batch minima
    assert fast == {(0, 1): pytest.approx(1.5), (1, 1): pytest.approx(4.5)}


def test_an_unknown_estimator_is_named():
    with pytest.raises(InputError, match=r"estimator='mean'.*\['median', 'min'\]"):
        phase_costs(_times(), "mean")
    assert ESTIMATORS == ("median", "min")


def test_time_fields_split_block_and_stage_costs():
    costs = {(s, p): v for p in (1, 2, 3, 4) for s, v in enumerate((5.0 + p, 3.0 + p, 7.0 + p, 4.0 + p))}
    f = time_fields(costs)
    assert f["block_s"] == [2.0] * 4                      # (3-block - 1-block) / 2
    assert f["stage_overhead_s"] == [1.0 + p for p in (1, 2, 3, 4)]
    assert f["first_extra_s"] == [2.0] * 4 and f["last_extra_s"] == [1.0] * 4


def test_measure_costs_keeps_every_sample_and_re_derives_its_costs_from_them():
    structures = emt_clusters(2, seed=1)
    measured = measure_costs(CFG, structures, FORCES, reps=3, seed=0)
    samples = measured["samples_s"]
    assert sorted(samples) == sorted(f"stage{s}_P{p}" for s in range(4) for p in (1, 2, 3, 4))
    assert all(len(per_mb) == 2 and all(len(v) == 3 and min(v) > 0 for v in per_mb) for per_mb in samples.values())
    for key, per_mb in samples.items():   # each recorded cost is the pooled median of its samples
        assert measured["raw"][f"{key}_s"] == statistics.median([x for v in per_mb for x in v])
    # the samples give back the stage's own cost model; another estimator changes only the time fields
    assert with_estimator(measured, "median")["cost_model"] == measured["cost_model"]
    fast = with_estimator(measured, "min")["cost_model"]
    assert {k: v for k, v in fast.items() if not k.endswith("_s")} == \
        {k: v for k, v in measured["cost_model"].items() if not k.endswith("_s")}
    by_min = measure_costs(CFG, structures, FORCES, reps=1, seed=0, estimator="min")
    for key, per_mb in by_min["samples_s"].items():   # one repetition: each micro-batch's only sample
        assert by_min["raw"][f"{key}_s"] == pytest.approx(statistics.mean(v[0] for v in per_mb))
