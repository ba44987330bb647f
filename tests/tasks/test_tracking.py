"""A flow run under Prefect's test harness logs to a temporary MLflow store: experiment with a
description, one parent run (params, tags, stage timings), nested runs, metrics and artifacts."""
from __future__ import annotations

import json
from typing import ClassVar

import pytest
from prefect import flow

from components.base import ComponentConfig, ConfigError
from tasks.io import atomic_dir, write_json
from tasks.pipeline import StageContext, flow_config, run_paper, stage_task
from tests.conftest import mlflow_client


class DemoConfig(ComponentConfig):
    paper: ClassVar[str] = "demo"
    n: int = 3


@stage_task
def data(ctx: StageContext) -> dict:
    with atomic_dir(ctx.paths.data) as tmp:
        (tmp / "values.json").write_text(json.dumps(list(range(ctx.config.n))))
    return {"n": ctx.config.n}


@stage_task
def evaluate(ctx: StageContext) -> dict:
    values = json.loads((ctx.paths.data / "values.json").read_text())
    for seed in (0, 1):
        with ctx.child(f"variant-seed{seed}", params={"seed": seed}, tags={"variant": "m"}) as run:
            run.log_metrics({"accuracy": 0.5 + 0.1 * seed, "curve": {"loss": 1.0}}, step=1)
    ctx.log_table([{"variant": "m", "accuracy": 0.55}], "accuracy")
    write_json(ctx.paths.metrics, {"paper": "demo", "profile": ctx.config.profile, "total": sum(values)})
    ctx.log_artifact(ctx.paths.metrics)
    return {"total": sum(values)}


@stage_task
def explode(ctx: StageContext) -> None:
    raise RuntimeError("boom")


@flow(name="demo")
def demo(config: DemoConfig | None = None, stages: list[str] | None = None) -> dict:
    cfg = flow_config(DemoConfig, config)
    return run_paper("demo", cfg, stages, {"data": data, "evaluate": evaluate})


@flow(name="demo-fails")
def demo_fails(config: DemoConfig | None = None) -> dict:
    return run_paper("demo", flow_config(DemoConfig, config), None, {"data": data, "explode": explode})


def test_flow_run_is_recorded(prefect_harness, paperworks_root):
    out = demo(config=DemoConfig(n=4), stages=["data", "evaluate"])
    assert out["evaluate"] == {"total": 6}
    assert json.loads((paperworks_root / "metrics" / "demo.json").read_text())["total"] == 6
    client = mlflow_client(paperworks_root)
    exp = client.get_experiment_by_name("demo")
    assert exp is not None and exp.tags["mlflow.note.content"].startswith("# demo")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == out["_mlflow_run_id"]]
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["n"] == "4" and parent.data.params["profile"] == "quick"
    tags = parent.data.tags
    assert tags["prefect_flow_run_id"] not in ("", "none")
    # the run made its data: the lock's hash (of the data it replaced) would name the wrong data
    assert tags["dvc_data_hash"] == "made by this run" and "git_commit" in tags and tags["stages"] == "data,evaluate"
    assert {"stage_seconds.data", "stage_seconds.evaluate"} <= set(parent.data.metrics)
    assert {c.data.metrics["accuracy"] for c in children} == {0.5, 0.6}
    assert children[0].data.metrics["curve.loss"] == 1.0
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"config.yaml", "demo.json", "tables"} <= arts
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "tables")} == {"tables/accuracy.csv", "tables/accuracy.md"}


def test_failed_stage_marks_run_failed(prefect_harness, paperworks_root):
    with pytest.raises(RuntimeError, match="boom"):
        demo_fails(config=DemoConfig())
    client = mlflow_client(paperworks_root)
    runs = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]


def test_unknown_stage_is_rejected_before_any_run(prefect_harness, paperworks_root):
    with pytest.raises(ConfigError, match=r"stages=\['trian'\]: unknown stage; expected a subset of \['data', 'evaluate'\]"):
        demo(config=DemoConfig(), stages=["trian"])
    assert not (paperworks_root / "mlflow" / "mlflow.db").exists()


def test_an_experiment_deleted_in_the_ui_is_restored_for_the_next_run(tmp_path, monkeypatch, caplog):
    """MLflow refuses runs in a deleted experiment ('must be in the active state'): every later run of the
    paper failed with a traceback. The tracker restores it (same id, old runs kept) and says so."""
    from tasks.tracking import Tracker

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = Tracker("demo", tmp_path)
    exp_id = tracker.experiment_id()
    tracker.client.delete_experiment(exp_id)
    with caplog.at_level("WARNING", logger="tasks.tracking"):
        assert tracker.experiment_id() == exp_id
    assert tracker.client.get_experiment(exp_id).lifecycle_stage == "active"
    assert f"MLflow experiment 'demo' (id {exp_id}) was deleted; restored it" in caplog.text
    tracker.client.create_run(exp_id)                       # raised MlflowException before


def _artifact_dir(client, run_id: str):
    from pathlib import Path
    from urllib.parse import unquote, urlparse

    return Path(unquote(urlparse(client.get_run(run_id).info.artifact_uri).path))


def test_copied_store_writes_artifacts_into_the_copy(tmp_path, monkeypatch, capsys):
    """A checkout copied with its mlflow/ keeps MLflow's absolute artifact paths of the original;
    the tracker relocates the experiment and its runs to the copy's store, and says so."""
    import shutil

    from tasks.tracking import Tracker

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    original, copy = tmp_path / "original", tmp_path / "copy"
    original.mkdir()
    with Tracker("demo", original).parent_run("first") as run:
        run.log_text("from the original", "note.txt")
    first_id = run.run_id
    shutil.copytree(original / "mlflow", copy / "mlflow")

    tracker = Tracker("demo", copy)
    with tracker.parent_run("second") as run:
        run.log_text("from the copy", "note.txt")
    assert "Relocated it and 1 run(s)" in capsys.readouterr().out
    client = tracker.client
    exp = client.get_experiment_by_name("demo")
    assert exp.artifact_location == (copy / "mlflow" / "artifacts").resolve().as_uri() + "/demo"
    # the new run writes into the copy, the original's folder holds only its own run
    assert (_artifact_dir(client, run.run_id) / "note.txt").read_text() == "from the copy"
    assert _artifact_dir(client, run.run_id).is_relative_to(copy.resolve())
    assert sorted(p.name for p in (original / "mlflow" / "artifacts" / "demo").iterdir()) == [first_id]
    # the copied run now reads the copied artifacts
    assert _artifact_dir(client, first_id).is_relative_to(copy.resolve())
    assert (_artifact_dir(client, first_id) / "note.txt").read_text() == "from the original"
    # the original store is untouched, and a second look at the copy relocates nothing
    orig_client = Tracker("demo", original).client
    assert _artifact_dir(orig_client, first_id).is_relative_to(original.resolve())
    Tracker("demo", copy).experiment_id()
    assert "Relocated" not in capsys.readouterr().out


def test_a_chosen_artifact_location_is_left_alone(tmp_path, monkeypatch, capsys):
    from tasks.tracking import Tracker

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = Tracker("demo", tmp_path)
    chosen = (tmp_path / "elsewhere" / "store").as_uri()
    tracker.client.create_experiment("demo", artifact_location=chosen)
    tracker.experiment_id()
    assert tracker.client.get_experiment_by_name("demo").artifact_location == chosen
    assert "Relocated" not in capsys.readouterr().out
