"""Bad input to the benchmark scripts is refused before the heavy work (profiling, training, simulation):
exit status 2, one ``error:`` line naming the argument or file, the value and what is expected, no
traceback, and no (half-)written output. Nothing here profiles, trains or simulates for real."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.benchmarks.test_cli_checks import _refused
from tests.conftest import REPO, load_script


def _run(script: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / script), *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env=env)


# -- --out: a folder, or a path under a file, is refused while the arguments are parsed --------------
OUT_SCRIPTS = ["benchmarks/skrull/saved_bytes.py", "benchmarks/skrull/profile_stability.py",
               "benchmarks/januspipe/throughput.py", "benchmarks/vfda/global_variance_rounds.py",
               "benchmarks/har/warmup_cost.py", "benchmarks/har/flow_shift_ablation.py"]


@pytest.mark.parametrize("script", OUT_SCRIPTS)
def test_an_output_folder_is_refused_before_running(script, tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    _refused(_run(script, "--out", str(folder)), "--out", str(folder), "is a folder")
    assert list(folder.iterdir()) == [] and sorted(tmp_path.iterdir()) == [folder]   # no stray .tmp


@pytest.mark.parametrize("script", OUT_SCRIPTS)
def test_an_output_under_a_file_is_refused_before_running(script, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _refused(_run(script, "--out", str(blocker / "sub" / "r.json")), "--out", str(blocker), "is a file")
    assert sorted(tmp_path.iterdir()) == [blocker] and blocker.read_text() == "x"


# -- 1. januspipe/real_vs_sim.py: --processes checked with the config, before profiling ----------------
@pytest.mark.parametrize("args, needles", [
    (["--processes", "16"], ["--processes [16]", "pipeline.num_blocks=8", "expected num_blocks >= 32"]),
    (["--processes", "2", "8"], ["--processes [2, 8]", "pipeline.num_blocks=8", "expected num_blocks >= 16"]),
    (["--processes", "0"], ["--processes", "'0'", "positive integer"]),
    (["--processes", "2", "--set", "pipeline.num_blocks=3"], ["pipeline.num_blocks=3", "expected num_blocks >= 4"]),
])
def test_real_vs_sim_refuses_more_stages_than_blocks_before_profiling(args, needles, tmp_path):
    out = tmp_path / "r.json"
    proc = _run("benchmarks/januspipe/real_vs_sim.py", *args, "--out", str(out))
    _refused(proc, *needles)
    assert proc.stdout == "" and list(tmp_path.iterdir()) == []   # nothing profiled, nothing written


# -- 2. skrull/saved_bytes.py and profile_stability.py ---------------------------------------------------
@pytest.mark.parametrize("args, needles", [
    (["--length", "16", "--cp", "2"], ["--length 16", "--cp 2", "16·cp = 32", "S//8 >= 2·cp"]),  # was a traceback
    (["--length", "47", "--cp", "3"], ["--length 47", "16·cp = 48"]),
    (["--cp", "0"], ["--cp", "'0'", "positive integer"]),
    (["--length", "x"], ["--length", "'x'"]),
])
def test_saved_bytes_refuses_a_length_its_smallest_sharded_case_cannot_shard(args, needles, tmp_path):
    proc = _run("benchmarks/skrull/saved_bytes.py", *args, "--out", str(tmp_path / "s.json"))
    _refused(proc, *needles)
    assert proc.stdout == "" and list(tmp_path.iterdir()) == []


def test_saved_bytes_length_bound_matches_what_zigzag_sharding_needs():
    """16·cp is the least S with S//8 >= 2·cp, the shortest sharded sequence build_layout accepts."""
    for cp in (1, 2, 3, 8):
        assert (16 * cp) // 8 >= 2 * cp and (16 * cp - 1) // 8 < 2 * cp


@pytest.mark.parametrize("args, needles", [(["--rounds", "1"], ["--rounds", "'1'", ">= 2"]),
                                           (["--old-repeats", "0"], ["--old-repeats", "'0'"])])
def test_profile_stability_refuses_bad_counts(args, needles, tmp_path):
    _refused(_run("benchmarks/skrull/profile_stability.py", *args, "--out", str(tmp_path / "p.json")), *needles)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("script", ["benchmarks/skrull/saved_bytes.py", "benchmarks/skrull/profile_stability.py"])
def test_skrull_scripts_name_a_bad_params_file_without_a_traceback(script, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "params.yaml").write_text("skrull:\n  seed: abc\n")
    out = tmp_path / "o.json"
    env = {**os.environ, "PAPERWORKS_ROOT": str(root)}
    _refused(_run(script, "--out", str(out), env=env), "skrull", "seed", "'abc'")
    assert not out.exists()


# -- 4. januspipe/throughput.py: the costs file and the data are named ----------------------------------
def _costs() -> dict:
    cm = {k: [0.001, 0.002, 0.003, 0.004] for k in ("block_s", "stage_overhead_s", "first_extra_s", "last_extra_s")}
    cm.update({k: 1000.0 for k in ("block_act_forward_bytes", "block_act_force_bytes", "stage_act_forward_bytes",
                                   "stage_act_force_bytes", "state_bytes", "geo_bytes")})
    return {"cost_model": {**cm, "structures_per_microbatch": 1}, "latency_s": 1e-5, "bandwidth_Bps": 1e9}


@pytest.mark.parametrize("content, needles", [
    ('{"cost_model": {', ["not valid JSON"]),                                  # was a raw JSONDecodeError
    ("[1]", ["a JSON list, not an object"]),
    (json.dumps({"cost_model": {}, "latency_s": 1e-5, "bandwidth_Bps": 1e9}), ["cost_model.block_s", "missing"]),
    (json.dumps({**_costs(), "latency_s": "fast"}), ["latency_s='fast'", "finite numbers"]),
    (json.dumps({**_costs(), "cost_model": {**_costs()["cost_model"], "block_s": [1, 2]}}), ["cost_model.block_s=[1, 2]"]),
    (None, ["missing"]),
])
def test_throughput_names_a_bad_costs_file(content, needles, tmp_path):
    costs = tmp_path / "costs.json"
    if content is not None:
        costs.write_text(content)
    out = tmp_path / "t.json"
    proc = _run("benchmarks/januspipe/throughput.py", "--costs", str(costs), "--out", str(out))
    _refused(proc, str(costs), *needles)
    assert proc.stdout == "" and not out.exists()


def test_throughput_without_costs_or_data_names_the_data(tmp_path, capsys, monkeypatch):
    bench = load_script("benchmarks/januspipe/throughput.py")
    monkeypatch.setattr(bench, "ROOT", tmp_path)   # a checkout without results/januspipe/profile or data/mlip
    out = tmp_path / "t.json"
    assert bench.main(["--devices", "2", "--blocks", "4", "--out", str(out)]) == 2   # was an InputError traceback
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path / "data" / "mlip") in err and "januspipe data" in err, err
    assert not out.exists()


def test_throughput_refuses_costs_with_measure(tmp_path):
    out = tmp_path / "t.json"                       # never the committed default, should the refusal regress
    _refused(_run("benchmarks/januspipe/throughput.py", "--measure", "--costs", str(tmp_path / "c.json"),
                  "--out", str(out)), "--costs", "--measure")
    assert not out.exists()


# -- 5. har/imfe_grid_probe.py: argparse, then the inputs named before the slow decoding -----------------
@pytest.mark.parametrize("args, needles", [
    (["3", "5"], ["downsample", "'3'", "2 or 4"]),
    (["4", "5", "abc"], ["threads", "'abc'", "positive integer"]),             # was a ValueError traceback
    (["4", "0"], ["epochs", "'0'", "positive integer"]),
    (["4"], ["required: epochs"]),
])
def test_imfe_grid_probe_refuses_bad_arguments(args, needles):
    _refused(_run("benchmarks/har/imfe_grid_probe.py", *args), *needles)


def test_imfe_grid_probe_help_exits_0():
    proc = _run("benchmarks/har/imfe_grid_probe.py", "--help")
    assert proc.returncode == 0 and "downsample" in proc.stdout and "epochs" in proc.stdout, proc


def test_imfe_grid_probe_names_missing_inputs(tmp_path, capsys, monkeypatch):
    bench = load_script("benchmarks/har/imfe_grid_probe.py")
    monkeypatch.setattr(bench, "ROOT", tmp_path)             # a checkout without params.yaml or data/har
    assert bench.main(["4", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path / "params.yaml") in err, err
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    assert bench.main(["4", "1"]) == 2                        # was an InputError traceback
    err = capsys.readouterr().err
    assert str(tmp_path / "data" / "har" / "manifest.json") in err and "dvc repro har_data" in err, err


# -- 6. vfda/global_variance_rounds.py: a one-round federation ------------------------------------------
def test_global_variance_rounds_with_one_round_prints_dashes(tmp_path, capsys):
    feds = tmp_path / "federations"
    (feds / "fedavg-vfda-s0").mkdir(parents=True)
    (feds / "fedavg-vfda-s0" / "history.json").write_text(json.dumps({
        "federation": "fedavg-vfda-s0", "vfda_rule": "product",
        "rounds": [{"round": 1, "global_var_mean": {"model.0.1.global_var_mu": 0.04,
                                                    "model.0.1.global_var_sigma": 0.09}}]}))
    out = tmp_path / "out.json"
    bench = load_script("benchmarks/vfda/global_variance_rounds.py")
    assert bench.main(["--federations", str(feds), "--out", str(out)]) == 0   # was a TypeError mid-table
    printed = capsys.readouterr().out
    assert "| 1 | mu | 0.0400-0.0400 | — | — |" in printed and "| 1 | sigma | 0.0900-0.0900 | — | — |" in printed
    rows = json.loads(out.read_text())["product"]
    assert [(r["stat"], r["later_min"], r["later_factor_max"]) for r in rows] == [("mu", None, None), ("sigma", None, None)]


# -- 8. har/imfe_scale_probe.py: a partial --out says so ---------------------------------------------
class _Stop(Exception):
    pass


def _fake_probe(monkeypatch, stop_at: int | None):
    """The probe's heavy parts replaced by tiny stand-ins (no rendering, TV-L1 or distillation)."""
    import numpy as np
    import torch

    import components.har.chunks as chunks
    import components.har.experiment as ex
    import components.har.imfe as imfe
    from components.base import InputError

    k = 8

    class Teacher(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, k)

        def features(self, x):
            return x[:, :4].float()

    def render(cfg, clips_per_class, stream=0, progress=None):
        n = clips_per_class * k * 3
        x = np.random.default_rng(stream).normal(size=(n, 4)).astype("float32")
        return x, x, np.arange(n) % k

    calls = []

    def distill(x, f, features, icfg, H, W, seed, val=None, device=None):
        calls.append(len(x))
        if stop_at is not None and len(calls) > stop_at:
            raise InputError("stopped part-way (test)")
        return None, {"train_mse": [0.5] * icfg.epochs, "val_mse": [0.4] * icfg.epochs}

    monkeypatch.setattr(ex, "load_stream_net", lambda path: Teacher())
    monkeypatch.setattr(ex, "render_distill_set", render)
    monkeypatch.setattr(chunks, "rgb_tensor", torch.as_tensor)
    monkeypatch.setattr(chunks, "flow_tensor", torch.as_tensor)
    monkeypatch.setattr(imfe, "distill", distill)
    monkeypatch.setattr(imfe, "imfe_features", lambda net, x: x[:, :4].float())
    return calls


@pytest.mark.parametrize("stop_at", [None, 1])
def test_imfe_scale_probe_records_the_plan_and_completion(stop_at, tmp_path, capsys, monkeypatch):
    calls = _fake_probe(monkeypatch, stop_at)
    teacher = tmp_path / "tvl1.pt"
    teacher.write_bytes(b"")
    out = tmp_path / "p.json"
    bench = load_script("benchmarks/har/imfe_scale_probe.py")
    rc = bench.main(["--clips-per-class", "2", "1", "--epochs", "3", "--teacher", str(teacher), "--out", str(out)])
    assert rc == (0 if stop_at is None else 2)
    record = json.loads(out.read_text())
    assert record["planned"] == [{"clips_per_class": 1, "epochs": 3}, {"clips_per_class": 2, "epochs": 3}]
    assert [r["clips_per_class"] for r in record["runs"]] == ([1, 2] if stop_at is None else [1])
    assert record["complete"] is (stop_at is None)
    assert {"device", "imfe", "teacher", "test_chunks", "runs"} <= set(record)   # the keys it always had
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.json", "tvl1.pt"]   # no stray temporary file
    assert len(calls) == 2   # the stopped run died in its second size


def test_imfe_scale_probe_docstring_names_the_committed_runs():
    """The docstring's reported commands are the ones recorded in the committed results."""
    doc = load_script("benchmarks/har/imfe_scale_probe.py").__doc__
    committed = json.loads((REPO / "benchmarks" / "results" / "har_imfe_scale_h200.json").read_text())
    commands = [s["command"] for s in committed["sessions"]]
    assert commands and all(c in doc for c in commands), commands
    assert "20 100 400" not in doc
