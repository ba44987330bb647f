"""benchmarks/vfda/global_variance_rounds.py: reads federation histories, names bad input."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.conftest import load_script


def _bench():
    return load_script("benchmarks/vfda/global_variance_rounds.py")


def _history(folder: Path, name: str, values: list[float], rule: str = "product") -> None:
    (folder / name).mkdir(parents=True)
    rounds = [{"round": r + 1, "global_var_mean": {"model.0.1.global_var_mu": v, "model.0.1.global_var_sigma": 2 * v}}
              for r, v in enumerate(values)]
    (folder / name / "history.json").write_text(json.dumps({"federation": name, "vfda_rule": rule, "rounds": rounds}))


def test_ranges_split_round_one_from_the_later_rounds(tmp_path, capsys):
    _history(tmp_path, "fedavg-vfda-s0", [0.04, 0.01, 0.09])
    _history(tmp_path, "fedprox-vfda-s0", [0.16, 0.0025, 0.25])
    (tmp_path / "fedavg-base-s0").mkdir()  # no VFDA: no global variance recorded
    (tmp_path / "fedavg-base-s0" / "history.json").write_text(json.dumps({"federation": "fedavg-base-s0",
                                                                          "rounds": [{"round": 1}]}))
    out = tmp_path / "out.json"
    assert _bench().main(["--federations", str(tmp_path), "--out", str(out)]) == 0
    rows = {r["stat"]: r for r in json.loads(out.read_text())["product"]}
    mu = rows["mu"]
    assert (mu["federations"], mu["rounds"]) == (2, 3)
    assert (mu["round1_min"], mu["round1_max"]) == (0.04, 0.16)
    assert (mu["later_min"], mu["later_max"]) == (0.0025, 0.25)
    assert math.isclose(mu["later_factor_max"], 0.5) and math.isclose(mu["later_factor_min"], 0.05)
    assert rows["sigma"]["later_max"] == 0.5
    assert "| 1 | mu | 0.0400-0.1600 | 0.0025-0.2500 | 0.050-0.500 |" in capsys.readouterr().out


def test_bad_input_is_named(tmp_path, capsys):
    bench = _bench()
    with pytest.raises(SystemExit):
        bench.main(["--federations", str(tmp_path / "nope")])
    assert "not a folder" in capsys.readouterr().err
    assert bench.main(["--federations", str(tmp_path)]) == 2
    assert "no history.json with a recorded global variance" in capsys.readouterr().err
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "history.json").write_text("{not json")
    out = tmp_path / "out.json"
    assert bench.main(["--federations", str(tmp_path), "--out", str(out)]) == 2
    assert "malformed federation history" in capsys.readouterr().err and not out.exists()
