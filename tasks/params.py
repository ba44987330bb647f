"""Load a paper's ``params.yaml`` section and validate it through the component's config model."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, TypeVar

from components.base import ComponentConfig, ConfigError, resolve_section
from components.io import read_yaml_mapping
from tasks.paths import repo_root

C = TypeVar("C", bound=ComponentConfig)


def load_params(path: Path | None = None) -> dict[str, Any]:
    """The paper sections of ``params.yaml`` (or ``path``); ConfigError naming the file when it is missing,
    unreadable, not UTF-8, not valid YAML or not a mapping."""
    path = path or repo_root() / "params.yaml"
    try:
        return read_yaml_mapping(path, "a UTF-8 YAML file with one section per paper")
    except ConfigError as err:
        raise ConfigError(f"params file {err}") from None


def load_config(model: type[C], overrides: Mapping[str, Any] | None = None,
                params_path: Path | None = None) -> C:
    """The validated config of ``model.paper`` from ``params.yaml`` (or the file ``params_path``, which must
    have the paper's section) plus explicit overrides."""
    params = load_params(params_path)
    section = params.get(model.paper)
    if params_path is not None and model.paper not in params:
        # a file named on purpose (--params) without the paper's section would silently run the defaults
        raise ConfigError(f"params file {params_path}: no '{model.paper}' section (it has {sorted(params, key=str)}); "
                          f"expected a mapping with a '{model.paper}:' section, as params.yaml has")
    if section is not None and not isinstance(section, dict):
        raise ConfigError(f"{model.paper}: expected a mapping of parameters, got {section!r}")
    return resolve_section(model, section, overrides)  # type: ignore[return-value]
