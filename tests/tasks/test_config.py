"""Config validation: unknown keys, wrong types, out-of-range values, profiles, CLI overrides."""
from __future__ import annotations

import re
from typing import ClassVar

import pytest
from pydantic import BaseModel, ConfigDict, Field, model_validator

from components.base import ComponentConfig, ConfigError, parse_override, resolve_section


class TrainCfg(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(2, ge=1)
    lr: float = Field(1e-3, gt=0)


class ToyConfig(ComponentConfig):
    paper: ClassVar[str] = "toy"
    train: TrainCfg = TrainCfg()
    mode: str = "a"


@pytest.fixture
def toy_profiles(tmp_path, monkeypatch):
    (tmp_path / "full.yaml").write_text("train:\n  epochs: 50\nmode: b\n")
    monkeypatch.setattr(ToyConfig, "profile_path", classmethod(lambda cls, p: tmp_path / f"{p}.yaml"))
    return tmp_path


def test_defaults_are_quick_profile():
    cfg = resolve_section(ToyConfig, {})
    assert cfg.profile == "quick" and cfg.train.epochs == 2 and cfg.seed == 0


def test_unknown_key_names_the_key_and_value():
    with pytest.raises(ConfigError) as err:
        resolve_section(ToyConfig, {"train": {"epochz": 3}})
    msg = str(err.value)
    assert "toy.train.epochz" in msg and "unknown parameter" in msg and "3" in msg


def test_wrong_type_names_key_value_and_expectation():
    with pytest.raises(ConfigError) as err:
        resolve_section(ToyConfig, {"train": {"lr": "fast"}})
    msg = str(err.value)
    assert "toy.train.lr" in msg and "'fast'" in msg and "valid number" in msg


def test_out_of_range_names_the_bound():
    with pytest.raises(ConfigError) as err:
        resolve_section(ToyConfig, {"train": {"epochs": 0}, "seed": -1})
    msg = str(err.value)
    assert "toy.train.epochs: got 0" in msg and "greater than or equal to 1" in msg
    assert "toy.seed: got -1" in msg


def test_full_profile_overlays_params_and_overrides_win(toy_profiles):
    cfg = resolve_section(ToyConfig, {"profile": "full", "train": {"epochs": 3, "lr": 0.5}})
    assert cfg.train.epochs == 50 and cfg.mode == "b"       # profile beats params.yaml values
    assert cfg.train.lr == 0.5                               # untouched by the profile
    cfg = resolve_section(ToyConfig, {"train": {"epochs": 3}}, {"profile": "full", "train": {"epochs": 7}})
    assert cfg.train.epochs == 7                             # explicit override beats the profile


def test_profile_in_model_validation_for_deployments(toy_profiles):
    # a Prefect deployment passes config={"profile": "full", ...}; the model applies the profile
    cfg = ToyConfig.model_validate({"profile": "full", "seed": 4})
    assert cfg.train.epochs == 50 and cfg.seed == 4


def test_unknown_profile_is_rejected():
    with pytest.raises(ConfigError) as err:
        resolve_section(ToyConfig, {"profile": "huge"})
    assert "toy.profile" in str(err.value) or "huge" in str(err.value)


@pytest.mark.parametrize("content, found", [
    (b"train: [epochs\n", r"not valid YAML \(while parsing a flow sequence; .* at line 2, column 1\); expected"),
    (b"- train\n", r"a YAML list; expected a mapping:"),
    (b"mode: caf\xe9\n", r"not UTF-8 text \(byte 0xe9 at offset 9\); expected"),
])
def test_a_malformed_profile_file_is_a_config_error_naming_it(toy_profiles, content, found):
    """components.io.read_yaml_mapping reads the profile file: the file, the problem and the parameter."""
    path = toy_profiles / "full.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: {found} the parameters of "
                                          rf"toy.profile='full', by section$"):
        resolve_section(ToyConfig, {"profile": "full"})


def test_an_empty_profile_file_changes_nothing(toy_profiles):
    (toy_profiles / "full.yaml").write_text("# nothing yet\n")
    assert resolve_section(ToyConfig, {"profile": "full"}).model_dump() == {**ToyConfig().model_dump(),
                                                                            "profile": "full"}


@pytest.mark.parametrize("item,expected", [
    ("train.epochs=3", {"train": {"epochs": 3}}),
    ("mode=b", {"mode": "b"}),
    ("train.lr=1e-2", {"train": {"lr": 0.01}}),
    ("sizes=[1, 2]", {"sizes": [1, 2]}),
])
def test_parse_override(item, expected):
    assert parse_override(item) == expected


@pytest.mark.parametrize("bad", ["epochs", "=3", "train..epochs=3"])
def test_parse_override_rejects_malformed(bad):
    with pytest.raises(ConfigError):
        parse_override(bad)


def test_flat_dict_for_trackers():
    flat = ToyConfig().to_flat_dict()
    assert flat["train.epochs"] == 2 and flat["profile"] == "quick"


@pytest.mark.parametrize("item, needle", [
    ("seed=[1", "--set 'seed=[1': value '[1' is not valid YAML"),
    ("seed=*x", "--set 'seed=*x': value '*x' is not valid YAML (found undefined alias 'x')"),
    ("train={epochs: 3", "--set 'train={epochs: 3': value '{epochs: 3' is not valid YAML"),
])
def test_parse_override_rejects_invalid_yaml_naming_the_item(item, needle):
    """Was a yaml traceback (exit 1) on the command line."""
    with pytest.raises(ConfigError) as err:
        parse_override(item)
    assert needle in str(err.value) and "expected KEY=VALUE with a YAML value" in str(err.value)


class FloatCfg(ComponentConfig):
    paper: ClassVar[str] = "floaty"
    rate: float = Field(1.0, gt=0)


@pytest.mark.parametrize("value", [float("inf"), float("nan"), float("-inf")])
def test_component_config_rejects_inf_and_nan(value):
    with pytest.raises(ConfigError, match=r"floaty\.rate: got (inf|nan|-inf); expected input should be a finite number"):
        resolve_section(FloatCfg, {}, {"rate": value})
    assert resolve_section(FloatCfg, {}, {"rate": 1e300}).rate == 1e300     # finite: only the bounds decide


@pytest.mark.parametrize("value", [True, 1.5, "3"])
def test_seed_is_a_strict_integer(value):
    with pytest.raises(ConfigError, match=rf"toy\.seed: got {value!r}; expected input should be a valid integer"):
        resolve_section(ToyConfig, {}, {"seed": value})
    assert resolve_section(ToyConfig, {}, {"seed": 3}).seed == 3


class CrossCfg(ComponentConfig):
    paper: ClassVar[str] = "cross"
    train: TrainCfg = TrainCfg()
    batches: int = 4

    @model_validator(mode="after")
    def _fits(self) -> "CrossCfg":
        if self.batches < self.train.epochs:
            raise ValueError(f"batches={self.batches} < train.epochs={self.train.epochs}; expected at least one "
                             f"batch per epoch")
        return self


def test_cross_field_error_prints_the_reason_not_the_section():
    """A model validator's error used to print the whole section (``cross: got {'profile': ...}``)."""
    with pytest.raises(ConfigError) as err:
        resolve_section(CrossCfg, {}, {"batches": 1})
    msg = str(err.value)
    assert msg == ("invalid parameters:\n  cross: batches=1 < train.epochs=2; expected at least one batch per epoch")
    assert "got {" not in msg and "'profile'" not in msg


def test_params_file_that_is_not_utf8_is_a_config_error(tmp_path):
    from tasks.params import load_params

    bad = tmp_path / "params.yaml"
    bad.write_bytes(b"har:\n  seed: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"params file .*params\.yaml: not UTF-8 text \(byte 0xff at offset 13\); "
                                          r"expected a UTF-8 YAML file"):
        load_params(bad)


def test_a_params_file_without_the_papers_section_is_refused(tmp_path):
    """``--params other.yaml`` holding only another paper's section ran the defaults silently."""
    from components.har.config import HarConfig
    from tasks.params import load_config

    other = tmp_path / "other.yaml"
    other.write_text("skrull:\n  seed: 1\n")
    with pytest.raises(ConfigError, match=r"params file .*other\.yaml: no 'har' section \(it has \['skrull'\]\); "
                                          r"expected a mapping with a 'har:' section"):
        load_config(HarConfig, None, other)
    other.write_text("har:\n  seed: 4\n")
    assert load_config(HarConfig, None, other).seed == 4
