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


def _run_files(folder, run=None, ledger=None):
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("database_workload.json", "database_tuning_record.json"):
        (folder / name).write_text("")
    run = run if run is not None else {"fingerprint": "f", "policy": "gradient", "seed": 0, "tasks": ["t"],
                                       "weights": [1.0], "budget": 2, "num_trials": 2, "wall_s": 1.0}
    (folder / "run.json").write_text(run if isinstance(run, str) else json.dumps(run))
    ledger = ledger if ledger is not None else {"trials": []}
    (folder / "ledger.json").write_text(ledger if isinstance(ledger, str) else json.dumps(ledger))
    return folder


def test_a_malformed_run_record_names_the_file_and_the_keys(tmp_path):
    from components.familyseer.tuning import load_run

    assert load_run(_run_files(tmp_path / "ok"))["trials"] == []
    with pytest.raises(InputError, match=r"run.json: keys \['num_trials', 'wall_s'\] missing.*'tasks'"):
        load_run(_run_files(tmp_path / "keys", run={"fingerprint": "f", "policy": "gradient", "seed": 0,
                                                    "tasks": ["t"], "weights": [1.0], "budget": 2}))
    with pytest.raises(InputError, match=r"run.json: not valid JSON"):
        load_run(_run_files(tmp_path / "truncated", run='{"fingerprint": "f", "pol'))
    with pytest.raises(InputError, match=r"ledger.json: keys \['trials'\] missing"):
        load_run(_run_files(tmp_path / "ledger", ledger={"rows": []}))
    with pytest.raises(InputError, match=r"ledger.json: a JSON list, not an object"):
        load_run(_run_files(tmp_path / "list", ledger="[]"))


_TRIAL = {"index": 1, "task": 0, "kind": "main", "latency_ms": 2.0, "error": "", "wall_s": 0.5}


@pytest.mark.parametrize("trial, needle", [
    ({**_TRIAL, "task": 1}, r"trial 1 'task' is 1; expected a task index in \[0, 1\) \(run.json lists 1 task"),
    ({**_TRIAL, "task": -1}, r"trial 1 'task' is -1; expected a task index in \[0, 1\)"),
    ({**_TRIAL, "task": "0"}, r"trial 1 'task' is '0'; expected a task index"),
    ({k: v for k, v in _TRIAL.items() if k != "latency_ms"}, r"trial 1 has no \['latency_ms'\]; expected an object "
                                                             r"with keys \['index', 'task', 'latency_ms', 'wall_s'\]"),
    ({**_TRIAL, "latency_ms": None}, r"trial 1 'latency_ms' is None; expected a number"),
    ({**_TRIAL, "wall_s": "1 s"}, r"trial 1 'wall_s' is '1 s'; expected a number"),
    ([0, 2.0], r"trial 1 is '\[0, 2.0\]'; expected an object with keys"),
    (None, r"trial 1 is 'None'; expected an object"),
])
def test_a_malformed_trial_names_the_ledger_the_trial_and_the_field(tmp_path, trial, needle):
    from components.familyseer.tuning import load_run

    folder = _run_files(tmp_path / "run", ledger={"trials": [_TRIAL, trial]})
    with pytest.raises(InputError, match=rf"{folder / 'ledger.json'}: {needle}.*re-run the tune stage"):
        load_run(folder)


def test_tasks_and_weights_of_different_lengths_are_named_not_truncated(tmp_path):
    from components.familyseer.tuning import load_run

    run = {"fingerprint": "f", "policy": "gradient", "seed": 0, "tasks": ["t", "u"], "weights": [1.0], "budget": 2,
           "num_trials": 1, "wall_s": 1.0}
    folder = _run_files(tmp_path / "lengths", run=run, ledger={"trials": [_TRIAL]})
    with pytest.raises(InputError, match=rf"{folder / 'run.json'}: 'tasks' lists 2 task\(s\) and 'weights' 1 "
                                         r"weight\(s\); expected one weight per task"):
        load_run(folder)
    for key, value, needle in (("weights", [1.0, "2"], r"'weights' holds '2'; expected numbers"),
                               ("budget", 0, r"'budget' is 0; expected a positive integer"),
                               ("tasks", [], r"'tasks' lists 0 task\(s\)")):
        bad = {**run, "weights": [1.0, 1.0], key: value}
        if key == "tasks":
            bad["weights"] = []
        with pytest.raises(InputError, match=needle):
            load_run(_run_files(tmp_path / key, run=bad, ledger={"trials": []}))
    assert load_run(_run_files(tmp_path / "ok", run={**run, "weights": [1.0, 0.5]},
                               ledger={"trials": [_TRIAL, {**_TRIAL, "index": 2, "task": 1}]}))["weights"] == [1.0, 0.5]


def test_a_malformed_task_manifest_stops_the_evaluation_with_its_name(tmp_path):
    from components.familyseer.config import FamilySeerConfig
    from components.familyseer.evaluation import evaluate_all

    cfg = FamilySeerConfig()
    tasks = tmp_path / "zoo" / "resnet_tiny" / "tasks.json"

    def evaluate():
        evaluate_all(cfg, tmp_path / "zoo", lambda m, p, s: tmp_path / "runs" / m / p / f"seed{s}", {}, tmp_path)

    with pytest.raises(InputError, match=r"tasks.json: missing; expected the data stage's task manifest"):
        evaluate()
    tasks.parent.mkdir(parents=True)
    for text, needle in (('{"model": "resnet_tiny", "tas', r"tasks.json: not valid JSON"),
                         ('{"model": "resnet_tiny"}', r"tasks.json: keys \['tasks'\] missing"),
                         ('{"tasks": []}', r"tasks.json: 'tasks' is '\[\]'; expected"),
                         ('{"tasks": [{"name": "matmul"}]}', r"objects with 'name' and 'core_op'")):
        tasks.write_text(text)
        with pytest.raises(InputError, match=needle):
            evaluate()


def test_a_build_whose_output_differs_from_pytorch_is_stopped():
    import numpy as np

    from components.familyseer.latency import OUTPUT_RTOL, OutputMismatch, check_output

    ref = np.array([[2.0, -4.0, 1.0]], dtype=np.float32)
    assert check_output(ref + 1e-6, ref, "b") == pytest.approx(1e-6, rel=0.1)
    assert check_output(ref + 0.9 * OUTPUT_RTOL * 4.0, ref, "b") > 0   # within 1e-3 x max |ref| = 4e-3
    with pytest.raises(OutputMismatch, match=r"resnet_tiny: tuned.*up to 0\.01.*expected at most 0\.004"):
        check_output(ref + np.array([[0.0, 0.01, 0.0]], dtype=np.float32), ref, "resnet_tiny: tuned")
    with pytest.raises(OutputMismatch, match="expected at most"):
        check_output(np.full_like(ref, np.nan), ref, "b")
    with pytest.raises(OutputMismatch, match=r"shape \(3,\) differs from PyTorch's \(1, 3\)"):
        check_output(ref[0], ref, "b")
