"""benchmarks/vfda/results_table.py: renders the committed metrics; bad input exits 2 with the file named."""
from __future__ import annotations

import importlib.util
import re
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "benchmarks" / "vfda" / "results_table.py"


@pytest.fixture(scope="module")
def table():
    spec = importlib.util.spec_from_file_location("vfda_results_table", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_committed_metrics_render_as_a_table(table, capsys):
    metrics = json.loads((ROOT / "metrics" / "vfda.json").read_text())
    assert table.main([str(ROOT / "metrics" / "vfda.json")]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    n_variants = sum(len(v) for v in metrics["dice"].values())
    assert len([r for r in rows if "held-in" not in r and "Δ" not in r]) >= n_variants


@pytest.mark.parametrize("content,match", [
    (None, r"missing"),
    ("{not json", r"not valid JSON"),
    ("[1, 2]", r"a JSON list, not an object"),
    ('{"vfda_rule": "x"}', r"keys \['seeds'"),
    (json.dumps({k: 1 for k in ("vfda_rule", "seeds", "rounds", "profile", "gain", "timing")} | {"dice": [1]}),
     r"'dice' has no strategy with variants"),
    (json.dumps({k: 1 for k in ("vfda_rule", "seeds", "rounds", "profile", "gain", "timing")} | {"dice": {}}),
     r"'dice' has no strategy with variants"),
])
def test_bad_metrics_exit_2_naming_the_file(table, tmp_path, capsys, content, match):
    path = tmp_path / "vfda.json"
    if content is not None:
        path.write_text(content)
    assert table.main([str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err
    assert re.search(match, err), err


def test_the_gain_table_shows_the_interval_when_the_metrics_have_one(table, tmp_path, capsys):
    metrics = json.loads((ROOT / "metrics" / "vfda.json").read_text())
    g = metrics["gain"]["fedavg"]["vfda"]
    g["held_in_ci90"], g["held_out_ci90"] = [-0.0123, 0.0045], [0.001, 0.02]
    for key in ("held_in_ci90", "held_out_ci90"):
        metrics["gain"]["fedprox"]["vfda"].pop(key, None)             # an older record: no interval
    (tmp_path / "vfda.json").write_text(json.dumps(metrics))
    assert table.main([str(tmp_path / "vfda.json")]) == 0
    out = capsys.readouterr().out
    row = [r for r in out.splitlines() if r.startswith("| FedAvg + VFDA")][-1]          # the gain table's row
    assert "| -1.23 to +0.45 |" in row and "| +0.10 to +2.00 |" in row
    row = [r for r in out.splitlines() if r.startswith("| FedProx + VFDA")][-1]
    assert row.count("| — |") == 2
    g["held_in_ci90"] = [0.1]                                          # malformed: the entry is named
    (tmp_path / "vfda.json").write_text(json.dumps(metrics))
    assert table.main([str(tmp_path / "vfda.json")]) == 2
    assert "gain.fedavg.vfda is malformed" in capsys.readouterr().err
