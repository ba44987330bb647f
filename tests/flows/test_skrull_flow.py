"""The skrull flow end to end on a tiny config under the Prefect test harness (real DeepSpeed ZeRO-2
run on 2 gloo processes included), and a bad parameter through the CLI."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tests.conftest import mlflow_client


def _sources(root):
    rng = np.random.default_rng(0)
    for i in range(30):
        n = int(rng.pareto(1.0) * 10) + 2                                  # long-tail documents
        body = "".join(f"def f{j}(x):\n    return x * {j} + {i}\n" for j in range(n))
        (root / f"pkg{i % 3}").mkdir(parents=True, exist_ok=True)
        (root / f"pkg{i % 3}" / f"m{i}.py").write_text(body)


def tiny(src) -> dict:
    return {
        "data": {"corpus": {"root": str(src), "max_files": 30, "min_bytes": 16, "vocab_size": 300, "bpe_train_mb": 0.05},
                 "samples_per_distribution": 1000},
        "model": {"hidden_size": 16, "intermediate_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1},
        "profiling": {"lengths": [8, 32, 64], "tokens_per_config": 64, "repeats": 1, "activation_budget_mb": 1.0,
                      "comm_sizes_kb": [1, 4, 16], "comm_repeats": 2},
        "paper_sim": {"models": ["qwen2.5-0.5b"], "datasets": ["wikipedia", "chatqa2", "corpus"], "num_batches": 1,
                      "setting": {"dp": 2, "cp": 4, "batch_size": 8}},
        "local_sim": {"datasets": ["wikipedia", "corpus"], "num_batches": 1, "length_scale": 8,
                      "setting": {"dp": 1, "cp": 2, "batch_size": 8}},
        "sensitivity": {"batch_sizes": [4], "bucket_k_tokens": [8], "num_batches": 1},
        "ilp": {"instances": 1, "sequences": 4, "dp": 1, "cp": 2, "time_limit_s": 20},
        "train": {"global_batch": 6, "steps": 1, "warmup_steps": 0, "length_scale": 4, "timeout_s": 300},
    }


def _numbers(d):
    for v in d.values():
        if isinstance(v, dict):
            yield from _numbers(v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            yield v


@pytest.mark.slow
def test_skrull_flow_end_to_end(prefect_harness, paperworks_root):
    from components.skrull.config import SkrullConfig
    from flows.skrull import STAGES, skrull

    src = paperworks_root / "src"
    _sources(src)
    skrull(config=SkrullConfig(**tiny(src)), stages=list(STAGES))
    root = paperworks_root

    m = json.loads((root / "metrics" / "skrull.json").read_text())
    assert m["paper"] == "skrull" and m["profile"] == "quick"
    assert all(math.isfinite(v) for v in _numbers(m))
    assert m["real"]["loss_rel_diff_max"] < 1e-4                        # same batches, same loss
    assert m["real"]["max_rank_tokens"] <= m["real"]["bucket_size"]
    # measured inside the real step (saved-activation bytes per micro-batch), not the plan restated
    c = m["constraints"]
    # the tiny run stays within the 1 MiB budget that C was derived from: no micro-batch over it
    assert c["activation_budget_violations_skrull"] == 0
    assert 0 < c["activation_bytes_max_skrull"] <= c["activation_budget_bytes"]
    assert c["activation_budget_bytes"] == pytest.approx(1.0 * 2**20)
    assert m["real"]["activation_bytes_max_deepspeed"] > 0
    assert "budget_violations" not in m["real"] and "budget_violations" not in c
    assert m["real"]["speedup_vs_deepspeed"] > 0 and m["speedup_paper"]["avg_vs_deepspeed"] > 0
    assert m["ilp"]["solved"] == 1 and m["ilp"]["max_gap"] is not None and m["ilp"]["max_gap"] >= -1e-9
    assert m["ilp_local"]["solved"] == 1 and m["ilp_local"]["max_gap"] >= -1e-9      # the profiled CPU model
    fit = json.loads((root / "results/skrull/profile/fit.json").read_text())
    for kind in ("all_gather", "reduce_scatter"):
        comm = fit["comm"][kind]
        assert 0 <= comm["base_s"] <= comm["latency_s"]
        assert [p["bytes"] for p in comm["points"]] == [1024.0, 4096.0, 16384.0]
        assert comm["max_abs_rel_error"] == max(abs(p["rel_error"]) for p in comm["points"])
    # the headline figure is the worse of the two fits' worst point. Its size is a timing of gloo on a
    # shared machine (0.08-5.5 in standalone runs; one preempted rank in both passes gives 15-40), so it is
    # not bounded here: benchmarks/skrull/profile_stability.py measures it
    err = m["profile_fit"]["comm_fit_max_abs_rel_error"]
    assert err == max(fit["comm"][k]["max_abs_rel_error"] for k in ("all_gather", "reduce_scatter"))
    assert math.isfinite(err) and err >= 0
    assert set(m["runtime"]) >= {"total_wall_s", "data_wall_s", "train_cpu_s", "evaluate_wall_s"}
    for path in ("data/skrull/corpus/tokens.npy", "data/skrull/lengths/chatqa2.npy", "data/skrull/table1.json",
                 "results/skrull/profile/cost_model.json", "results/skrull/simulate/paper.json",
                 "results/skrull/simulate/ilp_local.json", "plots/skrull/ilp_gap_local.png",
                 "results/skrull/train/summary.json", "plots/skrull/speedup_paper_scale.png",
                 "plots/skrull/real_run.png", "plots/skrull/speedup_paper_scale.csv"):
        assert (root / path).is_file(), path

    client = mlflow_client(root)
    exp = client.get_experiment_by_name("skrull")
    assert "Skrull" in exp.tags["mlflow.note.content"]
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {r.data.tags["mlflow.runName"] for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert {"deepspeed", "skrull"} <= children
    parent = parents[0]
    assert parent.data.params["train.cp"] == "2"
    assert "real.speedup_vs_deepspeed" in parent.data.metrics
    tables = {a.path for a in client.list_artifacts(parent.info.run_id, "tables")}
    assert "tables/speedup_paper_scale.md" in tables
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert "plots/speedup_paper_scale.png" in plots


def test_inconsistent_parallel_degrees_exit_2_and_write_nothing(paperworks_root, capsys):
    from flows.__main__ import main

    assert main(["skrull", "train", "--set", "train.cp=4"]) == 2
    err = capsys.readouterr().err
    assert "profiling.cp=2 differs from train.cp=4" in err
    assert main(["skrull", "simulate", "--set", "paper_sim.setting.cp=0"]) == 2
    assert "skrull.paper_sim.setting.cp" in capsys.readouterr().err
    assert main(["skrull", "simulate", "--set", "sensitivity.batch_sizes=[8, 0]"]) == 2
    assert "skrull.sensitivity.batch_sizes.1" in capsys.readouterr().err
    assert main(["skrull", "simulate", "--set", "paper_sim.models=[qwen2.5-0.5b]"]) == 2   # params.yaml's 7B override
    assert "override key 'qwen2.5-7b/chatqa2'" in capsys.readouterr().err
    assert not (paperworks_root / "results").exists() and not (paperworks_root / "metrics").exists()
