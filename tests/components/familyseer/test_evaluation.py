"""The evaluation never averages over fewer seeds or models without saying so, reports the wall-clock
speed-up per seed, and scores the family cost models on multi-member families separately (synthetic runs)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from components.base import InputError
from components.familyseer.analysis import Record, per_seed_speedups, ranking_quality
from components.familyseer.config import FamilySeerConfig
from components.familyseer.evaluation import _headline, final_latencies, pooled_ranking_gain
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
    # every resample of the held-out candidates: the family model all wrong, the global one all right
    assert rq["multi_member"] == {"families": 1, "pairs": 12, "global_accuracy": 1.0, "family_accuracy": 0.0,
                                  "gain_pp_ci90": (-100.0, -100.0)}
    glob, fam = rq["_bootstrap"]["multi_member"]
    assert len(glob) == len(fam) == 1000 and set(glob) == {1.0} and set(fam) == {0.0}
    assert rq["families"]["F1"]["gain_pp_ci90"] == (0.0, 0.0)   # both models rank c perfectly
    # one multi-member family: the pooled interval is that family's own (the same draws, not new ones)
    assert rq["families"]["F2"]["gain_pp_ci90"] == rq["multi_member"]["gain_pp_ci90"]


def test_a_task_one_model_cannot_rank_is_scored_by_neither():
    """Family F1 (task c) has records of seed 0 only: in the fold that holds seed 0 out, its family model
    has nothing to train on. The global model (which ranks c backwards) must not be scored on c there
    either, or the global accuracy would be over 15 pairs and the family one over 12."""
    pytest.importorskip("tvm")
    family_of_task = {"a": "F2", "b": "F2", "c": "F1"}

    class Model:
        def __init__(self, members, samples):
            self.members = members
            self.booster = object() if samples else None   # XGBModel: no booster before its first training

        def update(self, ctx, candidates, results):
            pass

        def predict(self, ctx, candidates):
            sign = -1.0 if (self.members == 3 and ctx == "c") else 1.0
            return [-sign * c.latency for c in candidates]

    records = [Record(t, seed, f"{t}{seed}{k}", float(k), None, SimpleNamespace(latency=float(k)))
               for t in "abc" for seed in (0, 1) for k in (1, 2, 3) if t != "c" or seed == 0]
    rq = ranking_quality(records, {t: t for t in "abc"}, family_of_task, lambda m, s: Model(m, s), min_test=2)
    assert "F1" not in rq["families"] and "c" not in rq["per_task"]
    assert rq["families"]["F2"] == {"members": ["a", "b"], "pairs": 12, "global_accuracy": 1.0, "family_accuracy": 1.0,
                                    "gain_pp_ci90": (0.0, 0.0)}
    assert (rq["global_accuracy"], rq["family_accuracy"], rq["pairs"]) == (1.0, 1.0, 12)


def test_headline_exports_the_trial_speed_up_of_each_seed_and_whether_it_reached():
    cfg = FamilySeerConfig()
    sp = {"speedup_trials": 2.0, "speedup_wall": 3.0, "reached": True, "baseline_trials": 4, "method_trials": 2}
    cm = _cm(0.71, 0.70, 10, {"families": 0, "pairs": 0, "family_accuracy": None, "global_accuracy": None})
    m1 = _model(sp, [], cm)
    m1["speedup_per_seed"]["familyseer"] = [{"trials": 2.0, "wall": 1.5, "reached": True},
                                            {"trials": 0.8, "wall": 0.6, "reached": False},   # an upper bound
                                            None]                                             # no speed-up
    m2 = _model(sp, [], cm)
    m2["speedup_per_seed"]["familyseer"] = [{"trials": 4.0, "wall": 3.0, "reached": True}]
    s = _headline(cfg, {"m1": m1, "m2": m2})["search_speedup"]
    per = s["per_model"]["m1"]
    assert per["trials_per_seed"] == [2.0, 0.8, None] and per["reached_per_seed"] == [1, 0, None]
    assert per["wall_per_seed"] == [1.5, 0.6, None] and per["trials_seed_median"] == pytest.approx(1.4)
    assert s["per_model"]["m2"]["reached_per_seed"] == [1]
    assert s["speedup_vs_gradient_trials_seed_median"] == pytest.approx(2.0)   # of 2.0, 0.8 and 4.0
    assert (s["seeds_used_trials"], s["seeds_reached"]) == (3, 2)
    # the existing figures are unchanged
    assert s["speedup_vs_gradient_trials_mean"] == 2.0 and per["wall_seed_median"] == pytest.approx(1.05)


def test_each_model_gets_its_own_bootstrap_stream_and_the_first_keeps_seed_0():
    import numpy as np

    from components.familyseer.analysis import bootstrap_streams

    assert bootstrap_streams(0) == []
    streams = bootstrap_streams(3)
    draws = [np.random.default_rng(s).integers(1 << 30, size=8).tolist() for s in streams]
    assert draws[0] == np.random.default_rng(0).integers(1 << 30, size=8).tolist()   # one model: as before
    assert len({tuple(d) for d in draws}) == 3
    assert draws == [np.random.default_rng(s).integers(1 << 30, size=8).tolist() for s in bootstrap_streams(3)]


def test_the_pooled_bootstrap_averages_over_the_models_the_headline_mean_uses():
    import numpy as np

    from components.familyseer.evaluation import pooled_bootstrap

    per_model = {"m1": {"speedup": {"familyseer": {"speedup_trials": 2.0}}},
                 "m2": {"speedup": {}},                                        # no speed-up: not in the mean
                 "m3": {"speedup": {"familyseer": {"speedup_trials": 1.0}}}}
    boots = {"m1": np.array([2.0, 4.0]), "m2": np.array([np.nan, np.nan]), "m3": np.array([1.0, 2.0])}
    assert pooled_bootstrap(boots, per_model, "familyseer").tolist() == [1.5, 3.0]
    assert pooled_bootstrap(boots, {"m2": per_model["m2"]}, "familyseer").size == 0


# --------------------------------------------------------------------------------------------------
# evaluate_all on synthetic stage outputs (the cost-model ranking, which needs TVM records, stubbed)


@pytest.fixture
def outputs(tmp_path, fast_fingerprint, monkeypatch):
    """Two models x {familyseer, gradient} x seeds {0, 1}: tasks.json, runs with their current fingerprints
    and the compile stage's latencies. resnet_tiny's gradient runs never measure task b validly."""
    import json

    from components.familyseer import evaluation

    from .conftest import manifest, trials, write_run

    cfg = FamilySeerConfig(zoo={"models": ["mlp_tiny", "resnet_tiny"]},
                           tune={"policies": ["familyseer", "gradient"], "seeds": [0, 1]})
    zoo, runs = tmp_path / "zoo", tmp_path / "tuning"
    ledgers = {
        ("mlp_tiny", "gradient"): [[(0, 4.0), (1, 4.0), (0, 2.0), (1, 2.0)], [(0, 4.0), (1, 4.0), (0, 3.0), (1, 3.0)]],
        ("mlp_tiny", "familyseer"): [[(0, 2.0), (1, 2.0), (0, 2.0), (1, 2.0)], [(0, 4.0), (1, 4.0), (0, 4.0), (1, 4.0)]],
        ("resnet_tiny", "gradient"): [[(0, 4.0), (1, FAILED_MS), (0, 2.0), (1, FAILED_MS)]] * 2,
        ("resnet_tiny", "familyseer"): [[(0, 2.0), (1, 2.0), (0, 2.0), (1, 2.0)]] * 2,
    }
    latency = {}
    for name in cfg.zoo.models:
        (zoo / name).mkdir(parents=True)
        (zoo / name / "tasks.json").write_text(json.dumps(manifest()))
        latency[name] = {"pytorch_eager": {"latency_ms_p50": 2.0, "latency_ms_p99": 2.5},
                         "tvm_untuned": {"latency_ms_p50": 4.0, "latency_ms_p99": 4.5}}
        for p in cfg.tune.policies:
            latency[name][f"tvm_{p}"] = {}
            for s, ledger in zip(cfg.tune.seeds, ledgers[name, p]):
                fp = fast_fingerprint(manifest(), p, s, cfg.tune)
                write_run(runs / name / p / f"seed{s}", fp, trials(ledger), p, s)
                latency[name][f"tvm_{p}"][str(s)] = {"latency_ms_p50": 1.0, "max_abs_err": 0.0, "run_fingerprint": fp}
    rq = {"folds": 2, "records": 0, "families": {}, "global_accuracy": None, "family_accuracy": None, "pairs": 0,
          "multi_member": {"families": 0, "pairs": 0, "global_accuracy": None, "family_accuracy": None},
          "per_task": {}}
    monkeypatch.setattr(evaluation, "_ranking_for_model",
                        lambda *args, **kw: {**rq, "_bootstrap": {"multi_member": (np.array([]), np.array([]))}})
    plots = tmp_path / "plots"
    plots.mkdir()

    def evaluate(lat=None, config=None, progress=lambda msg: None):
        return evaluation.evaluate_all(config or cfg, zoo, lambda m, p, s: runs / m / p / f"seed{s}",
                                       latency if lat is None else lat, plots, progress=progress,
                                       latency_file="compile/latency.json")

    def set_ledger(name, policy, seed, ledger):
        """Replace a run's trials (its fingerprint does not cover them)."""
        (runs / name / policy / f"seed{seed}" / "ledger.json").write_text(json.dumps({"trials": trials(ledger)}))

    return SimpleNamespace(cfg=cfg, runs=runs, latency=latency, evaluate=evaluate, set_ledger=set_ledger)


def test_evaluate_reports_per_seed_speed_ups_and_pools_the_bootstrap_over_the_models_used(outputs, monkeypatch):
    from components.familyseer import evaluation

    seeds = []
    bootstrap = evaluation.bootstrap_speedups
    monkeypatch.setattr(evaluation, "bootstrap_speedups",
                        lambda *a, seed=0, **k: seeds.append(seed) or bootstrap(*a, seed=seed, **k))
    report = outputs.evaluate()
    s = report["metrics"]["search_speedup"]
    # a stream per model, the first one numpy seed 0's
    assert len(seeds) == 2 and seeds[0].entropy == 0 and seeds[0].spawn_key == () and seeds[1].spawn_key == (0,)
    # resnet_tiny's baseline never covers task b: no speed-up, so it is left out of the mean and its interval
    assert (s["models"], s["models_used"]) == (2, 1)
    ci = report["per_model"]["mlp_tiny"]["speedup_ci90"]["familyseer"]
    assert ci is not None and s["speedup_vs_gradient_trials_mean_ci90"] == ci
    per = s["per_model"]["mlp_tiny"]
    # seed 0: familyseer reaches gradient's final 4 ms at trial 2 (gradient: 4); seed 1 never reaches
    # gradient's 6 ms, so its figure is the upper bound 4 / 4 (the last trial)
    assert per["trials_per_seed"] == [pytest.approx(2.0), pytest.approx(1.0)] and per["reached_per_seed"] == [1, 0]
    assert s["per_model"]["resnet_tiny"]["reached_per_seed"] == [None, None]
    rows = [r for r in report["tables"]["search_speedup_per_seed"] if r["model"] == "mlp_tiny"]
    assert [(r["seed"], r["reached"]) for r in rows] == [(0, True), (1, False)] and "upper bound" in rows[1]["note"]
    assert report["per_model"]["mlp_tiny"]["seeds"] == [0, 1]


def test_evaluate_stops_at_a_run_of_another_configuration(outputs):
    import json

    run_json = outputs.runs / "resnet_tiny" / "familyseer" / "seed1" / "run.json"
    run = json.loads(run_json.read_text())
    stored, run["fingerprint"] = run["fingerprint"], "0123456789abcdef0123"
    run_json.write_text(json.dumps(run))
    with pytest.raises(InputError, match=rf"{run_json.parent}: stored fingerprint '0123456789abcdef0123' differs "
                                         rf"from '{stored}'.*re-run the tune stage"):
        outputs.evaluate()


def test_evaluate_stops_at_latencies_of_other_models_seeds_or_runs(outputs):
    import copy

    lat = copy.deepcopy(outputs.latency)
    del lat["resnet_tiny"]
    with pytest.raises(InputError, match=r"compile/latency.json: model 'resnet_tiny' is missing \(it has "
                                         r"\['mlp_tiny'\]\); expected an object for every model of zoo.models"):
        outputs.evaluate(lat)
    lat = copy.deepcopy(outputs.latency)
    del lat["mlp_tiny"]["tvm_gradient"]["1"]
    with pytest.raises(InputError, match=r"compile/latency.json: model 'mlp_tiny', 'tvm_gradient' has seeds \['0'\]; "
                                         r"expected the seeds of tune.seeds \['0', '1'\]"):
        outputs.evaluate(lat)
    lat = copy.deepcopy(outputs.latency)
    lat["mlp_tiny"]["tvm_familyseer"]["2"] = lat["mlp_tiny"]["tvm_familyseer"]["1"]
    with pytest.raises(InputError, match=r"'tvm_familyseer' has seeds \['0', '1', '2'\]"):
        outputs.evaluate(lat)
    lat = copy.deepcopy(outputs.latency)
    lat["mlp_tiny"]["tvm_familyseer"]["0"] = {"max_abs_err": 0.0}
    with pytest.raises(InputError, match=r"'tvm_familyseer' seed 0 .*expected an object with a numeric 'latency_ms_p50'"):
        outputs.evaluate(lat)
    lat = copy.deepcopy(outputs.latency)
    lat["mlp_tiny"]["tvm_gradient"]["0"]["run_fingerprint"] = "stale"
    with pytest.raises(InputError, match=r"model 'mlp_tiny', 'tvm_gradient' seed 0 was compiled from the run of "
                                         r"fingerprint 'stale'; expected '[0-9a-f]{20}'.*re-run the compile stage"):
        outputs.evaluate(lat)


# --------------------------------------------------------------------------------------------------
# the final-latency ratio, all-failed models, intervals, the compile stage's reference builds, claim keys


def test_the_final_latency_ratio_is_over_the_seeds_both_policies_have():
    """Seed 1 of the baseline and seed 0 of the method never measured every task: the ratio is over seed 2
    alone (8 / 4), not the baseline's seeds 0, 2 over the method's seeds 1, 2 (5 / 3)."""
    from components.familyseer.evaluation import final_ratio

    baseline = {"per_seed_us": [2.0, None, 8.0], "seeds_used": 2}
    method = {"per_seed_us": [None, 2.0, 4.0], "seeds_used": 2}
    assert final_ratio(baseline, method) == {"ratio": pytest.approx(2.0), "seeds_used": 1, "method_missing": False}
    # no seed in common: no ratio, but the method has final latencies
    disjoint = final_ratio({"per_seed_us": [1.0, None], "seeds_used": 1}, {"per_seed_us": [None, 1.0], "seeds_used": 1})
    assert disjoint == {"ratio": None, "seeds_used": 0, "method_missing": False}
    assert final_ratio(baseline, {"per_seed_us": [None] * 3, "seeds_used": 0})["method_missing"]


def test_a_model_where_the_method_has_no_final_latency_does_not_meet_the_final_latency_claim():
    cfg = FamilySeerConfig()
    cm = _cm(0.71, 0.70, 10, {"families": 0, "pairs": 0, "family_accuracy": None, "global_accuracy": None})
    fine, missing = _model(None, [], cm, ratio=1.5), _model(None, [], cm, ratio=None)
    missing["final_ratio_method_missing"] = True
    fl = _headline(cfg, {"m1": fine, "m2": missing})["final_latency"]
    # not the mean over m1 alone (1.5, "met"): m2's method never measured every task
    assert fl["ratio_baseline_over_method_mean"] is None and (fl["models"], fl["models_used"]) == (2, 1)
    assert _headline(cfg, {"m1": fine})["final_latency"]["ratio_baseline_over_method_mean"] == 1.5


def test_evaluate_reports_the_method_without_a_final_latency_and_the_ratios_seeds(outputs):
    # mlp_tiny: familyseer never measures task b validly on any seed (gradient does)
    for seed in (0, 1):
        outputs.set_ledger("mlp_tiny", "familyseer", seed, [(0, 2.0), (1, FAILED_MS), (0, 2.0), (1, FAILED_MS)])
    notes = []
    report = outputs.evaluate(progress=notes.append)
    per = report["per_model"]["mlp_tiny"]
    assert per["final_ratio_method_missing"] is True and per["final_ratio_seeds_used"] == 0
    assert per["final_ratio_baseline_over_method"] is None
    assert report["metrics"]["final_latency"]["ratio_baseline_over_method_mean"] is None
    assert any("mlp_tiny: no run of familyseer measured every task validly" in n for n in notes)
    # resnet_tiny: the baseline has no final latency on either seed; the method has both
    res = report["per_model"]["resnet_tiny"]
    assert (res["final_ratio_method_missing"], res["final_ratio_seeds_used"]) == (False, 0)


def test_the_ratio_uses_the_seeds_both_policies_have_in_evaluate(outputs):
    # mlp_tiny, seed 0: familyseer misses task b; seed 1: both at 6 ms (gradient) / 8 ms (familyseer)
    outputs.set_ledger("mlp_tiny", "familyseer", 0, [(0, 2.0), (1, FAILED_MS), (0, 2.0), (1, FAILED_MS)])
    per = outputs.evaluate()["per_model"]["mlp_tiny"]
    assert per["final_latency_per_seed_us"]["gradient"] == [pytest.approx(4000.0), pytest.approx(6000.0)]
    assert per["final_latency_per_seed_us"]["familyseer"] == [None, pytest.approx(8000.0)]
    # seed 1 alone: 6 / 8, not the gradient mean of both seeds (5 ms) over familyseer's seed 1
    assert per["final_ratio_baseline_over_method"] == pytest.approx(0.75) and per["final_ratio_seeds_used"] == 1


def test_a_model_whose_every_task_failed_in_every_run_stops_the_evaluation(outputs):
    """Every task set aside would weigh 0: a weighted latency of 0 us and a 1.0 speed-up 'reached'."""
    from components.familyseer.analysis import set_aside

    failed = [(0, FAILED_MS), (1, FAILED_MS), (0, FAILED_MS), (1, FAILED_MS)]
    for p in ("familyseer", "gradient"):
        for seed in (0, 1):
            outputs.set_ledger("resnet_tiny", p, seed, failed)
    with pytest.raises(InputError, match=r"tuning/resnet_tiny: model 'resnet_tiny': no trial of any policy and "
                                         r"seed measured any of its tasks \['a', 'b'\] validly \(0 build and 16 run "
                                         r"failures in 16 trials\).*tune.run_timeout_s=10.0"):
        outputs.evaluate()
    with pytest.raises(ValueError, match="leaves no task of non-zero weight"):
        set_aside({"tasks": ["a", "b"], "weights": [1.0, 1.0], "trials": []}, ["a", "b"])


def test_a_model_without_a_speed_up_has_no_interval_either(outputs):
    """resnet_tiny: gradient's seed 0 covers every task, seed 1 never measures task b, so the seed-mean
    curve never covers every task (no speed-up) while resamples drawing seed 0 twice would."""
    outputs.set_ledger("resnet_tiny", "gradient", 0, [(0, 4.0), (1, 4.0), (0, 2.0), (1, 3.0)])
    report = outputs.evaluate()
    per = report["per_model"]["resnet_tiny"]
    assert "familyseer" not in per["speedup"] and per["speedup_ci90"]["familyseer"] is None
    assert report["metrics"]["search_speedup"]["per_model"]["resnet_tiny"]["trials_ci90"] is None
    assert report["per_model"]["mlp_tiny"]["speedup_ci90"]["familyseer"] is not None


@pytest.mark.parametrize("build, entry, needle", [
    ("pytorch_eager", {"latency_ms_p50": 2.0}, r"'pytorch_eager' is \"\{'latency_ms_p50': 2.0\}\""),   # no p99
    ("tvm_untuned", None, "'tvm_untuned' is missing"),
    ("tvm_untuned", {"latency_ms_p50": "fast", "latency_ms_p99": 4.5}, "'tvm_untuned' is "),
])
def test_evaluate_stops_at_latencies_without_the_reference_builds(outputs, build, entry, needle):
    import copy

    lat = copy.deepcopy(outputs.latency)
    if entry is None:
        del lat["mlp_tiny"][build]
    else:
        lat["mlp_tiny"][build] = entry
    with pytest.raises(InputError, match=rf"compile/latency.json: model 'mlp_tiny', {needle}.*expected an object "
                                         rf"with a numeric 'latency_ms_p50' and 'latency_ms_p99'"):
        outputs.evaluate(lat)


def _claim_values(metrics):
    """The value each claim of components/familyseer/claims.yaml reads (None: absent)."""
    from pathlib import Path

    import yaml

    claims = yaml.safe_load((Path(__file__).resolve().parents[3] / "components/familyseer/claims.yaml").read_text())
    out = {}
    for c in claims["claims"]:
        cur = metrics
        for part in c["metric"].split("."):
            cur = cur.get(part) if isinstance(cur, dict) else None
        out[c["id"]] = cur
    return out


@pytest.mark.parametrize("method, baseline, speedup, ratio", [
    ("familyseer", "gradient", "speedup_vs_gradient", "ratio_baseline_over_method_mean"),
    ("round_robin", "gradient", "speedup_round_robin_vs_gradient", "ratio_gradient_over_round_robin_mean"),
    ("familyseer", "round_robin", "speedup_familyseer_vs_round_robin", "ratio_round_robin_over_familyseer_mean"),
])
def test_only_familyseer_against_gradient_fills_the_claims_metrics(method, baseline, speedup, ratio):
    """claims.yaml judges FamilySeer against the gradient scheduler: another evaluate.method must not put its
    figures under "FamilySeer reaches...", and another baseline must not be read as gradient."""
    cfg = FamilySeerConfig(evaluate={"method": method, "baseline": baseline})
    sp = {"speedup_trials": 2.0, "speedup_wall": 3.0, "reached": True, "baseline_trials": 4, "method_trials": 2}
    cm = _cm(0.71, 0.70, 10, {"families": 1, "pairs": 9, "family_accuracy": 0.5, "global_accuracy": 0.6})
    model = _model(None, [1.0], cm, ratio=1.5)
    model["speedup"] = {method: sp}
    model["speedup_per_seed"] = {method: [{"trials": 2.0, "wall": 3.0, "reached": True}]}
    m = _headline(cfg, {"m1": model}, {"m1": (np.full(5, 0.6), np.full(5, 0.5))})
    assert m["search_speedup"][f"{speedup}_trials_mean"] == 2.0 and m["search_speedup"][f"{speedup}_wall_mean"] == 3.0
    assert m["final_latency"][ratio] == 1.5
    claimed = _claim_values(m)
    if (method, baseline) == ("familyseer", "gradient"):
        assert claimed["search_speedup_trials"] == 2.0 and claimed["search_speedup_wall"] == 3.0
        assert claimed["final_latency"] == 1.5
    else:
        assert claimed["search_speedup_trials"] is claimed["search_speedup_wall"] is claimed["final_latency"] is None
        assert not [k for k in m["search_speedup"] if k.startswith("speedup_vs_")]
    assert claimed["family_cost_model_ranking"] == pytest.approx(-10.0)   # not a policy comparison


def test_evaluate_names_both_policies_in_the_interval_key_outside_the_claimed_pair(outputs):
    cfg = outputs.cfg.model_copy(update={"evaluate": outputs.cfg.evaluate.model_copy(
        update={"method": "gradient", "baseline": "familyseer"})})
    notes = []
    s = outputs.evaluate(config=cfg, progress=notes.append)["metrics"]["search_speedup"]
    assert "speedup_gradient_vs_familyseer_trials_mean_ci90" in s
    assert not [k for k in s if k.startswith("speedup_vs_")]
    assert any("the report leaves those claims unjudged" in n for n in notes)


def test_the_pooled_ranking_gain_resamples_each_model_and_skips_models_without_a_multi_member_score():
    scored = {"cost_model": {"multi_member": {"global_accuracy": 0.5, "family_accuracy": 0.6}}}
    unscored = {"cost_model": {"multi_member": {"global_accuracy": None, "family_accuracy": None}}}
    boots = {"m1": (np.array([0.5, 0.6]), np.array([0.6, 0.6])), "m2": (np.array([0.4, 0.4]), np.array([0.4, 0.7])),
             "m3": (np.array([0.0, 0.0]), np.array([1.0, 1.0]))}
    gain = pooled_ranking_gain(boots, {"m1": scored, "m2": scored, "m3": unscored})
    # per resample: 100 x (mean family - mean global) over m1 and m2 only
    assert gain == pytest.approx([100 * (0.5 - 0.45), 100 * (0.65 - 0.5)])
    assert pooled_ranking_gain({}, {"m1": scored}).size == 0
