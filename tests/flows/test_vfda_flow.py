"""The VFDA flow end to end on a tiny config under the Prefect harness: data -> federate (one Flower
simulation, with a client that crashes in round 1) -> evaluate; metrics, plots, MLflow record."""
from __future__ import annotations

import json

import pytest

from tests.conftest import mlflow_client

TINY = {
    "data": {
        "field_of_view_mm": 16.0, "spatial_size": 16, "test_fraction": 0.34,
        "institutes": [
            {"name": "A", "num_volumes": 3, "grid": 16, "lesion_radius_mm": [2.0, 4.0]},
            {"name": "B", "num_volumes": 3, "grid": 20, "gamma": 0.6, "contrast": 1.5, "lesion_radius_mm": [2.0, 4.0]},
            {"name": "C", "num_volumes": 3, "grid": 12, "gamma": 1.4, "noise_std": 0.1, "lesion_radius_mm": [2.0, 4.0]},
            {"name": "E", "num_volumes": 2, "grid": 16, "held_out": True, "gamma": 1.6, "lesion_radius_mm": [2.0, 4.0]},
        ]},
    "model": {"channels": [4, 8, 16]},
    "federation": {"strategies": ["fedavg", "fedbn"], "variants": ["base", "vfda"], "seeds": [0],
                   "ablation_strategies": [], "num_rounds": 2, "local_steps": 2, "min_train_clients": 2},
    "simulation": {"lanes": 1, "fault_round": 1, "fault_partition": 1},
}


@pytest.mark.slow
def test_vfda_flow_end_to_end(prefect_harness, paperworks_root):
    from components.vfda.config import VfdaConfig
    from flows.vfda import STAGES, vfda

    cfg = VfdaConfig.model_validate(TINY)
    vfda(config=cfg, stages=list(STAGES))

    metrics = json.loads((paperworks_root / "metrics" / "vfda.json").read_text())
    assert metrics["paper"] == "vfda" and metrics["vfda_rule"] == "product"
    for strategy in ("fedavg", "fedbn"):
        for variant in ("base", "vfda"):
            d = metrics["dice"][strategy][variant]
            assert 0.0 <= d["held_in"] <= 1.0 and 0.0 <= d["held_out"] <= 1.0
            assert set(d["per_institute"]) == {"A", "B", "C", "E"}
        assert set(metrics["gain"][strategy]) == {"vfda"}
    assert metrics["timing"]["pipeline_s"] > 0
    assert {p.name for p in (paperworks_root / "plots" / "vfda").iterdir()} >= {
        "dice_per_round.png", "dice_per_institute.png", "dice_per_round.csv"}

    # one federation's record: the crashed client is logged, its round still aggregated (2 of 3 left)
    results = paperworks_root / "results" / "vfda" / "federate"
    hist = json.loads((results / "federations" / "fedavg-vfda-s0" / "history.json").read_text())
    r1, r2 = hist["rounds"]
    assert len(r1["failures"]) == 1 and "crashes in round 1 on purpose" in r1["failures"][0]["reason"]
    assert r1["aggregated"] and len(r1["train"]) == 2 and len(r2["train"]) == 3 and not r2["failures"]
    assert set(r2["evaluate"]) == {"A", "B", "C"} and set(r2["heldout"]) == {"E"}
    # Eq. 4: mu and sigma of every VFDA layer that ran (p = 0.5 and 2 local steps: a layer can miss a
    # round); the institutes' statistics differ, so every inter-institute variance is positive, and
    # round 1 (A and C replied) and round 2 (all three) give different values
    for r in (r1, r2):
        layers = {k.rsplit(".", 1)[0] for k in r["global_var_mean"]}
        assert layers and sorted(r["global_var_mean"]) == sorted(f"{layer}.global_var_{stat}" for layer in layers
                                                                 for stat in ("mu", "sigma"))
        assert all(v > 0 for v in r["global_var_mean"].values())
    common = set(r1["global_var_mean"]) & set(r2["global_var_mean"])
    assert common and any(r1["global_var_mean"][k] != r2["global_var_mean"][k] for k in common)
    assert hist["vfda_rule"] == "product"
    base = json.loads((results / "federations" / "fedavg-base-s0" / "history.json").read_text())
    assert "global_var_mean" not in base["rounds"][1]  # no statistics exchanged without VFDA

    # offline evaluation of the saved models equals the clients' last federated evaluation
    # (FedBN: each institute with its own normalisation layers)
    per_fed = {}
    for fed_id in ("fedavg-vfda-s0", "fedbn-base-s0"):
        h = json.loads((results / "federations" / fed_id / "history.json").read_text())
        per_fed[fed_id] = {k: v["dice"] for k, v in h["rounds"][-1]["evaluate"].items()}

    client = mlflow_client(paperworks_root)
    exp = client.get_experiment_by_name("vfda")
    runs = client.search_runs([exp.experiment_id])
    names = {r.info.run_name for r in runs}
    assert {"fedavg-vfda-s0", "eval:fedavg-vfda-s0", "fedbn-base-s0"} <= names
    fed_run = next(r for r in runs if r.info.run_name == "fedavg-vfda-s0")
    hist_b = client.get_metric_history(fed_run.info.run_id, "dice.B")
    assert [m.step for m in hist_b] == [1, 2]                                   # Dice per round, per client
    assert client.get_metric_history(fed_run.info.run_id, "failed_clients")[0].value == 1
    eval_runs = {r.info.run_name: r for r in runs if r.info.run_name.startswith("eval:")}
    for fed_id, dice in per_fed.items():
        for inst, value in dice.items():
            assert eval_runs[f"eval:{fed_id}"].data.metrics[f"dice.{inst}"] == pytest.approx(value, abs=1e-6)
    parent = next(r for r in runs if r.info.run_name.startswith("vfda:"))
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"tables", "plots", "vfda.json"} <= arts
    assert parent.data.params["vfda.rule"] == "product"


def test_bad_datalist_exits_2_and_writes_no_data(prefect_harness, paperworks_root, tmp_path, capsys):
    """A real dataset given with data.root is validated first: a label out of range stops the data
    stage with exit status 2, a message naming the file, and no data/vfda."""
    import nibabel as nib
    import numpy as np

    from components.vfda.config import VfdaConfig
    from components.vfda.data import generate_dataset
    from flows.__main__ import main

    src = tmp_path / "site-data"
    generate_dataset(VfdaConfig.model_validate(TINY).data, src, seed=1)
    bad = src / "C" / "labelsTr" / "C_000.nii.gz"
    img = nib.load(bad)
    lbl = np.asarray(img.dataobj).copy()
    lbl[0, 0, 0] = 9
    nib.save(nib.Nifti1Image(lbl, img.affine), str(bad))
    assert main(["vfda", "data", "--set", f"data.root={src}"]) == 2
    err = capsys.readouterr().err
    assert "C_000.nii.gz has values [9]" in err and "expected integers in [0, 2]" in err
    assert not (paperworks_root / "data" / "vfda").exists()


@pytest.mark.slow
def test_federate_and_evaluate_failures_exit_2_naming_the_cause(prefect_harness, paperworks_root, tmp_path, capsys,
                                                               monkeypatch):
    """A federation that never aggregated, min_train_clients above the dataset's training institutes
    and a missing or bad stage record end `python -m flows vfda ...` with status 2 and the CLI's
    one-line error (not an uncaught exception), before anything is written."""
    import yaml

    from components.vfda import simulation
    from components.vfda.server_app import FederationError
    from flows.__main__ import main

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"vfda": TINY}))
    assert main(["vfda", "data", "--params", str(params)]) == 0
    capsys.readouterr()
    monkeypatch.setenv("DVC_STAGE", "vfda_federate")  # as under `dvc repro`: the data stage's output is there

    def no_round_aggregated(settings):
        raise FederationError("federation fedavg-base-s0 (strategy=fedavg, variant=base, seed=0): none of its 2 "
                              "round(s) aggregated")

    monkeypatch.setattr(simulation, "simulate", no_round_aggregated)
    assert main(["vfda", "federate", "--params", str(params)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # the CLI's own message (Prefect logs the task's error)
    assert last.startswith("error: vfda federate: ") and "none of its 2 round(s) aggregated" in last
    assert not (paperworks_root / "results" / "vfda" / "federate").exists()

    # with data.root the training institutes are the dataset's (3 here), not data.institutes
    assert main(["vfda", "federate", "--params", str(params), "--set", f"data.root={tmp_path}",
                 "--set", "federation.min_train_clients=4"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: federation.min_train_clients=4: ") and "lists 3 training institutes" in last

    # evaluate reads its inputs before it writes plots or metrics
    summary = paperworks_root / "results" / "vfda" / "data" / "summary.json"
    for broken, named in ((lambda: summary.write_text("{not json"), "summary.json: not valid JSON"),
                          (lambda: summary.write_text('{"wall_s": 1.0}'), "run.json: missing; expected the record "
                                                                          "the vfda federate stage writes")):
        broken()
        assert main(["vfda", "evaluate", "--params", str(params)]) == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith("error: ") and named in last, last
        assert not (paperworks_root / "plots" / "vfda").exists()
        assert not (paperworks_root / "metrics" / "vfda.json").exists()
