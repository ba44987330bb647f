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


def _checkout(tmp_path):
    import shutil
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(repo / name, tmp_path / name)
    return tmp_path


def test_a_run_reading_the_data_must_have_the_data_stages_parameters(tmp_path, monkeypatch):
    """A run without the data stage reads data/<paper> built from params.yaml: a config that differs in
    the data stage's parameters (its params in dvc.yaml, the profile included) is refused, naming the
    key and both values; a difference elsewhere is fine."""
    from components.base import ConfigError
    from components.har.config import HarConfig
    from tasks.params import load_config
    from tasks.pipeline import check_data_config

    monkeypatch.delenv("DVC_STAGE", raising=False)
    root = _checkout(tmp_path)
    load = lambda **o: load_config(HarConfig, o, params_path=root / "params.yaml")  # noqa: E731
    check_data_config("har", load(), "har_data", root)
    check_data_config("har", load(imfe={"epochs": 3}, streams={"epochs": 2}), "har_data", root)
    with pytest.raises(ConfigError, match=r"har\.data = \{.*'height': 64.* in this run, .*'height': 48.* in params"):
        check_data_config("har", load(data={"height": 64}), "har_data", root)
    with pytest.raises(ConfigError, match=r"har\.profile = 'full' in this run, 'quick' in params\.yaml.*stages 'all'"):
        check_data_config("har", load(profile="full"), "har_data", root)
    with pytest.raises(ConfigError, match=r"har\.seed = 3 in this run, 0 in params\.yaml"):
        check_data_config("har", load(seed=3), "har_data", root)
    monkeypatch.setenv("DVC_STAGE", "har_teacher")           # inside dvc repro: the config is params.yaml's
    check_data_config("har", load(seed=3), "har_data", root)


def test_run_paper_refuses_a_config_the_data_was_not_built_for_before_reproducing_it(tmp_path, monkeypatch):
    """The data check comes before ensure_stage, which would otherwise rebuild data/<paper> from
    params.yaml (overwriting data an earlier --profile full run made) and train on it."""
    from components.base import ConfigError
    from components.har.config import HarConfig
    from tasks import dvc as dvc_tasks
    from tasks.params import load_config
    from tasks.pipeline import run_paper

    monkeypatch.delenv("DVC_STAGE", raising=False)
    root = _checkout(tmp_path)
    called = []
    monkeypatch.setattr(dvc_tasks, "ensure_stage", lambda *a, **k: called.append(a) or "up-to-date")
    cfg = load_config(HarConfig, {"profile": "full"}, params_path=root / "params.yaml")
    fns = {"data": lambda ctx: None, "teacher": lambda ctx: None}
    with pytest.raises(ConfigError, match="har.profile"):
        run_paper("har", cfg, ["teacher"], fns, root=root)
    assert called == []
    with pytest.raises(ConfigError, match=r"stages=\[\]: no stage to run"):
        run_paper("har", cfg, [], fns, root=root)
