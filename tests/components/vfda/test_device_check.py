"""benchmarks/vfda/device_check.py: the in-process grid runs the real ServerApp plan and ClientApp
handlers; on one device two runs agree bit for bit, the lane layout does not change a result, and a
crashing client comes back as an error reply (its round still aggregates without it)."""
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


def _settings(tmp_path: Path, data: Path, name: str) -> RunSettings:
    cfg = VfdaConfig.model_validate(TINY)  # fault injection: partition 1 crashes in round 1
    feds = tuple(parse_federation_id(f) for f in ("fedavg-base-s0", "fedavg-vfda-s0"))
    return RunSettings(config=cfg, data_dir=data, out_dir=tmp_path / name, federations=feds)


def test_in_process_runs_agree_across_repeats_and_lanes_and_report_client_crashes(device_check, tiny_data, tmp_path):
    one = device_check.run_on("cpu", _settings(tmp_path, tiny_data, "a"), lanes=1)
    again = device_check.run_on("cpu", _settings(tmp_path, tiny_data, "b"), lanes=1)
    two_lanes = device_check.run_on("cpu", _settings(tmp_path, tiny_data, "c"), lanes=2)
    assert set(one["federations"]) == {"fedavg-base-s0", "fedavg-vfda-s0"}
    for run in (again, two_lanes):
        assert device_check.max_dice_gap(one, run) == 0.0
        assert {f: r["train_loss_last_round"] for f, r in run["federations"].items()} == \
               {f: r["train_loss_last_round"] for f, r in one["federations"].items()}
    for fid, rec in one["federations"].items():
        assert rec["aggregated_rounds"] == 2 and set(rec["heldin_dice"]) == {"A", "B", "C"}
        assert set(rec["heldout_dice"]) == {"E"} and all(0.0 < d <= 1.0 for d in rec["heldin_dice"].values())
        hist = json.loads((tmp_path / "a" / "federations" / fid / "history.json").read_text())
        r1 = hist["rounds"][0]
        assert len(r1["failures"]) == 1 and "crashes in round 1 on purpose" in r1["failures"][0]["reason"]
        assert len(r1["train"]) == 2 and r1["aggregated"]


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
