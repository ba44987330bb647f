"""Search-time speed-up and ranking-accuracy arithmetic (components/familyseer/analysis.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from components.familyseer.analysis import (bootstrap_speedups, first_reach, interval, mean_curve, pairwise_accuracy,
                                            run_curve, search_speedup, set_aside, untunable_tasks)
from components.familyseer.scheduler import FAILED_MS, task_gradient, trajectory


def _run(latencies_per_trial, tasks=None, weights=(1.0,), dt=1.0):
    """A run record: one task unless ``tasks`` given; trial i takes ``dt`` seconds."""
    tasks = tasks or [0] * len(latencies_per_trial)
    trials = [{"index": i + 1, "task": t, "kind": "main", "latency_ms": lat, "error": "", "wall_s": dt * (i + 1)}
              for i, (t, lat) in enumerate(zip(tasks, latencies_per_trial))]
    return {"trials": trials, "weights": list(weights)}


def test_trajectory_is_weighted_sum_of_best_and_inf_until_all_tasks_measured():
    run = _run([5.0, 3.0, 4.0, 1.0], tasks=[0, 0, 1, 0], weights=(2.0, 1.0))
    curve = trajectory(run["trials"], run["weights"])
    assert math.isinf(curve.latency_ms[0]) and math.isinf(curve.latency_ms[1])
    assert curve.latency_ms[2] == pytest.approx(2 * 3.0 + 4.0)
    assert curve.latency_ms[3] == pytest.approx(2 * 1.0 + 4.0)


def test_a_task_no_run_could_measure_is_set_aside_for_every_run():
    # task "b" fails in both runs; task "c" fails in the first run only (that run never gets a curve)
    first = _run([3.0, FAILED_MS, FAILED_MS], tasks=[0, 1, 2], weights=(1.0, 2.0, 1.0))
    second = _run([2.0, FAILED_MS, 1.0], tasks=[0, 1, 2], weights=(1.0, 2.0, 1.0))
    for run in (first, second):
        run["tasks"] = ["a", "b", "c"]
    assert untunable_tasks([first, second]) == ["b"]
    assert math.isinf(run_curve(second)[0][-1])  # as stored: "b" holds the curve at inf
    assert run_curve(set_aside(second, ["b"]))[0].tolist() == [math.inf, math.inf, 3.0]
    assert math.isinf(run_curve(set_aside(first, ["b"]))[0][-1])  # "c" still counts for the first run
    assert second["weights"] == [1.0, 2.0, 1.0]  # a copy, not an edit


def test_failed_trials_never_improve_the_curve():
    curve = trajectory(_run([2.0, FAILED_MS, 1.5])["trials"], [1.0])
    assert curve.latency_ms == [2.0, 2.0, 1.5]


def test_speedup_is_ratio_of_trials_to_reach_baseline_final():
    baseline = [_run([10, 8, 8, 6, 6, 6, 5, 5])]           # reaches its final 5 at trial 7
    method = [_run([10, 6, 5, 5, 4, 4, 4, 4], dt=2.0)]     # reaches 5 at trial 3, each trial 2 s
    sp = search_speedup(baseline, method)
    assert sp.baseline_trials == 7 and sp.method_trials == 3 and sp.reached
    assert sp.speedup_trials == pytest.approx(7 / 3)
    assert sp.speedup_wall == pytest.approx(7.0 / 6.0)


def test_bootstrap_resamples_seeds_and_brackets_the_seed_mean_figure():
    baseline = [_run([10, 8, 8, 6, 6, 6, 5, 5]), _run([10, 9, 7, 7, 7, 7, 7, 6])]
    method = [_run([10, 6, 5, 5, 4, 4, 4, 4]), _run([10, 9, 9, 9, 9, 9, 9, 9])]
    point = search_speedup(baseline, method).speedup_trials
    boot = bootstrap_speedups(baseline, method, resamples=400, seed=1)
    assert boot.shape == (400,) and np.isfinite(boot).all()
    assert np.array_equal(boot, bootstrap_speedups(baseline, method, resamples=400, seed=1))  # seeded
    # the method's second seed never gets below 9: resamples with it twice fall short, with its first twice win
    assert boot.min() < 1 < boot.max()
    lo, hi = interval(boot)
    assert lo <= point <= hi
    # identical seeds in both: every resample gives the same figure
    same = bootstrap_speedups(baseline[:1], method[:1], resamples=50)
    assert np.allclose(same, search_speedup(baseline[:1], method[:1]).speedup_trials)
    assert interval(np.array([np.nan])) is None


def test_speedup_when_method_never_reaches_is_an_upper_bound_below_one():
    sp = search_speedup([_run([10, 8, 5, 5])], [_run([10, 9, 9, 9])])
    assert not sp.reached and sp.method_trials is None
    assert sp.speedup_trials == pytest.approx(3 / 4)


def test_speedup_at_90_percent_uses_partial_improvement_threshold():
    sp = search_speedup([_run([10, 9, 1.5, 1])], [_run([10, 1.8, 1.5, 1.5])], level=0.9)
    assert sp.threshold_ms == pytest.approx(10 - 0.9 * 9)
    assert sp.baseline_trials == 3 and sp.method_trials == 2


def test_mean_curve_averages_seeds_and_holds_last_value():
    lat, wall = mean_curve([_run([4, 2]), _run([6, 6, 2])])
    assert lat.tolist() == [5.0, 4.0, 2.0]
    assert wall.tolist() == [1.0, 2.0, 2.5]


def test_first_reach():
    assert first_reach(np.array([5.0, 3.0, 1.0]), 3.0) == 2
    assert first_reach(np.array([5.0, 4.0]), 3.0) is None


def test_pairwise_accuracy_counts_correct_orderings():
    lat = [1.0, 2.0, 3.0, 3.0]                     # lower latency should get the higher score
    assert pairwise_accuracy([4, 3, 2, 1], lat) == (5, 5)   # the tied pair (3.0, 3.0) is not counted
    assert pairwise_accuracy([1, 2, 3, 4], lat) == (0, 5)
    c, n = pairwise_accuracy([4, 2, 3, 1], lat)
    assert n == 5 and c == 4


def test_task_gradient_matches_metaschedule_formula():
    # gradient_based.cc: g = a*(best[n-1-w]-best)/w + (1-a)*best/n, times weight
    hist = [10.0, 8.0, 7.0, 6.0]
    g = task_gradient(hist, best=6.0, weight=2.0, alpha=0.2, window=3)
    assert g == pytest.approx((0.2 * (10.0 - 6.0) / 3 + 0.8 * 6.0 / 4) * 2.0)
    assert task_gradient(hist[:2], best=8.0, weight=1.0, alpha=0.2, window=3) == pytest.approx(0.8 * 8.0 / 2)
    assert task_gradient([], best=FAILED_MS, weight=1.0, alpha=0.2, window=3) == -1e9


def test_speedup_within_a_budget_cuts_every_curve_there():
    # cut at 3 trials: the baseline's final latency is 6 (not 4), which the method (10, 9, 9) never reaches
    sp = search_speedup([_run([10, 8, 6, 4])], [_run([10, 9, 9, 3], dt=2.0)], budget=3)
    assert sp.threshold_ms == 6.0 and sp.baseline_trials == 3
    assert not sp.reached and sp.method_trials is None
    assert sp.speedup_trials == 1.0                      # 3 / its last trial (3): an upper bound
    assert sp.method_wall_s is None                      # no wall time at a reach that never happened
    assert sp.baseline_wall_s == 3.0 and sp.speedup_wall == pytest.approx(3.0 / 6.0)


def test_first_reach_tolerates_rounding():
    assert first_reach(np.array([0.1 + 0.2]), 0.3) == 1  # 0.30000000000000004 reaches 0.3


def test_interval_is_the_central_percentile_range():
    lo, hi = interval(np.arange(101.0), 0.9)
    assert (lo, hi) == (pytest.approx(5.0), pytest.approx(95.0))
    assert interval(np.array([1.0, np.inf, 3.0]), 1.0) == (1.0, 3.0)  # non-finite samples dropped


def test_a_tied_score_never_orders_a_pair_correctly():
    assert pairwise_accuracy([1.0, 1.0], [2.0, 1.0]) == (0, 1)


def test_to_jsonable_turns_non_finite_floats_into_none():
    from components.familyseer.analysis import to_jsonable

    got = to_jsonable({"a": float("inf"), "b": np.float64("nan"), "c": [1.5], "d": (np.int64(3), np.float32(2.5))})
    assert got == {"a": None, "b": None, "c": [1.5], "d": [3, 2.5]}
    assert type(got["d"][0]) is int and type(got["d"][1]) is float


def test_load_records_keeps_only_runs_of_positive_time(monkeypatch):
    pytest.importorskip("tvm")
    from types import SimpleNamespace

    import tvm.s_tir.meta_schedule.utils as ms_utils

    from components.familyseer import latency
    from components.familyseer.analysis import load_records

    def rec(trace, secs):
        return SimpleNamespace(run_secs=secs, workload=SimpleNamespace(mod="wl"),
                               trace=SimpleNamespace(as_json=lambda: trace))

    db = [rec("zero", [0.0]), rec("fast", [1e-3]), rec("none", None), rec("failed", [1e9])]
    monkeypatch.setattr(latency, "load_database", lambda run_dir: SimpleNamespace(get_all_tuning_records=lambda: db))
    monkeypatch.setattr(ms_utils, "shash2hex", lambda mod: f"hash-{mod}")
    got = load_records([(0, "run")], {"hash-wl": "t"})
    assert [(r.task, r.key, r.latency_ms) for r in got] == [("t", "fast", pytest.approx(1.0))]


class _Ranker:
    """make_model(members, samples) stand-in: ranks candidates (numbers = latencies) perfectly."""

    def update(self, ctx, candidates, results):
        pass

    def predict(self, ctx, candidates):
        return [-c for c in candidates]


def _records(task, seed, keyed_latencies):
    from components.familyseer.analysis import Record

    return [Record(task, seed, key, float(ms), None, float(ms)) for key, ms in keyed_latencies]


def _quality(records, min_test):
    pytest.importorskip("tvm")
    from components.familyseer.analysis import ranking_quality

    return ranking_quality(records, {"a": None}, {"a": "F"}, lambda members, samples: _Ranker(), min_test=min_test)


def test_ranking_quality_of_a_single_seed_has_no_fold():
    rq = _quality(_records("a", 0, [("x1", 1), ("x2", 2), ("x3", 3)]), min_test=2)
    assert rq["folds"] == 0 and rq["pairs"] == 0
    assert rq["global_accuracy"] is None and rq["family_accuracy"] is None


def test_held_out_records_already_in_training_are_not_scored():
    # seed 1 measured x1..x3 again (same traces) and y1..y3: only what the other seed never saw is held out
    records = (_records("a", 0, [("x1", 1), ("x2", 2), ("x3", 3)])
               + _records("a", 1, [("x1", 1), ("x2", 2), ("x3", 3), ("y1", 11), ("y2", 12), ("y3", 13)]))
    rq = _quality(records, min_test=2)
    # fold 0: no held-out record is new; fold 1: y1..y3, 3 pairs
    assert rq["folds"] == 2 and rq["pairs"] == 3 and rq["family_accuracy"] == 1.0


def test_a_task_with_exactly_min_test_held_out_records_is_scored():
    records = _records("a", 0, [("x1", 1), ("x2", 2), ("x3", 3)]) + _records("a", 1, [("y1", 1), ("y2", 2), ("y3", 3)])
    assert _quality(records, min_test=3)["pairs"] == 6   # 3 pairs per fold
    assert _quality(records, min_test=4)["pairs"] == 0


def test_pair_matrices_count_what_pairwise_accuracy_counts():
    from components.familyseer.analysis import pair_matrices
    rng = np.random.default_rng(3)
    scores, lat = rng.normal(size=30), rng.integers(0, 10, size=30).astype(float)   # ties included
    correct, comparable = pair_matrices(scores, lat)
    assert (correct == correct.T).all() and (comparable == comparable.T).all()
    assert not correct.diagonal().any() and not comparable.diagonal().any()
    assert (int(correct.sum()) // 2, int(comparable.sum()) // 2) == pairwise_accuracy(scores, lat)


def test_ranking_bootstrap_is_paired_and_centred_on_the_point_estimate():
    from components.familyseer.analysis import pair_matrices, ranking_bootstrap
    rng = np.random.default_rng(0)
    groups, counts = [], np.zeros((2, 2))
    for _ in range(3):
        lat = rng.normal(size=40)
        good, bad = -lat + rng.normal(scale=0.3, size=40), -lat + rng.normal(scale=2.0, size=40)
        a, comp = pair_matrices(good, lat)
        b, _ = pair_matrices(bad, lat)
        groups.append((a, b, comp))
        counts += [[a.sum(), comp.sum()], [b.sum(), comp.sum()]]
    acc_a, acc_b = ranking_bootstrap(groups, 400, seed=5)
    point_a, point_b = counts[0, 0] / counts[0, 1], counts[1, 0] / counts[1, 1]
    assert abs(acc_a.mean() - point_a) < 0.02 and abs(acc_b.mean() - point_b) < 0.02
    assert (acc_a > acc_b).all()                        # a clear gap survives every resample
    lo, hi = interval(100 * (acc_b - acc_a))
    assert lo < 100 * (point_b - point_a) < hi < 0
    again = ranking_bootstrap(groups, 400, seed=5)
    assert (again[0] == acc_a).all() and (again[1] == acc_b).all()   # seeded
    # the same model on both sides: the paired difference is exactly 0 in every resample
    same = ranking_bootstrap([(a, a, comp) for a, _, comp in groups], 50, seed=1)
    assert (same[0] == same[1]).all()


def test_ranking_bootstrap_of_a_group_without_comparable_pairs_is_nan():
    from components.familyseer.analysis import pair_matrices, ranking_bootstrap
    a, comp = pair_matrices([1.0, 2.0, 3.0], [1.0, 1.0, 1.0])   # every latency tied
    acc_a, acc_b = ranking_bootstrap([(a, a, comp)], 10, seed=0)
    assert np.isnan(acc_a).all() and np.isnan(acc_b).all() and interval(acc_a - acc_b) is None
