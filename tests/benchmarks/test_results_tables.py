"""benchmarks/{har,januspipe,familyseer,vfda}/results_table.py: a small valid metrics file renders; a missing,
empty, truncated, list-shaped or section-less one exits 2 naming the file, with nothing on stdout."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, load_script

HAR = {"accuracy": {"tvl1": {"online_accuracy": 0.5, "online_accuracy_std": 0.1, "clip_accuracy": 0.6,
                             "stream_accuracy": 0.4, "stream_accuracy_std": 0.05},
                    "imfe": {"online_accuracy": 0.2, "online_accuracy_std": 0.0, "clip_accuracy": 0.3}},
       "latency": {"imfe_ms_p50": 1.5, "tvl1_feature_ms_p50": 100.0},
       "stream": {"fps": 30}, "imfe": {}, "teacher": {}, "profile_seconds": 1, "accuracy_points": []}
JANUSPIPE = {"profile": "quick", "headline": {"devices": 4, "microbatches": 8, "memory_budget_MiB": 100.0},
             "throughput": {"1f1b4": {"throughput_structures_per_s": 2.0, "bubble_ratio": 0.1,
                                      "peak_activation_MiB": 50.0}},
             "real_runs": {"p2": {"measured_makespan_s": 1.0, "sim_makespan_s": 1.1, "sim_error": 0.1,
                                  "throughput_structures_per_s": 3.0, "measured_peak_saved_MiB": 10.0}},
             "accuracy": {"force_mae_eV_per_A": 0.1}}
FAMILYSEER = {"profile": "quick", "search_speedup": {"mean": 1.5}, "final_latency": {}, "cost_model": {},
              "timing": {}, "latency": {"speedup_tuned_vs_untuned_min": 2.0}}
PER_MODEL = {"m": {"tasks": 3, "budget": 10, "final_latency_us": {"p": 12.0},
                   "speedup": {"p": {"method_trials": 5, "reached": True, "baseline_trials": 10,
                                     "speedup_trials": 2.0, "speedup_wall": 1.5}},
                   "latency": {"tuned": {"latency_ms_p50": 1.0}}, "cost_model": {"families": {}}}}
_DICE = {"held_in": 0.8, "held_in_std": 0.01, "held_out": 0.7, "held_out_std": 0.02,
         "per_institute": {"A": 0.85, "B": 0.75}, "seeds": 3}
_GAIN = {"held_in": -0.01, "held_in_std": 0.004, "held_out": 0.003, "held_out_std": 0.005,
         "held_in_seeds_improved": 0, "held_out_seeds_improved": 2, "seeds": 3}
VFDA = {"profile": "quick", "vfda_rule": "product", "seeds": 3, "rounds": 10,
        "dice": {"fedavg": {"base": _DICE, "vfda": {**_DICE, "held_out": 0.72}}},
        "gain": {"fedavg": {"vfda": _GAIN}}, "timing": {"evaluate_s": 20.94}}

GOOD = {"har": (HAR, "| TV-L1 + flow CNN (the standard pipeline) | 50.0 ± 10.0 | 40.0 ± 5.0 | 60.0 | 100.0 |"),
        "januspipe": (JANUSPIPE, "| 1f1b4 | 2.000 | 1.00× | 10.0% | 50 |"),
        "familyseer": (FAMILYSEER, "| m | 3 | 10 | p | 10 | 5 | 2.00 | — | 1.50 | — |"),
        "vfda": (VFDA, "| FedAvg + VFDA (product) | 85.00 | 75.00 | 80.00 ± 1.00 | 72.00 ± 2.00 |")}


def _table(paper: str):
    return load_script(f"benchmarks/{paper}/results_table.py")


def _argv(paper: str, path: Path, tmp_path: Path) -> list[str]:
    if paper != "familyseer":
        return [str(path)]
    per = tmp_path / "per_model.json"
    per.write_text(json.dumps(PER_MODEL))
    return [str(path), str(per)]


@pytest.mark.parametrize("paper", sorted(GOOD))
def test_a_small_valid_metrics_file_renders(paper, tmp_path, capsys):
    metrics, row = GOOD[paper]
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(metrics))
    assert _table(paper).main(_argv(paper, path, tmp_path)) == 0
    out = capsys.readouterr().out
    assert row in out.splitlines(), out


@pytest.mark.parametrize("paper", sorted(GOOD))
@pytest.mark.parametrize("content, found", [(None, "missing"), ("", "not valid JSON"),
                                            ('{"accuracy": {"tvl1"', "not valid JSON"),
                                            ("[1, 2]", "a JSON list, not an object"), ("{}", "missing")])
def test_bad_metrics_exit_2_naming_the_file(paper, content, found, tmp_path, capsys):
    path = tmp_path / "metrics.json"
    if content is not None:
        path.write_text(content)
    assert _table(paper).main(_argv(paper, path, tmp_path)) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err.startswith("error: ") and str(path) in cap.err and found in cap.err, cap.err


@pytest.mark.parametrize("paper, broken", [
    ("har", {**HAR, "accuracy": {"tvl1": {}}}),
    ("har", {**HAR, "latency": []}),
    ("januspipe", {**JANUSPIPE, "throughput": {"1f1b4": [1]}}),
    ("januspipe", {**JANUSPIPE, "real_runs": {}}),
    ("familyseer", {**FAMILYSEER, "latency": {}}),
    ("familyseer", {**FAMILYSEER, "timing": [1]}),
])
def test_malformed_sections_exit_2_without_a_partial_table(paper, broken, tmp_path, capsys):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(broken))
    assert _table(paper).main(_argv(paper, path, tmp_path)) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err.startswith("error: ") and str(path) in cap.err, cap


@pytest.mark.parametrize("per_model, found", [("{}", "no model"), ("[1]", "a JSON list"),
                                               ('{"m": {"tasks": 1}}', "lacks keys")])
def test_familyseer_names_a_bad_per_model_file(per_model, found, tmp_path, capsys):
    metrics, per = tmp_path / "metrics.json", tmp_path / "per_model.json"
    metrics.write_text(json.dumps(FAMILYSEER))
    per.write_text(per_model)
    assert _table("familyseer").main([str(metrics), str(per)]) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and str(per) in cap.err and found in cap.err, cap.err


@pytest.mark.parametrize("paper", ["har", "januspipe", "familyseer", "vfda"])
def test_the_default_metrics_are_this_checkouts_whatever_the_current_folder(paper, tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / paper / "results_table.py")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert "Traceback" not in proc.stderr
    if (REPO / "metrics" / f"{paper}.json").is_file() and proc.returncode == 0:
        assert proc.stdout.startswith(("|", "Dice", "###", "profile"))
    else:  # a checkout without (valid) metrics: the error names the checkout's file, not ./metrics/...
        assert proc.returncode == 2 and (str(REPO / "metrics") in proc.stderr or str(REPO / "plots") in proc.stderr)


def _without(d: dict, key: str) -> dict:
    return {k: v for k, v in d.items() if k != key}


@pytest.mark.parametrize("broken, entry", [
    ({**VFDA, "dice": {"fedavg": {"base": _DICE, "vfda": _without(_DICE, "held_out_std")}}},
     "dice.fedavg.vfda is malformed (KeyError: 'held_out_std')"),       # was a partial table + KeyError, rc 1
    ({**VFDA, "dice": {"fedavg": {"base": _DICE, "vfda": {**_DICE, "per_institute": {"A": 0.8}}}}},
     "dice.fedavg.vfda is malformed (KeyError: 'B')"),
    ({**VFDA, "gain": {"fedavg": {"vfda": {**_GAIN, "held_in": "x"}}}}, "gain.fedavg.vfda is malformed (ValueError"),
    ({**VFDA, "gain": {"fedavg": [1]}}, "gain.fedavg is malformed"),
    ({**VFDA, "timing": {"evaluate_s": None}}, "timing is malformed (TypeError"),
    ({**VFDA, "gain": []}, "'gain' is []; expected a JSON object"),
])
def test_vfda_malformed_entries_exit_2_naming_the_file_and_entry(broken, entry, tmp_path, capsys):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(broken))
    assert _table("vfda").main([str(path)]) == 2
    cap = capsys.readouterr()
    assert cap.out == "", cap.out
    assert cap.err.startswith(f"error: {path}: ") and entry in cap.err and cap.err.count("\n") == 1, cap.err
