"""DVC access errors are user errors: they name the checkout or file and what is expected."""
from __future__ import annotations

import pytest

from components.base import InputError
from tasks.dvc import DataUnavailable, data_hash, ensure_stage, lock_entry


def test_missing_dvc_yaml_is_an_input_error(tmp_path, monkeypatch):
    """DataUnavailable escaped ``python -m flows`` as a traceback; it is an InputError now (exit 2, one line)
    and still a RuntimeError for callers that caught that."""
    monkeypatch.delenv("DVC_STAGE", raising=False)
    with pytest.raises(DataUnavailable) as err:
        ensure_stage("har_data", tmp_path)
    assert isinstance(err.value, InputError) and isinstance(err.value, RuntimeError)
    assert f"{tmp_path}: no dvc.yaml" in str(err.value) and "expected a paperworks checkout" in str(err.value)


@pytest.mark.parametrize("text, needle", [("stages: [unclosed\n", "not valid YAML"),
                                          ("- a list\n", "list without a 'stages' mapping")])
def test_malformed_dvc_lock_names_the_file(tmp_path, text, needle):
    (tmp_path / "dvc.lock").write_text(text)
    with pytest.raises(DataUnavailable, match=rf"dvc\.lock: .*{needle}"):
        lock_entry("har_data", tmp_path)
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages:\n  har_data:\n    outs:\n    - path: data/har\n      md5: abc\n")
    assert data_hash("har_data", tmp_path) == "abc"
