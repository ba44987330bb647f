"""The evaluation never averages over fewer seeds or models without saying so, reports the wall-clock
speed-up per seed, and scores the family cost models on multi-member families separately (synthetic runs)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from components.familyseer.analysis import Record, per_seed_speedups, ranking_quality
from components.familyseer.config import FamilySeerConfig
from components.familyseer.evaluation import _headline, final_latencies
from components.familyseer.scheduler import FAILED_MS


def _run(tasks_latencies, dt=1.0):
    """A two-task run: trial i measures task ``t`` at latency ``ms`` (FAILED_MS = a failed trial)."""
    trials = [{"index": i + 1, "task": t, "kind": "main", "latency_ms": ms, "error": "" if ms < FAILED_MS else "run",
               "wall_s": dt * (i + 1)} for i, (t, ms) in enumerate(tasks_latencies)]
    return {"trials": trials, "weights": [1.0, 1.0], "tasks": ["a", "b"]}


def test_a_seed_that_never_measured_every_task_is_counted_not_silently_dropped():
    runs = [_run([(0, 2.0), (1, 3.0), (0, 1.0)]),
            _run([(0, 2.0), (1, FAILED_MS), (0, 1.0)]),     # task b never measured validly
            _run([(0, 4.0), (1, 4.0), (1, 2.0)])]
    fin = final_latencies(runs, budget=3)
    assert fin["per_seed_us"] == [pytest.approx(4000.0), None, pytest.approx(6000.0)]
    assert (fin["seeds"], fin["seeds_used"]) == (3, 2)
    assert fin["mean_us"] == pytest.approx(5000.0)
    # cut at the budget: at trial 2 the first run's latency is 5 ms
    assert final_latencies(runs[:1], budget=2)["per_seed_us"] == [pytest.approx(5000.0)]


def test_per_seed_speedups_pair_the_runs_of_one_seed():
    baseline = [_run([(0, 4.0), (1, 4.0), (0, 2.0), (1, 2.0)]), _run([(0, 4.0), (1, 4.0), (0, 3.0), (1, 3.0)])]
    method = [_run([(0, 2.0), (1, 2.0), (0, 2.0), (1, 2.0)], dt=10.0),   # a stalled run: 10 s per trial
              _run([(0, 4.0), (1, 4.0), (0, 3.0), (1, 3.0)])]
    first, second = per_seed_speedups(baseline, method, budget=4)
    assert first.speedup_trials == pytest.approx(2.0) and first.speedup_wall == pytest.approx(4.0 / 20.0)
    assert second.speedup_trials == pytest.approx(1.0) and second.speedup_wall == pytest.approx(1.0)
    with pytest.raises(ValueError, match="pair runs by seed"):
        per_seed_speedups(baseline, method[:1])


def _model(speedup, seeds_wall, cm, ratio=1.0):
    return {"speedup": {"familyseer": speedup} if speedup else {},
            "speedup_per_seed": {"familyseer": [None if w is None else {"trials": 1.0, "wall": w, "reached": True}
                                                for w in seeds_wall]},
            "final_latency_us": {"familyseer": 1.0, "gradient": ratio}, "final_latency_seeds_used": {},
            "final_ratio_baseline_over_method": ratio, "cost_model": cm, "latency": {}}


def _cm(fam, glob, pairs, multi):
    families = {"conv2d": {"members": ["x", "y"], "pairs": pairs - 1, "family_accuracy": fam, "global_accuracy": glob},
                "matmul": {"members": ["z"], "pairs": 1, "family_accuracy": 1.0, "global_accuracy": 0.0}}
    return {"family_accuracy": fam, "global_accuracy": glob, "pairs": pairs, "families": families,
            "multi_member": multi}


def test_headline_says_how_many_models_and_seeds_each_figure_covers():
    cfg = FamilySeerConfig()
    sp = {"speedup_trials": 2.0, "speedup_wall": 3.0, "reached": True, "baseline_trials": 4, "method_trials": 2}
    multi = {"families": 1, "pairs": 9, "family_accuracy": 0.5, "global_accuracy": 0.6}
    per_model = {
        "m1": _model(sp, [0.5, 1.0, 9.0], _cm(0.71, 0.70, 10, multi)),
        # the baseline's curve never covered every task: no speed-up, no ratio, no cost-model score
        "m2": _model(None, [None, None, 2.0], _cm(None, None, 0, {"families": 0, "pairs": 0,
                                                                   "family_accuracy": None, "global_accuracy": None}),
                     ratio=None),
    }
    m = _headline(cfg, per_model)
    s = m["search_speedup"]
    assert s["speedup_vs_gradient_trials_mean"] == 2.0 and (s["models"], s["models_used"]) == (2, 1)
    assert s["models_used_wall"] == 1 and s["models_used_at90"] == 0
    # the seed median of the wall speed-ups: 0.5, 1.0, 9.0 and 2.0 -> 1.5; the mean figure stays 3.0
    assert s["speedup_vs_gradient_wall_seed_median"] == pytest.approx(1.5) and s["seeds_used_wall"] == 4
    assert s["speedup_vs_gradient_wall_mean"] == 3.0
    assert s["per_model"]["m1"]["wall_per_seed"] == [0.5, 1.0, 9.0] and s["per_model"]["m1"]["wall_seed_median"] == 1.0
    assert (m["final_latency"]["models"], m["final_latency"]["models_used"]) == (2, 1)
    c = m["cost_model"]
    assert (c["models"], c["models_used"], c["models_used_multi_member"]) == (2, 1, 1)
    assert c["accuracy_gain_pp"] == pytest.approx(1.0) and c["pairs"] == 10
    assert c["accuracy_gain_pp_multi_member"] == pytest.approx(-10.0) and c["pairs_multi_member"] == 9
    assert c["families_multi_member"] == 1


def test_ranking_quality_scores_multi_member_families_on_their_own():
    """A family of two tasks whose shared model ranks backwards and a one-member family whose model ranks
    perfectly: the overall family score hides the first, the multi-member score shows it."""
    pytest.importorskip("tvm")
    family_of_task = {"a": "F2", "b": "F2", "c": "F1"}

    class Model:  # make_model(members, samples): 3 members = the global model (perfect), 2 = backwards
        def __init__(self, members):
            self.sign = -1.0 if members == 2 else 1.0

        def update(self, ctx, candidates, results):
            pass

        def predict(self, ctx, candidates):
            return [-self.sign * c.latency for c in candidates]  # higher score = faster

    records = [Record(t, seed, f"{t}{seed}{k}", float(k), None, SimpleNamespace(latency=float(k)))
               for t in "abc" for seed in (0, 1) for k in (1, 2, 3)]
    rq = ranking_quality(records, {t: None for t in "abc"}, family_of_task, lambda m, s: Model(m), min_test=2)
    assert rq["global_accuracy"] == 1.0 and rq["family_accuracy"] == pytest.approx(6 / 18)
    assert rq["pairs"] == 18
    assert rq["multi_member"] == {"families": 1, "pairs": 12, "global_accuracy": 1.0, "family_accuracy": 0.0}
