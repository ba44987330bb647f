"""Atomic writes for components (an output appears whole or not at all), the shared reader of
JSON records (:func:`read_json_record`) and of YAML mapping files (:func:`read_yaml_mapping`).

The same primitives back :mod:`tasks.io` (which re-exports them), so a component that writes its own
outputs (a CLI, a tuning run's folder) needs no import from ``tasks/`` (imports point one way:
flows -> tasks -> components). The temporary sibling is ``.<name>.tmp-<random>`` in the same folder,
renamed into place only when the block has finished: an exception, a bad parameter or a killed process
never leaves a half-written file or folder where a reader would take it for a result.

A stage that reads another stage's JSON record reads it with :func:`read_json_record`: one wording for a
missing file, bad JSON, a top level that is not an object and missing keys, raised as
:class:`~components.base.InputError`. A user's YAML file of settings (a profile, a params file, the
serving spec) is read with :func:`read_yaml_mapping`: the same wording, raised as
:class:`~components.base.ConfigError`.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import yaml

from components.base import ConfigError, InputError


def _umask() -> int:
    """The process's umask (read without changing it where /proc says it; Linux >= 4.7)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _make_parents(directory: Path) -> list[Path]:
    """``mkdir -p directory``; returns the folders it created, deepest first (for :func:`_remove_parents`)."""
    created, d = [], directory
    while not d.exists() and d.parent != d:
        created.append(d)
        d = d.parent
    directory.mkdir(parents=True, exist_ok=True)
    return created


def _remove_parents(created: list[Path]) -> None:
    """Remove the folders :func:`_make_parents` created, deepest first, while they are empty: a failed
    output leaves no empty ``results/<paper>`` behind, and a folder another output (or a nested atomic
    output still open) has put something in stays."""
    for d in created:
        try:
            d.rmdir()
        except OSError:
            return


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces ``path`` (old contents removed). On a
    failure the temporary folder and the parent folders this call created are removed."""
    path = Path(path)
    created = _make_parents(path.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_parents(created)
        raise
    os.chmod(tmp, 0o777 & ~_umask())   # mkdtemp makes it 0700; the output gets what mkdir would give
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], mode: str = "w") -> Iterator[Any]:
    """Open a temporary file for writing; on success it is renamed onto ``path``. On a failure the
    temporary file and the parent folders this call created are removed."""
    path = Path(path)
    created = _make_parents(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
        os.chmod(tmp, 0o666 & ~_umask())   # mkstemp makes it 0600; the output gets what open() would give
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        _remove_parents(created)
        raise


#: JSON's names for what :func:`json.loads` returns (for "a JSON list, not an object")
_JSON_TYPE = {list: "list", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


def read_json_record(path: str | os.PathLike[str], required: Iterable[str] = (), what: str = "") -> dict[str, Any]:
    """The JSON object in ``path``, which must hold the keys ``required``.

    :class:`~components.base.InputError` (a ``ValueError``) names the file, what was found there and what
    was expected when the file is missing or unreadable, is not valid JSON, holds something other than an
    object, or lacks keys: ``<path>: <found>; expected <what>, a JSON object with keys [...]``. ``what``
    says what the file is and how to make it (e.g. "the record the data stage writes (run `...`)").
    NaN and Infinity are read as floats, as :func:`json.loads` reads them; checks of the values
    (types, ranges, finiteness) are the caller's.
    """
    path, required = Path(path), list(required)
    shape = f"a JSON object with keys {required}" if required else "a JSON object"
    expected = f"{what}, {shape}" if what else shape
    if not path.is_file():
        found = "a folder, not a file" if path.is_dir() else "missing"
        raise InputError(f"{path}: {found}; expected {expected}")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise InputError(f"{path}: unreadable ({err}); expected {expected}") from None
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err}); expected {expected}") from None
    try:
        data = json.loads(text)
    except ValueError as err:
        raise InputError(f"{path}: not valid JSON ({err}); expected {expected}") from None
    if not isinstance(data, dict):
        found = _JSON_TYPE.get(type(data), type(data).__name__)
        raise InputError(f"{path}: a JSON {found}, not an object; expected {expected}")
    missing = [k for k in required if k not in data]
    if missing:
        keys = list(data)
        has = f"{keys[:12]}" if len(keys) <= 12 else f"{str(keys[:12])[:-1]}, ...]"
        raise InputError(f"{path}: keys {missing} missing (it has {has}); expected {expected}")
    return data


#: YAML's names for what :func:`yaml.safe_load` returns (for "a YAML list; expected a mapping: ...")
_YAML_TYPE = {list: "list", str: "string", int: "integer", float: "number", bool: "boolean"}


def _yaml_problem(err: yaml.YAMLError) -> str:
    """The parser's complaint on one line, with where it found it (its own message spans several lines)."""
    problem = "; ".join(str(x) for x in (getattr(err, "context", None), getattr(err, "problem", None)) if x)
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return (problem or str(err).splitlines()[0] or type(err).__name__) + where


def read_yaml_mapping(path: str | os.PathLike[str], what: str) -> dict[str, Any]:
    """The mapping at the top of the YAML file ``path`` (``{}`` for an empty file).

    :class:`~components.base.ConfigError` (a ``ValueError``) names the file, what was found there and
    what was expected when the file is missing (or a folder), unreadable, not UTF-8 text or not valid
    YAML (``<path>: <found>; expected <what>``), or holds something other than a mapping
    (``<path>: a YAML list; expected a mapping: <what>``). ``what`` says what the file is, e.g.
    "the serving spec (papers, profiles, report, tags, limit)". Checks of the keys and values are the
    caller's.
    """
    path = Path(path)
    if not path.is_file():
        found = "a folder, not a file" if path.is_dir() else "file not found"
        raise ConfigError(f"{path}: {found}; expected {what}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}); "
                          f"expected {what}") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror or err}); expected {what}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(err)}); expected {what}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a YAML {_YAML_TYPE.get(type(data), type(data).__name__)}; expected a mapping: "
                          f"{what}")
    return data
