"""components/io.py: the shared JSON-record reader (every bad input is an InputError naming the file,
what was found and what was expected), the YAML-mapping reader (the same for a settings file, as a
ConfigError) and the atomic output writers."""
from __future__ import annotations

import contextlib
import json
import math
import re

import pytest

from components.base import ConfigError, InputError
from components.io import atomic_dir, atomic_file, read_json_record, read_yaml_mapping

WHAT = "the record the data stage writes (run `python -m flows p data` first)"


def test_a_good_record_is_returned_whole(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"wall_s": 1.5, "extra": [1, 2], "nested": {"a": None}}))
    assert read_json_record(path, ("wall_s",), WHAT) == {"wall_s": 1.5, "extra": [1, 2], "nested": {"a": None}}
    assert read_json_record(str(path)) == {"wall_s": 1.5, "extra": [1, 2], "nested": {"a": None}}  # str path, no keys


def test_non_finite_numbers_are_read_as_floats_like_json_loads(tmp_path):
    path = tmp_path / "run.json"
    path.write_text('{"wall_s": NaN, "cpu_s": Infinity}')
    rec = read_json_record(path, ("wall_s",))
    assert math.isnan(rec["wall_s"]) and rec["cpu_s"] == math.inf


def test_a_missing_file_is_named_with_what_was_expected(tmp_path):
    path = tmp_path / "results" / "summary.json"
    with pytest.raises(InputError, match=r"summary.json: missing; expected the record the data stage writes "
                                         r"\(run `python -m flows p data` first\), a JSON object with keys "
                                         r"\['wall_s'\]$"):
        read_json_record(path, ("wall_s",), WHAT)
    path.mkdir(parents=True)
    with pytest.raises(InputError, match=r"summary.json: a folder, not a file; expected"):
        read_json_record(path, ("wall_s",), WHAT)


@pytest.mark.parametrize("text", ['{"wall_s": 1.0', "", "{'wall_s': 1.0}", '{"wall_s": 1.0} trailing'])
def test_malformed_json_is_named_with_the_parser_error(tmp_path, text):
    path = tmp_path / "summary.json"
    path.write_text(text)
    with pytest.raises(InputError, match=r"summary.json: not valid JSON \(.+ line 1 column \d+.*\); expected the "
                                         r"record the data stage writes"):
        read_json_record(path, ("wall_s",), WHAT)


def test_bytes_that_are_not_utf8_are_not_valid_json(tmp_path):
    path = tmp_path / "summary.json"
    path.write_bytes(b'{"wall_s": "\xff"}')
    with pytest.raises(InputError, match=r"summary.json: not valid JSON \(.*utf-8.*\); expected"):
        read_json_record(path, ("wall_s",), WHAT)


@pytest.mark.parametrize("value, found", [([1, 2], "list"), ("x", "string"), (3, "number"), (2.5, "number"),
                                          (True, "boolean"), (None, "null")])
def test_a_top_level_that_is_not_an_object_says_what_it_is(tmp_path, value, found):
    path = tmp_path / "ledger.json"
    path.write_text(json.dumps(value))
    with pytest.raises(InputError, match=rf"ledger.json: a JSON {found}, not an object; expected the record the "
                                         rf"data stage writes .*, a JSON object with keys \['trials'\]"):
        read_json_record(path, ("trials",), WHAT)


def test_missing_keys_are_listed_with_the_keys_found(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"policy": "gradient", "seed": 0}))
    with pytest.raises(InputError, match=r"run.json: keys \['fingerprint', 'wall_s'\] missing \(it has "
                                         r"\['policy', 'seed'\]\); expected .*, a JSON object with keys "
                                         r"\['fingerprint', 'seed', 'wall_s'\]$"):
        read_json_record(path, ("fingerprint", "seed", "wall_s"), WHAT)
    path.write_text(json.dumps({f"k{i}": i for i in range(20)}))  # a long key list is cut
    with pytest.raises(InputError, match=r"keys \['wall_s'\] missing \(it has \['k0', .*'k11', \.\.\.\]\)"):
        read_json_record(path, ["wall_s"], WHAT)


def test_without_what_the_expected_shape_alone_is_named(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("[]")
    with pytest.raises(InputError, match=r"x.json: a JSON list, not an object; expected a JSON object$"):
        read_json_record(path)


def test_the_error_is_a_value_error_for_callers_that_catch_those(tmp_path):
    with pytest.raises(ValueError):
        read_json_record(tmp_path / "missing.json")


def test_atomic_outputs_get_the_permissions_plain_mkdir_and_open_would_give(tmp_path):
    """mkdtemp/mkstemp make 0700/0600 temporaries; the committed outputs must not stay that private."""
    import os
    import stat

    from components.io import atomic_dir, atomic_file

    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "a.txt").write_text("x")
        with atomic_file(tmp_path / "f.json") as fh:
            fh.write("{}")
        os.umask(0o077)
        with atomic_file(tmp_path / "private.json") as fh:
            fh.write("{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "f.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o600


def test_atomic_dir_leaves_only_the_output_after_repeated_replaces(tmp_path):
    from components.io import atomic_dir

    out = tmp_path / "paper"
    for k in range(3):
        with atomic_dir(out) as tmp:
            (tmp / f"run{k}.txt").write_text(str(k))
    assert [p.name for p in tmp_path.iterdir()] == ["paper"]
    assert [p.name for p in out.iterdir()] == ["run2.txt"]


YAML_WHAT = "the serving spec (papers, tags)"


def test_a_yaml_mapping_is_returned_and_an_empty_file_is_an_empty_mapping(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("papers: [har]\ntags: []\n")
    assert read_yaml_mapping(path, YAML_WHAT) == {"papers": ["har"], "tags": []}
    for empty in ("", "# only a comment\n", "---\n"):
        path.write_text(empty)
        assert read_yaml_mapping(str(path), YAML_WHAT) == {}


@pytest.mark.parametrize("content, found", [
    (None, "file not found; expected"),
    (b"papers: [caf\xe9]\n", r"not UTF-8 text \(byte 0xe9 at offset 12\); expected"),
    (b"papers: [har\n", r"not valid YAML \(while parsing a flow sequence; expected ',' or '\]', but got "
                        r"'<stream end>' at line 2, column 1\); expected"),
    (b"papers: *undefined\n", r"not valid YAML \(found undefined alias 'undefined' at line 1, column 9\); expected"),
    (b"- papers\n- tags\n", "a YAML list; expected a mapping:"),
    (b"just text\n", "a YAML string; expected a mapping:"),
    (b"3\n", "a YAML integer; expected a mapping:"),
])
def test_a_bad_yaml_file_is_a_config_error_naming_the_file(tmp_path, content, found):
    """One line: the file, what was found and what was expected (the YAML parser's own message spans
    several lines)."""
    path = tmp_path / "infra" / "spec.yaml"
    if content is not None:
        path.parent.mkdir()
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: {found} the serving spec \(papers, tags\)$"):
        read_yaml_mapping(path, YAML_WHAT)


def test_a_folder_is_not_a_yaml_file(tmp_path):
    (tmp_path / "spec.yaml").mkdir()
    with pytest.raises(ConfigError, match=r"spec.yaml: a folder, not a file; expected the serving spec"):
        read_yaml_mapping(tmp_path / "spec.yaml", YAML_WHAT)


def _fail_inside(ctx):
    with pytest.raises(RuntimeError, match="stage failed"):
        with ctx:
            raise RuntimeError("stage failed")


def test_a_failed_atomic_output_removes_the_parent_folders_it_created(tmp_path):
    _fail_inside(atomic_dir(tmp_path / "results" / "paper" / "stage"))
    _fail_inside(atomic_file(tmp_path / "metrics" / "deep" / "paper.json"))
    assert list(tmp_path.iterdir()) == []


def test_nested_failed_outputs_leave_nothing_and_shared_parents_go_last(tmp_path):
    """As the HAR evaluate stage opens them: one ExitStack, several outputs under shared new parents."""
    with pytest.raises(RuntimeError):
        with contextlib.ExitStack() as stack:
            stack.enter_context(atomic_file(tmp_path / "metrics" / "har.json")).write("{}")
            stack.enter_context(atomic_dir(tmp_path / "models" / "har" / "heads"))
            stack.enter_context(atomic_dir(tmp_path / "results" / "har" / "evaluate"))
            stack.enter_context(atomic_dir(tmp_path / "results" / "har" / "plots"))
            raise RuntimeError("late failure")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_output_keeps_parents_that_existed_or_hold_other_outputs(tmp_path):
    (tmp_path / "results" / "other").mkdir(parents=True)         # existed before, and not empty
    (tmp_path / "plots").mkdir()                                 # existed before, empty
    _fail_inside(atomic_dir(tmp_path / "results" / "paper" / "stage"))
    _fail_inside(atomic_file(tmp_path / "plots" / "paper" / "fig.csv"))
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "plots", "results", "results/other"]


def test_a_successful_output_keeps_the_parents_it_created(tmp_path):
    with atomic_dir(tmp_path / "a" / "b" / "out") as d:
        (d / "x").write_text("1")
    with atomic_file(tmp_path / "c" / "d" / "f.txt") as fh:
        fh.write("2")
    assert (tmp_path / "a" / "b" / "out" / "x").read_text() == "1"
    assert (tmp_path / "c" / "d" / "f.txt").read_text() == "2"
