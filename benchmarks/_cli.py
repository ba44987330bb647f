"""Argument checks shared by the benchmark scripts (``benchmarks/<paper>/*.py``).

The ``argparse`` types below reject a bad value while the arguments are parsed, before anything heavy
is imported or run; argparse then prints ``error: argument --NAME: got 'VALUE'; expected ...`` and exits
with status 2. :func:`fail` is the matching report for a ``ConfigError`` / ``InputError`` raised by the
script's own work (exit status 2, no traceback). Only the standard library is imported here.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import math
import sys
from pathlib import Path
from typing import Any, Callable


def _int(text: str, ok: Callable[[int], bool], expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"got {text!r}; expected {expected}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"got {text!r}; expected {expected}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int(text, lambda v: v >= 1, "a positive integer (>= 1)")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int(text, lambda v: v >= 0, "an integer >= 0")


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (``nan``, ``inf``, 0 and negatives are refused)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"got {text!r}; expected a finite number > 0")
    return value


def output_file(text: str) -> Path:
    """argparse type: a file path to write, checked before the run: not a folder, and its folder either
    exists or can be created (no file in the way of a missing parent folder)."""
    path = Path(text)
    if not text or path.is_dir():
        raise argparse.ArgumentTypeError(f"got {text!r}, which is a folder; expected a file path to write (e.g. "
                                         f"{Path(text or '.') / 'result.json'})")
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"got {text!r}; {parent} is a file, not a folder; expected a file path "
                                         "whose parent is (or can be made) a folder")
    return path


def dataset_dir(marker: str, expected: str) -> Callable[[str], Path]:
    """argparse type: a folder holding the file ``marker`` (e.g. a dataset's manifest)."""
    def check(text: str) -> Path:
        path = Path(text)
        if not (path / marker).is_file():
            found = "not a folder" if path.exists() and not path.is_dir() else (
                f"no {marker} there" if path.is_dir() else "missing")
            raise argparse.ArgumentTypeError(f"got {text!r} ({found}); expected {expected}")
        return path
    check.__name__ = "dataset_dir"
    return check


def fail(err: BaseException) -> int:
    """Report a user error (``ConfigError``, ``InputError``) raised by the script's work: exit status 2."""
    print(f"error: {err}", file=sys.stderr)
    return 2


def papers_with_claims(repo: Path) -> list[str]:
    """The papers a claims-judging script accepts: each ``components/<paper>`` of ``repo`` with a
    ``claims.yaml``, sorted."""
    return sorted(d.name for d in (Path(repo) / "components").iterdir() if (d / "claims.yaml").is_file())


def params_config(model: Any, path: Path) -> Any:
    """The validated ``model.paper`` section of the params file ``path`` (``tasks.params.load_config``).
    A ``ConfigError`` (a missing file, bad YAML, a section that is not a mapping, an invalid value)
    names ``--params PATH`` unless it already starts with the path; report it with :func:`fail`."""
    from components.base import ConfigError
    from tasks.params import load_config

    if not Path(path).is_file():
        raise ConfigError(f"--params {path}: not found; expected a params.yaml with a '{model.paper}' section")
    try:
        return load_config(model, params_path=path)
    except ConfigError as err:
        raise ConfigError(str(err) if str(err).startswith(str(path)) else f"--params {path}: {err}") from None


def print_table(load: Callable[[], Any], render: Callable[[Any], None], where: str, expected: str) -> int:
    """A results table: ``load()`` the record, ``render(record)`` into a buffer, and print the table only
    once all of it rendered (exit status 0). An ``InputError`` from ``load`` (missing or malformed file)
    or a malformed entry met while rendering is reported as ``error: <where>: ...`` with exit status 2,
    with nothing printed on stdout."""
    from components.base import InputError

    table = io.StringIO()
    try:
        record = load()
        with contextlib.redirect_stdout(table):
            render(record)
    except InputError as err:
        return fail(err)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, ZeroDivisionError) as err:
        print(f"error: {where}: malformed entry ({type(err).__name__}: {err}); expected {expected}", file=sys.stderr)
        return 2
    sys.stdout.write(table.getvalue())
    return 0
