"""The flow-shift ablation benchmark's command line: bad input stops before any training."""
from __future__ import annotations

import pytest

from tests.conftest import load_script


def _bench():
    return load_script("benchmarks/har/flow_shift_ablation.py")


@pytest.mark.parametrize("argv, message", [
    (["--methods", "tvl1", "raft"], "--methods ['raft']: unknown"),
    (["--seeds", "0", "0"], "--seeds [0, 0]: expected distinct seeds"),
    (["--methods", "dis", "dis"], "--methods ['dis', 'dis']: expected distinct methods"),
])
def test_bad_arguments_are_named(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        _bench().main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_teacher_outputs_are_an_error_not_a_traceback(tmp_path, capsys, monkeypatch):
    bench = _bench()
    monkeypatch.setattr(bench, "ROOT", tmp_path)  # a checkout without data/har or results/har
    params = tmp_path / "params.yaml"
    params.write_text("har: {}\n")
    out = tmp_path / "out.json"
    assert bench.main(["--params", str(params), "--methods", "tvl1", "--out", str(out)]) == 2
    assert "error:" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("text, message", [
    ("har: [1, 2]\n", "har"),
    ("har: {streams: {batch_size: -1}}\n", "batch_size"),
    ("har: {streams: [\n", "not valid YAML"),
    ("- 1\n", "expected a mapping"),
])
def test_bad_params_files_are_named_not_a_traceback(text, message, tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(text)
    assert _bench().main(["--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert f"--params {params}" in err and message in err


def test_a_missing_params_file_is_named(capsys):
    assert _bench().main(["--params", "nope.yaml"]) == 2
    assert "error: --params nope.yaml: not found; expected a params.yaml with a 'har' section" in capsys.readouterr().err


def test_out_must_not_be_a_folder(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _bench().main(["--out", str(tmp_path)])
    assert "is a folder" in capsys.readouterr().err
