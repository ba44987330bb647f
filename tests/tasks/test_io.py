"""Atomic outputs: whole or nothing."""
from __future__ import annotations

import json
import math

import pytest

from components.base import InputError
from tasks.io import atomic_dir, read_json, write_json


def test_atomic_dir_replaces_only_on_success(tmp_path):
    out = tmp_path / "data" / "paper"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("1")
    assert (out / "a.txt").read_text() == "1"
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "b.txt").write_text("half")
            raise RuntimeError("stage failed")
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]       # old result intact
    assert [p.name for p in out.parent.iterdir()] == ["paper"]      # no temporary left behind
    with atomic_dir(out) as tmp:
        (tmp / "c.txt").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["c.txt"]       # replaced, not merged


def test_write_json_rejects_nan_and_leaves_nothing(tmp_path):
    path = tmp_path / "metrics" / "p.json"
    with pytest.raises(ValueError):
        write_json(path, {"x": math.nan})
    assert not path.exists() and not path.parent.exists()     # nor the folder it created for it
    write_json(path, {"x": 1.5})
    assert json.loads(path.read_text()) == {"x": 1.5}


def test_read_json_errors_name_the_file(tmp_path):
    """User errors (InputError: ``python -m flows`` prints them, exit 2), no FileNotFoundError or bare
    ValueError escaping as a traceback; InputError is still a ValueError for callers that catch that."""
    with pytest.raises(InputError, match=r"missing\.json: file not found; expected the JSON file the producing stage"):
        read_json(tmp_path / "missing.json")
    with pytest.raises(InputError, match=r"a folder, not a file"):
        read_json(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(InputError, match=r"bad\.json: not valid JSON \(.*\); expected"):
        read_json(bad)
    bad.write_bytes(b'{"x": "\xff"}')
    with pytest.raises(InputError, match=r"bad\.json: not UTF-8 text \(byte 0xff at offset 7\)"):
        read_json(bad)
    assert issubclass(InputError, ValueError)
