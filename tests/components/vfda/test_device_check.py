"""benchmarks/vfda/device_check.py: the in-process grid runs the real ServerApp plan and ClientApp
handlers; on one device two runs agree bit for bit, the lane layout does not change a result (two
lanes in threads of one process: the clients' random draws must not share torch's global RNG), a
crashing client comes back as an error reply (its round still aggregates without it) in whichever
lane runs the federation, and the server's global variance reaches the clients' VFDA layers."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from components.vfda.config import VfdaConfig
from components.vfda.data import generate_dataset
from components.vfda.federation import RunSettings, parse_federation_id
from tests.flows.test_vfda_flow import TINY

pytestmark = pytest.mark.usefixtures("task_identity")

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "vfda" / "device_check.py"


@pytest.fixture(scope="module")
def device_check():
    spec = importlib.util.spec_from_file_location("vfda_device_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("vfda-device-data")
    generate_dataset(VfdaConfig.model_validate(TINY).data, root, seed=1)
    return root


def _settings(tmp_path: Path, data: Path, name: str, lanes: int = 1) -> RunSettings:
    # fault injection: the second training institute (B) crashes in round 1, in every lane
    cfg = VfdaConfig.model_validate({**TINY, "simulation": {**TINY["simulation"], "lanes": lanes}})
    feds = tuple(parse_federation_id(f) for f in ("fedavg-base-s0", "fedavg-vfda-s0"))
    return RunSettings(config=cfg, data_dir=data, out_dir=tmp_path / name, federations=feds)


def test_in_process_runs_agree_across_repeats_and_lanes_and_report_client_crashes(device_check, tiny_data, tmp_path,
                                                                                 monkeypatch):
    import components.vfda.vfda as vfda_mod

    received = []  # (federation of the model, per key: mean of the variance sent, buffer after loading)
    real_load = vfda_mod.load_global_variance

    def spy(model, variance):
        real_load(model, variance)
        layers = vfda_mod.vfda_layers(model)
        received.append({k: (float(v.mean()), float(getattr(layers[k.rsplit(".", 1)[0]], k.rsplit(".", 1)[1]).mean()))
                         for k, v in variance.items()})

    monkeypatch.setattr(vfda_mod, "load_global_variance", spy)  # the ClientApp imports it per message
    one = device_check.run_on("cpu", _settings(tmp_path, tiny_data, "a"), lanes=1)
    sent_to_clients = list(received)
    again = device_check.run_on("cpu", _settings(tmp_path, tiny_data, "b"), lanes=1)
    two_lanes = device_check.run_on("cpu", _settings(tmp_path, tiny_data, "c", lanes=2), lanes=2)
    run_c = json.loads((tmp_path / "c" / "run.json").read_text())
    assert run_c["lanes"] == [["A", "B", "C"], ["A", "B", "C"]]   # really two lanes of three nodes
    assert set(one["federations"]) == {"fedavg-base-s0", "fedavg-vfda-s0"}
    for run in (again, two_lanes):
        assert device_check.max_dice_gap(one, run) == 0.0
        assert {f: r["train_loss_last_round"] for f, r in run["federations"].items()} == \
               {f: r["train_loss_last_round"] for f, r in one["federations"].items()}
    for folder in ("a", "c"):  # the same institute crashes whichever lane (partition ids 1 or 4) runs it
        for fid, rec in (one if folder == "a" else two_lanes)["federations"].items():
            assert rec["aggregated_rounds"] == 2 and set(rec["heldin_dice"]) == {"A", "B", "C"}
            assert set(rec["heldout_dice"]) == {"E"} and all(0.0 < d <= 1.0 for d in rec["heldin_dice"].values())
            hist = json.loads((tmp_path / folder / "federations" / fid / "history.json").read_text())
            r1, r2 = hist["rounds"]
            assert len(r1["failures"]) == 1 and "institute B" in r1["failures"][0]["reason"]
            assert "crashes in round 1 on purpose" in r1["failures"][0]["reason"]
            assert sorted(r1["train"]) == ["A", "C"] and r1["aggregated"] and not r2["failures"]

    # Eq. 4 reaches the clients: round 2's train messages of the VFDA federation (3 clients) carry the
    # variance the server computed from round 1, and the clients' VFDA layers hold it (not the initial 1)
    hist = json.loads((tmp_path / "a" / "federations" / "fedavg-vfda-s0" / "history.json").read_text())
    server_var = hist["rounds"][0]["global_var_mean"]
    assert len(sent_to_clients) == 3 and "global_var_mean" not in json.loads(
        (tmp_path / "a" / "federations" / "fedavg-base-s0" / "history.json").read_text())["rounds"][0]
    for got in sent_to_clients:
        assert set(got) == set(server_var)
        for key, (sent, buffer) in got.items():
            assert sent == pytest.approx(server_var[key], rel=1e-6) and buffer == pytest.approx(sent, rel=1e-6)
            assert buffer != 1.0 and buffer > 0.0


def test_cli_rejects_a_missing_dataset_and_a_bad_device(device_check, tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        device_check.main(["--devices", "cpu", "--data", str(tmp_path / "nowhere")])
    assert err.value.code == 2 and "--data" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        device_check.main(["--devices", "tpu"])
    assert err.value.code == 2 and "--devices tpu" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        device_check.main(["--devices", "cpu", "--volumes-per-institute", "1"])
    assert err.value.code == 2 and "--volumes-per-institute 1" in capsys.readouterr().err
    # 2 volumes leave institutes 1 training volume, fewer than federation.batch_size=2: named before any data
    assert device_check.main(["--devices", "cpu", "--volumes-per-institute", "2"]) == 2
    assert "federation.batch_size=2: institute A has 1 training volumes" in capsys.readouterr().err


def _site_grid(device_check, sites: dict[str, Path]):
    """One node per institute with its own datalist (``--node-config "datalist=... institute=..."``)."""
    from components.vfda.client_app import app as client_app

    grid = device_check.InProcessGrid(client_app, len(sites))
    for ctx, (name, datalist) in zip(grid.contexts.values(), sites.items()):
        ctx.node_config.clear()
        ctx.node_config.update({"datalist": str(datalist), "institute": name})
    return grid


def _server_dir(tiny_data: Path, tmp_path: Path) -> Path:
    """What the server of a per-site deployment has: the manifest and the held-out institute only."""
    import shutil

    server = tmp_path / "server"
    server.mkdir()
    shutil.copy(tiny_data / "institutes.json", server / "institutes.json")
    shutil.copytree(tiny_data / "E", server / "E")
    return server


def test_per_site_data_the_server_reads_only_the_manifest_and_the_held_out_institute(device_check, tiny_data,
                                                                                    tmp_path):
    from components.vfda.server_app import run_plan

    cfg = VfdaConfig.model_validate({**TINY, "federation": {**TINY["federation"], "num_rounds": 1}})
    settings = RunSettings(config=cfg, data_dir=_server_dir(tiny_data, tmp_path), out_dir=tmp_path / "out",
                           federations=(parse_federation_id("fedavg-base-s0"),))
    grid = _site_grid(device_check, {n: tiny_data / n / "datalist.json" for n in "ABC"})
    summary = run_plan(grid, settings)
    assert summary["lanes"] == [["A", "B", "C"]]
    (r1,) = json.loads((tmp_path / "out" / "federations" / "fedavg-base-s0" / "history.json").read_text())["rounds"]
    assert set(r1["evaluate"]) == {"A", "B", "C"} and set(r1["heldout"]) == {"E"}
    assert sorted(r1["train"]) == ["A", "C"] and "institute B" in r1["failures"][0]["reason"]   # fault by name


def test_a_node_with_bad_data_is_named_in_the_servers_error(device_check, tiny_data, tmp_path):
    import shutil

    import nibabel as nib
    import numpy as np

    from components.base import InputError
    from components.vfda.server_app import run_plan

    site_b = tmp_path / "site-B"
    shutil.copytree(tiny_data / "B", site_b)
    bad = sorted((site_b / "labelsTr").glob("*.nii.gz"))[0]
    img = nib.load(bad)
    lbl = np.asarray(img.dataobj).copy()
    lbl[0, 0, 0] = 9
    nib.save(nib.Nifti1Image(lbl, img.affine), str(bad))
    settings = RunSettings(config=VfdaConfig.model_validate(TINY), data_dir=_server_dir(tiny_data, tmp_path),
                           out_dir=tmp_path / "out", federations=(parse_federation_id("fedavg-base-s0"),))
    grid = _site_grid(device_check, {"A": tiny_data / "A" / "datalist.json", "B": site_b / "datalist.json",
                                     "C": tiny_data / "C" / "datalist.json"})
    with pytest.raises(InputError) as err:
        run_plan(grid, settings)
    msg = str(err.value)
    assert "no complete set of SuperNodes" in msg and "institutes found ['A', 'C']" in msg
    assert "failed nodes: node 2: " in msg and f"{bad.name} has values [9]" in msg, msg
    assert not (tmp_path / "out" / "run.json").exists()


def test_min_train_clients_and_fault_partition_are_checked_against_the_dataset(tiny_data, tmp_path):
    """With data.root the training institutes are those of the dataset's manifest (3 here)."""
    from components.base import ConfigError, InputError
    from components.vfda.server_app import run_plan
    from tests.components.vfda.conftest import FakeGrid

    for overrides, error, words in (({"federation": {"min_train_clients": 4}}, InputError,
                                     ["federation.min_train_clients=4", "lists 3 training institutes"]),
                                    ({"simulation": {"fault_round": 1, "fault_partition": 3}}, ConfigError,
                                     ["simulation.fault_partition=3", "0 to 2"])):
        cfg = VfdaConfig.model_validate({"data": {"root": str(tiny_data)}, "model": TINY["model"], **overrides})
        with pytest.raises(error) as err:
            run_plan(FakeGrid([]), RunSettings(config=cfg, data_dir=tiny_data, out_dir=tmp_path / "out"))
        assert all(w in str(err.value) for w in words), str(err.value)
