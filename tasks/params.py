"""Load a paper's ``params.yaml`` section and validate it through the component's config model."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

from components.base import ComponentConfig, ConfigError, resolve_section
from tasks.paths import repo_root

C = TypeVar("C", bound=ComponentConfig)


def load_params(path: Path | None = None) -> dict[str, Any]:
    path = path or repo_root() / "params.yaml"
    if not path.is_file():
        raise ConfigError(f"params file {path} not found; expected a YAML file with one section per paper")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise ConfigError(f"params file {path}: not UTF-8 text (byte {err.object[err.start]:#04x} at offset "
                          f"{err.start}); expected a UTF-8 YAML file with one section per paper") from None
    except OSError as err:
        raise ConfigError(f"params file {path}: cannot be read ({err.strerror or err}); expected a readable "
                          f"YAML file with one section per paper") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of paper sections, got {type(data).__name__}")
    return data


def load_config(model: type[C], overrides: Mapping[str, Any] | None = None,
                params_path: Path | None = None) -> C:
    """The validated config of ``model.paper`` from ``params.yaml`` plus explicit overrides."""
    params = load_params(params_path)
    section = params.get(model.paper)
    if section is not None and not isinstance(section, dict):
        raise ConfigError(f"{model.paper}: expected a mapping of parameters, got {section!r}")
    return resolve_section(model, section, overrides)  # type: ignore[return-value]
