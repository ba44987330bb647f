"""Shared configuration base for every paper component.

A component's parameters are a pydantic model (``components/<name>/config.py``) that subclasses
:class:`ComponentConfig`. The model is the schema of the component's ``params.yaml`` section and of
the ``config`` parameter of its Prefect deployment.

Profiles
--------
The model's defaults are the **quick profile** (small scale, a few minutes on a 2-core CPU); the
committed ``params.yaml`` section repeats them so that DVC tracks every value. Setting
``profile: full`` (``dvc exp run -S <paper>.profile=full``, ``--profile full`` on the CLI, or
``-p config='{"profile": "full"}'`` on a deployment) overlays
``components/<name>/profiles/full.yaml`` on top; values given explicitly on the command line or in
the deployment parameters still win. See :func:`resolve_section`.

This module imports only pydantic and yaml: components stay free of prefect/mlflow/dvc.
"""
from __future__ import annotations

import copy
import inspect
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, model_validator

Profile = Literal["quick", "full"]

#: a seed: a non-negative integer, strictly (``true`` is not the seed 1, ``1.5`` not the seed 1)
Seed = Annotated[StrictInt, Field(ge=0)]

#: the longest timeout a config may give (one week, in seconds): a longer one would overflow the
#: ``timedelta``/``threading`` waits that receive it (``inf`` and ``1e300`` did) and means "never" anyway
MAX_TIMEOUT_S = 7 * 24 * 3600.0


class ConfigError(ValueError):
    """A parameter is wrong: the message names the key, the value given and what is expected."""


class InputError(ValueError):
    """Input data is wrong (missing or unreadable file, malformed record, wrong shape): the message
    names the file or field, what was found and what is expected."""


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` updated recursively by ``override`` (neither input is modified)."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class ComponentConfig(BaseModel):
    """Base of every component's parameter model.

    Unknown keys are rejected (``extra="forbid"``) so that a typo in ``params.yaml`` stops the stage
    instead of silently running with a default; ``inf`` and ``NaN`` are rejected for every float
    (``allow_inf_nan=False``; each component's section models say the same).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    #: name of the ``params.yaml`` section (set by each subclass)
    paper: ClassVar[str] = ""

    profile: Profile = Field("quick", description="quick = laptop CPU minutes; full = paper scale")
    seed: int = Field(0, ge=0, strict=True, description="master seed; every random draw derives from it")

    @classmethod
    def profile_path(cls, profile: str) -> Path:
        """``components/<name>/profiles/<profile>.yaml`` next to the module defining the model."""
        return Path(inspect.getfile(cls)).resolve().parent / "profiles" / f"{profile}.yaml"

    @classmethod
    def profile_overrides(cls, profile: str) -> dict[str, Any]:
        if profile == "quick":
            return {}
        path = cls.profile_path(profile)
        if not path.is_file():
            raise ConfigError(
                f"{cls.paper}.profile={profile!r}: no profile file {path}; expected one of "
                f"'quick' or a profile with a file under {path.parent}"
            )
        from components.io import read_yaml_mapping   # here: components.io imports this module

        return read_yaml_mapping(path, f"the parameters of {cls.paper}.profile={profile!r}, by section")

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, data: Any) -> Any:
        # Explicit values win over the profile file; the profile file wins over the defaults.
        if isinstance(data, Mapping) and data.get("profile", "quick") != "quick":
            overrides = cls.profile_overrides(str(data["profile"]))
            return deep_merge(overrides, data)
        return data

    def to_flat_dict(self) -> dict[str, Any]:
        """Dotted-key view (``train.epochs``) for experiment trackers."""
        flat: dict[str, Any] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, Mapping):
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            else:
                flat[prefix] = value

        walk("", self.model_dump(mode="json"))
        return flat


def _model_error_reason(e: Mapping[str, Any]) -> str | None:
    """The reason of an error raised by a validator on a whole (sub-)model (a ``model_validator``),
    whose input is the section's mapping: printing that mapping would bury the reason. None for any
    other error."""
    if e["type"] not in ("value_error", "assertion_error") or not isinstance(e.get("input"), (Mapping, BaseModel)):
        return None
    err = (e.get("ctx") or {}).get("error")
    if err is not None and str(err):
        return str(err)
    msg = str(e["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            return msg[len(prefix):]
    return msg


def format_validation_error(paper: str, err: ValidationError) -> str:
    """One line per problem: ``<paper>.<key>: got <value>; expected <what>``; for a check across
    several keys of a section, ``<paper>.<section>: <reason>`` (the reason names the keys)."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if p != "__root__")
        key = f"{paper}.{loc}" if loc else paper
        value = e.get("input")
        reason = _model_error_reason(e)
        if reason is not None:
            lines.append(f"{key}: {reason}")
        elif e["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown parameter (value {value!r}); check the spelling against the "
                         f"component's config model")
        elif e["type"] == "missing":
            lines.append(f"{key}: missing; {e['msg'].lower()}")
        else:
            lines.append(f"{key}: got {value!r}; expected {e['msg'][0].lower() + e['msg'][1:]}")
    return "invalid parameters:\n  " + "\n  ".join(lines)


def resolve_section(model: type[ComponentConfig], section: Mapping[str, Any] | None,
                    overrides: Mapping[str, Any] | None = None) -> ComponentConfig:
    """Build a validated config from a ``params.yaml`` section plus explicit overrides.

    Precedence (later wins): model defaults (quick) < ``params.yaml`` section < profile file
    (when ``profile`` is not ``quick``) < ``overrides``. Raises :class:`ConfigError` naming every
    bad key, its value and what is expected.
    """
    section = dict(section or {})
    overrides = dict(overrides or {})
    profile = overrides.get("profile", section.get("profile", "quick"))
    data = section
    try:
        if profile != "quick":
            data = deep_merge(section, model.profile_overrides(str(profile)))
        data = deep_merge(data, overrides)
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(model.paper, err)) from None


def parse_override(item: str) -> dict[str, Any]:
    """``a.b.c=value`` -> ``{"a": {"b": {"c": value}}}`` with the value parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=3")
    key, raw = item.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r}: expected a dotted key such as train.epochs")
    try:
        value: Any = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as err:
        problem = "; ".join(str(x) for x in (getattr(err, "context", None), getattr(err, "problem", None)) if x) \
            or type(err).__name__
        raise ConfigError(f"--set {item!r}: value {raw!r} is not valid YAML ({problem}); expected KEY=VALUE with a "
                          f"YAML value, e.g. train.epochs=3, sizes=[1, 2] or name='a string' (quote text "
                          f"that starts with [, {{, *, & or !)") from None
    if isinstance(value, str):  # YAML 1.1 reads "1e-2" as a string; users mean the number
        try:
            value = float(value) if value.strip().lower() not in ("nan", "inf", "-inf", "infinity") else value
        except ValueError:
            pass
    for part in reversed(key.split(".")):
        value = {part: value}
    return value
