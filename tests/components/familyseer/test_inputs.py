"""Bad input is named: missing or malformed zoo files, failed trials are recorded (not fatal)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from components.base import InputError
from components.familyseer.scheduler import FAILED_MS, TrialLedger, foresee_picks
from components.familyseer.zoo import load_model


def test_missing_model_files_are_named(tmp_path):
    with pytest.raises(InputError, match=r"relax.json: missing \(model 'resnet'\).*dvc repro familyseer_data"):
        load_model(tmp_path, "resnet")


def test_malformed_manifest_is_named(tmp_path):
    folder = tmp_path / "mlp_tiny"
    folder.mkdir()
    for name in ("relax.json", "torch_state.pt", "inputs.pt"):
        (folder / name).write_text("x")
    (folder / "tasks.json").write_text(json.dumps({"tasks": []}))
    with pytest.raises(InputError, match="tasks.json: malformed task manifest"):
        load_model(tmp_path, "mlp_tiny")
    (folder / "tasks.json").write_text(json.dumps({"tasks": [{"name": "matmul"}]}))
    with pytest.raises(InputError, match="relax.json: not a serialized Relax IRModule"):
        load_model(tmp_path, "mlp_tiny")


def _result(secs=None, err=None):
    return SimpleNamespace(run_secs=secs, error_msg=err)


def test_failed_builds_and_runs_are_recorded_as_failed_trials():
    ledger = TrialLedger(2)._inst
    ok, timeout = _result(), _result(err="LocalRunner: Timeout, killed after 10 seconds")
    candidates = [SimpleNamespace(sch=SimpleNamespace(mod=f"schedule {i}")) for i in (0, 1, 1)]
    ledger.apply(None, 0, candidates, [_result(), _result(err="build timed out after 60 s"), _result()],
                 [_result([0.002, 0.001, 0.003]), ok, timeout])
    assert [t.error for t in ledger.trials] == ["", "build", "run"]
    assert [t.latency_ms for t in ledger.trials] == [pytest.approx(2.0), FAILED_MS, FAILED_MS]
    assert ledger.errors[0]["build"] == 1 and ledger.errors[0]["run"] == 1
    assert "timed out" in ledger.errors[0]["example"]
    assert ledger.best_ms == [pytest.approx(2.0), FAILED_MS]
    assert ledger.num_trials == 3
    # what was measured is kept per task (the foresee searches skip it); the third trial repeated the second
    assert len(ledger.measured["0"]) == 2 and not ledger.measured["1"] and ledger.remeasured == 1


def test_foresee_picks_take_unmeasured_bests_then_random_picks():
    # a search round as PickWithEpsGreedy lays it out: model-ranked bests, then 2 random picks
    round_ = ["b0", "b1", "b2", "b3", "r0", "r1"]
    same = lambda c: c  # noqa: E731
    assert foresee_picks(round_, set(), 4, 2, key=same) == ["b0", "b1", "r0", "r1"]
    assert foresee_picks(round_, set(), 3, 0, key=same) == ["b0", "b1", "b2"]
    # measured candidates are skipped; the round is topped up from the next best
    assert foresee_picks(round_, {"b0", "r0"}, 4, 2, key=same) == ["b1", "b2", "b3", "r1"]
    # nothing left unmeasured: an empty round, not a repeat
    assert foresee_picks(round_, set(round_), 4, 2, key=same) == []
