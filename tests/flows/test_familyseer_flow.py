"""The familyseer flow end to end on a tiny config (mlp_tiny: one 'matmul' family of three tasks),
under the Prefect test harness: every stage, metrics, plots, the MLflow record, replay on re-run."""
from __future__ import annotations

import json

import pytest

from tests.conftest import mlflow_client

TINY = {
    "zoo": {"models": ["mlp_tiny"]},
    # the warm-up round only (2 trials x 3 tasks, so no room for foresee rounds): the tuning algorithm
    # is tested in tests/components
    "tune": {"policies": ["familyseer", "gradient"], "seeds": [0, 1], "trials_per_task": 2,
             "trials_per_round": 2, "foresee_trials": 0, "foresee_random": 0, "repeat": 2, "min_repeat_ms": 1,
             "search": {"population_size": 8, "init_min_unmeasured": 4, "genetic_num_iters": 1}},
    "evaluate": {"latency_repeat": 3, "latency_min_repeat_ms": 1, "ranking_min_records": 2},
}


@pytest.mark.slow
def test_familyseer_flow_end_to_end(prefect_harness, paperworks_root):
    from components.familyseer.config import FamilySeerConfig
    from flows.familyseer import STAGES, familyseer

    cfg = FamilySeerConfig(**TINY)
    familyseer(config=cfg, stages=list(STAGES))
    root = paperworks_root

    metrics = json.loads((root / "metrics" / "familyseer.json").read_text())
    assert metrics["paper"] == "familyseer" and metrics["profile"] == "quick"
    sp = metrics["search_speedup"]
    assert sp["models"] == 1 and sp["speedup_vs_gradient_trials_mean"] > 0
    assert 0 <= metrics["cost_model"]["family_accuracy"] <= 1
    assert 0 <= metrics["cost_model"]["global_accuracy"] <= 1
    lat = metrics["latency"]["mlp_tiny"]
    assert {"pytorch_eager", "tvm_untuned", "tvm_familyseer", "tvm_gradient"} <= set(lat)
    assert all(v["latency_ms_p50"] > 0 for v in lat.values())
    assert metrics["timing"]["pipeline_cpu_s"] > 0
    for path in ("data/familyseer/zoo/mlp_tiny/tasks.json", "results/familyseer/compile/latency.json",
                 "data/familyseer/tuning/mlp_tiny/familyseer/seed1/database_tuning_record.json",
                 "plots/familyseer/curve_trials_mlp_tiny.png", "plots/familyseer/curve_mlp_tiny.csv",
                 "plots/familyseer/search_speedup.png"):
        assert (root / path).is_file(), path
    latency = json.loads((root / "results/familyseer/compile/latency.json").read_text())["mlp_tiny"]
    tasks = [t["name"] for t in json.loads((root / "data/familyseer/zoo/mlp_tiny/tasks.json").read_text())["tasks"]]
    for p in ("tvm_familyseer", "tvm_gradient"):
        for seed, s in latency[p].items():
            assert s["max_abs_err"] < 1e-4
            assert set(tasks) <= set(s["tuned_functions"])   # every tuned task got its schedule
            run = json.loads((root / f"data/familyseer/tuning/mlp_tiny/{p[4:]}/seed{seed}/run.json").read_text())
            assert s["run_fingerprint"] == run["fingerprint"]   # what the evaluate stage checked
    per_seed = sp["per_model"]["mlp_tiny"]
    assert len(per_seed["trials_per_seed"]) == len(per_seed["reached_per_seed"]) == len(per_seed["wall_per_seed"]) == 2

    client = mlflow_client(root)
    exp = client.get_experiment_by_name("familyseer")
    assert "FamilySeer" in exp.tags["mlflow.note.content"]
    runs = client.search_runs([exp.experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    tuning_runs = [r for r in children if r.data.tags.get("mlflow.runName", "").startswith("mlp_tiny/")]
    assert len(tuning_runs) == 2 * 2                                   # every policy x seed
    curve = client.get_metric_history(tuning_runs[0].info.run_id, "best_weighted_latency_us")
    assert len(curve) >= 2 and all(b.value <= a.value for a, b in zip(curve, curve[1:]))  # best-so-far
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags][0]
    assert "search_speedup.speedup_vs_gradient_trials_mean" in parent.data.metrics
    tables = {a.path for a in client.list_artifacts(parent.info.run_id, "tables")}
    assert {"tables/search_speedup.md", "tables/cost_model_ranking.md", "tables/latency.md"} <= tables

    # a re-run replays the stored tuning records instead of re-measuring them
    familyseer(config=cfg, stages=["data", "tune"])
    timing = json.loads((root / "data/familyseer/tuning/timing.json").read_text())
    assert timing["replayed"] == timing["runs"] == 4


def test_the_logged_curve_stops_at_the_budget():
    """MLflow gets the best-so-far curve up to the budget: a last round's trials past it count for no
    policy (as in the evaluation), so they are not logged either."""
    from flows.familyseer import _curve_points

    trials = [{"index": i + 1, "task": i % 2, "latency_ms": ms, "wall_s": float(i + 1)}
              for i, ms in enumerate([4.0, 4.0, 3.0, 4.5, 2.0, 1.0])]   # trials 5 and 6 overshoot
    run = {"trials": trials, "weights": [1.0, 1.0], "budget": 4}
    assert _curve_points(run) == [(2, 8000.0, 2.0), (3, 7000.0, 3.0), (4, 7000.0, 4.0)]
    assert _curve_points({**run, "budget": 6})[-1] == (6, 3000.0, 6.0)


def test_a_malformed_timing_record_is_named(tmp_path):
    from components.base import InputError
    from flows.familyseer import _read_timing

    path = tmp_path / "timing.json"
    assert _read_timing("tune", path) == {}                                 # a stage that has not run
    path.write_text('{"wall_s": 1.5, "cpu_s": 2.0, "replayed": 0}')
    assert _read_timing("tune", path)["cpu_s"] == 2.0
    for text, needle in (('{"wall_s": 1.5, "cp', "not valid JSON"), ('{"wall_s": 1.5}', "'wall_s' and 'cpu_s'"),
                         ('[1, 2]', "expected the tune stage's timing record")):
        path.write_text(text)
        with pytest.raises(InputError, match=f"timing.json.*{needle}"):
            _read_timing("tune", path)


def test_bad_parameter_exits_2_before_any_work(capsys):
    from flows.__main__ import main

    assert main(["familyseer", "tune", "--set", "tune.foresee_trials=64"]) == 2
    assert "foresee_trials=64 must be <=" in capsys.readouterr().err


def test_compile_uses_only_runs_of_the_current_configuration(tmp_path, monkeypatch):
    """The compile stage checks every planned run's stored fingerprint against the one the tune stage
    gives it now, before it measures anything; a stale run stops it with the run's folder named."""
    from types import SimpleNamespace

    from components.base import InputError
    from components.familyseer import measure, tuning
    from components.familyseer.config import FamilySeerConfig
    from flows.familyseer import _current_runs, _run_dir, _run_seed
    from tests.components.familyseer.conftest import HOST, manifest, trials, write_run

    monkeypatch.setattr(measure, "kernel_threads", lambda threads: threads)   # no TVM probe process
    monkeypatch.setattr(tuning, "host_environment", lambda: dict(HOST))
    cfg = FamilySeerConfig(seed=3, **TINY)
    ctx = SimpleNamespace(config=cfg, paths=SimpleNamespace(data=tmp_path))
    (tmp_path / "zoo" / "mlp_tiny").mkdir(parents=True)
    (tmp_path / "zoo" / "mlp_tiny" / "tasks.json").write_text(json.dumps(manifest()))
    for policy in cfg.tune.policies:
        for seed in cfg.tune.seeds:
            fp = tuning.fingerprint(manifest(), policy, _run_seed(cfg, seed), cfg.tune)   # as the tune stage
            write_run(_run_dir(ctx, "mlp_tiny", policy, seed), fp, trials([(0, 2.0), (1, 3.0)]), policy,
                      _run_seed(cfg, seed))
    runs = _current_runs(ctx)
    assert sorted(runs) == [("mlp_tiny", p, s) for p in ("familyseer", "gradient") for s in (0, 1)]
    # the runs on disk were tuned with another seed base (profile seed): every one is stale
    ctx.config = FamilySeerConfig(seed=4, **TINY)
    with pytest.raises(InputError, match=rf"{_run_dir(ctx, 'mlp_tiny', 'familyseer', 0)}: stored fingerprint "
                                         r"'[0-9a-f]{20}' differs from '[0-9a-f]{20}'.*re-run the tune stage"):
        _current_runs(ctx)
    ctx.config = cfg
    run_json = _run_dir(ctx, "mlp_tiny", "gradient", 1) / "run.json"
    run_json.write_text(run_json.read_text().replace(runs["mlp_tiny", "gradient", 1]["fingerprint"], "0" * 20))
    with pytest.raises(InputError, match=rf"{run_json.parent}: stored fingerprint '{'0' * 20}'"):
        _current_runs(ctx)


def test_every_run_seed_the_config_accepts_seeds_numpy():
    """The tune stage seeds numpy with _run_seed (tuning._seed_everything): the config refuses a master seed
    and tune seeds whose largest run seed numpy would refuse, and accepts the largest one it takes."""
    import numpy as np

    from components.base import ConfigError, resolve_section
    from components.familyseer.config import FamilySeerConfig
    from flows.familyseer import _run_seed

    cfg = resolve_section(FamilySeerConfig, {}, {"seed": 4294967, "tune": {"seeds": [0, 295]}})
    assert _run_seed(cfg, 295) == 2 ** 32 - 1
    np.random.seed(_run_seed(cfg, 295))
    for override in ({"seed": 4294967, "tune": {"seeds": [0, 296]}}, {"seed": 4294968}):
        with pytest.raises(ConfigError, match=r"seed=429496[78] and tune.seeds=\[.*\] give the run seed"):
            resolve_section(FamilySeerConfig, {}, override)


def test_tune_and_compile_rotate_the_policy_order_per_seed():
    """Both stages measure seed-major with the policy order rotated per seed: every policy is measured
    once per seed and each policy goes first equally often, so load drift favours none."""
    import inspect

    import flows.familyseer as fs

    order = fs.measurement_order(["familyseer", "gradient", "round_robin"], [0, 1, 2, 3, 4, 5])
    assert order[:6] == [(0, "familyseer"), (0, "gradient"), (0, "round_robin"),
                         (1, "gradient"), (1, "round_robin"), (1, "familyseer")]
    for seed in range(6):
        assert sorted(p for s, p in order if s == seed) == ["familyseer", "gradient", "round_robin"]
    firsts = [order[3 * k][1] for k in range(6)]
    assert {p: firsts.count(p) for p in set(firsts)} == {"familyseer": 2, "gradient": 2, "round_robin": 2}
    assert fs.measurement_order(["a"], [7, 8]) == [(7, "a"), (8, "a")]
    # the stages iterate this order (not a config-order loop of their own)
    for stage in (fs.tune, fs.compile):
        src = inspect.getsource(stage.fn if hasattr(stage, "fn") else stage)
        assert "measurement_order(policies, cfg.tune.seeds)" in src
