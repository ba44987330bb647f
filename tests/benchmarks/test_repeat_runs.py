"""benchmarks/repeat_runs.py: every run judged as the report judges it, the spread per claim, bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, load_script

SCRIPT = "benchmarks/repeat_runs.py"


@pytest.fixture()
def repeat(monkeypatch):
    """The script with `python -m flows vfda all` replaced by a fake that writes metrics/vfda.json: the
    committed metrics with the FedAvg held-out interval's low end moved per run."""
    mod = load_script(SCRIPT)
    committed = json.loads((REPO / "metrics" / "vfda.json").read_text())
    lows = iter([0.004, -0.001, 0.002])
    seen = []

    def fake(paper, root, overrides, timeout_s):
        assert paper == "vfda" and (root / "params.yaml").read_text() == (REPO / "params.yaml").read_text()
        seen.append((root, list(overrides)))
        m = json.loads(json.dumps(committed))
        m["gain"]["fedavg"]["vfda"]["held_out_ci90_low"] = next(lows)
        (root / "metrics").mkdir()
        (root / "metrics" / "vfda.json").write_text(json.dumps(m))
        return subprocess.CompletedProcess(["fake"], 0, "", "")

    monkeypatch.setattr(mod, "run_once", fake)
    mod.seen = seen
    return mod


def test_every_run_is_judged_and_the_spread_is_summarised(repeat, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert repeat.main(["vfda", "--runs", "3", "--set", "seed=1", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["runs"] == 3 and res["overrides"] == ["seed=1"] and len(res["per_run"]) == 3
    s = res["summary"]["fedavg_vfda_held_out"]
    assert s["values"] == [0.004, -0.001, 0.002] and s["min"] == -0.001 and s["median"] == 0.002
    assert s["max"] == 0.004 and s["runs_judged"] == 3 and s["runs_met"] == 2
    assert [r["claims"]["fedavg_vfda_held_out"]["met"] for r in res["per_run"]] == [True, False, True]
    first = res["per_run"][0]["claims"]["fedavg_vfda_held_out"]        # the claim names estimate and interval
    committed_gain = json.loads((REPO / "metrics" / "vfda.json").read_text())["gain"]["fedavg"]["vfda"]
    assert first["estimate"] == committed_gain["held_out"] and first["interval"] == committed_gain["held_out_ci90"]
    assert "estimate" not in res["per_run"][0]["claims"]["quick_profile_minutes"]
    time_claim = res["summary"]["quick_profile_minutes"]
    assert time_claim["runs_met"] == 3 and time_claim["target"] == "< 480"
    # every run had its own scratch root, with the override passed on, and none is left behind
    roots = [r for r, _ in repeat.seen]
    assert len(set(roots)) == 3 and all(o == ["seed=1"] for _, o in repeat.seen)
    assert not any(r.exists() for r in roots)
    text = capsys.readouterr().out
    assert "| vfda.fedavg_vfda_held_out | > 0 | 0.004 (yes) | -0.001 (no) | 0.002 (yes) | -0.001 | 0.002 | 0.004 | 2 of 3 |" in text


def test_a_failing_run_stops_the_benchmark_and_writes_nothing(repeat, monkeypatch, tmp_path, capsys):
    def bad(paper, root, overrides, timeout_s):
        return subprocess.CompletedProcess(["fake"], 2, "", "error: vfda.seed='abc': expected an integer")

    monkeypatch.setattr(repeat, "run_once", bad)
    out = tmp_path / "r.json"
    assert repeat.main(["vfda", "--runs", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "run 1" in err and "exited 2" in err and "vfda.seed='abc'" in err
    assert not out.exists()


@pytest.mark.parametrize("args, needles", [
    (["hra"], ["argument paper", "invalid choice: 'hra'"]),
    (["vfda", "--runs", "0"], ["--runs", "'0'", "positive integer"]),
    (["vfda", "--timeout", "-3"], ["--timeout", "'-3'"]),
])
def test_bad_arguments_exit_2_before_any_run(args, needles, tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / SCRIPT), *args, "--out", str(tmp_path / "r.json")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert all(n in proc.stderr for n in needles), proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_output_path_that_is_a_folder_is_refused(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / SCRIPT), "vfda", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "a folder" in proc.stderr and list(tmp_path.iterdir()) == []


def test_a_bad_override_is_the_flows_clis_error_exit_2(tmp_path):
    """The real flows CLI refuses the parameter before any work; the benchmark passes its exit 2 on."""
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, str(REPO / SCRIPT), "vfda", "--runs", "1", "--set", "seed=abc",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "seed" in proc.stderr and "abc" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()
