"""The warm-up cost benchmark: fresh-process measurements of the first chunk, split by part."""
from __future__ import annotations

import json

import pytest

from tests.components.har.conftest import tiny_rgb_models
from tests.conftest import load_script


def _bench():
    return load_script("benchmarks/har/warmup_cost.py")


def test_measures_each_mode_in_a_fresh_process(tmp_path):
    models = tiny_rgb_models(tmp_path / "models", ["walk_left", "wave"])
    out = tmp_path / "warmup.json"
    assert _bench().main(["--models", str(models), "--source", "rgb", "--reps", "1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["mode"] for r in rows] == ["cold", "preimported"]
    for r in rows:
        assert set(r["parts_ms"]) == {"rgb", "head"}                 # RGB only: no motion model
        assert r["first_chunk_ms"] >= sum(r["parts_ms"].values()) > 0 and r["second_chunk_ms"] > 0
    assert "import_ms" in rows[1] and "import_ms" not in rows[0]


@pytest.mark.parametrize("argv, message", [
    (["--source", "raft"], "--source 'raft': expected one of"),
    (["--modes", "cold", "hot"], "--modes ['hot']: unknown"),
    (["--reps", "0"], "--reps 0 / --threads 1: expected at least 1 each"),
])
def test_bad_arguments_are_named(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        _bench().main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_models_are_an_error_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "out.json"
    assert _bench().main(["--models", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert "no heads/imfe.pt; run `dvc repro har_evaluate` first" in capsys.readouterr().err
    assert not out.exists()
