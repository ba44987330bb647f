"""Atomic writes: every output appears whole or not at all.

A stage writes into a temporary sibling (``.<name>.tmp-<random>``) and renames it into place only when
it has finished, so an exception, a bad parameter or a killed process never leaves a half-written
file or folder where DVC or the next stage would take it for a result. The two primitives,
:func:`atomic_dir` and :func:`atomic_file`, live in :mod:`components.io` (components write their own
outputs with them and import nothing from ``tasks/``); this module re-exports them.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from components.base import InputError
from components.io import atomic_dir, atomic_file

__all__ = ["atomic_dir", "atomic_file", "write_json", "write_text", "read_json"]


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically. NaN/inf are rejected (DVC cannot read them)."""
    with atomic_file(path) as fh:
        json.dump(obj, fh, indent=2, sort_keys=False, allow_nan=False)
        fh.write("\n")
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_file(path) as fh:
        fh.write(text)
    return Path(path)


def read_json(path: str | os.PathLike[str]) -> Any:
    """The JSON value stored in ``path``. A missing, unreadable or malformed file is an
    :class:`~components.base.InputError` (a ``ValueError``) naming the file and what is expected."""
    path = Path(path)
    if not path.is_file():
        found = "a folder, not a file" if path.is_dir() else "file not found"
        raise InputError(f"{path}: {found}; expected the JSON file the producing stage writes (run that "
                         f"stage first)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err}); expected the JSON file the producing stage "
                         f"writes (run that stage again)") from None
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}); "
                         f"expected the JSON file the producing stage writes (run that stage again)") from None
    except OSError as err:
        raise InputError(f"{path}: cannot be read ({err.strerror or err}); expected a readable JSON file") from None
