"""The commands the READMEs and docs show name things that exist: ``python -m flows`` papers, stages and
options, ``dvc repro`` / ``dvc exp run`` stages of ``dvc.yaml``, benchmark scripts and the options their
parsers define. (Whether a documented stage command agrees with the data stage is checked in
``tests/flows/test_cli.py``; the benchmark scripts' handling of bad arguments in
``tests/benchmarks/test_cli_checks.py``.)"""
from __future__ import annotations

import re

import pytest
import yaml

from flows import PAPERS, REPORT
from tests.conftest import REPO

DOCS = [REPO / "README.md", *sorted(REPO.glob("docs/*.md")), *sorted(REPO.glob("components/*/README.md"))]
#: where a shown command ends: a code span's closing backtick, the line's end or a shell separator
_END = r"[^`\n;&|#)]*"


def _commands(pattern: str) -> list[tuple[str, list[str], list[str]]]:
    """(document, the command's tokens, the tokens after ``pattern``) for every command the docs show;
    continued shell lines are joined first. Placeholders (``<paper>``) and elisions (``...``) stay as
    tokens for the caller."""
    found = []
    for doc in DOCS:
        text = re.sub(r"\\\n\s*", " ", doc.read_text(encoding="utf-8"))
        for m in re.finditer(f"{pattern}({_END})", text):
            found.append((str(doc.relative_to(REPO)), m.group(0).split(), m.group(1).split()))
    return found


def _placeholder(token: str) -> bool:
    return "<" in token or "..." in token


def test_the_docs_show_commands_of_every_kind():
    """The patterns below still find what they check (a reworded doc must not make them vacuous)."""
    assert len(_commands(r"python -m flows\b")) >= 20
    assert len(_commands(r"dvc (?:repro|exp run)\b")) >= 20
    assert len(_commands(r"benchmarks/[\w/]+\.py\b")) >= 40


def test_documented_flow_commands_name_existing_papers_stages_and_options():
    options = {"--set": True, "--profile": True, "--params": True, "-h": False, "--help": False}
    wrong = []
    for doc, shown, rest in _commands(r"python -m flows\b"):
        positional = []
        i = 0
        while i < len(rest):
            token = rest[i]
            if token.startswith("-") and not _placeholder(token):
                if token.split("=")[0] not in options:
                    wrong.append((doc, " ".join(shown), f"option {token}"))
                i += 2 if options.get(token, False) else 1
                continue
            positional.append(token)
            i += 1
        if not positional or _placeholder(positional[0]):
            continue
        paper = positional[0]
        if paper == "serve":
            continue
        entry = REPORT if paper == "report" else PAPERS.get(paper)
        if entry is None:
            wrong.append((doc, " ".join(shown), f"paper {paper!r}"))
        elif len(positional) > 1 and not _placeholder(positional[1]) and positional[1] not in (*entry.stages, "all"):
            wrong.append((doc, " ".join(shown), f"stage {positional[1]!r} (expected one of {entry.stages} or 'all')"))
    assert wrong == []


def test_documented_dvc_commands_name_stages_of_dvc_yaml():
    stages = set(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])
    valued = {"-S", "--set-param", "-n", "--name", "-j", "--jobs"}
    wrong = []
    for doc, shown, rest in _commands(r"dvc (?:repro|exp run)\b"):
        i = 0
        while i < len(rest):
            token = rest[i]
            if token.startswith("-"):
                i += 2 if token in valued else 1
                continue
            if not _placeholder(token) and token not in stages:
                wrong.append((doc, " ".join(shown), token))
            i += 1
    assert wrong == []


def test_documented_benchmark_commands_name_existing_scripts_and_their_options():
    """Every ``benchmarks/...py`` the docs name exists, and each ``--option`` shown after it is one its
    parser defines (an ``add_argument("--option"`` in the script)."""
    wrong = []
    for doc, shown, rest in _commands(r"benchmarks/[\w/]+\.py\b"):
        script = REPO / shown[0]
        if not script.is_file():
            wrong.append((doc, shown[0], "no such script"))
            continue
        defined = set(re.findall(r"add_argument\(\s*[\"'](--[\w-]+)[\"']", script.read_text(encoding="utf-8")))
        for token in rest:
            option = token.split("=")[0]
            if re.fullmatch(r"--[a-z][\w-]*", option) and option not in defined:
                wrong.append((doc, shown[0], f"option {option} (defined: {sorted(defined)})"))
    assert wrong == []


@pytest.mark.parametrize("bad, expected", [
    ("python -m flows har teachr", "stage 'teachr'"),
    ("python -m flows hra data", "paper 'hra'"),
    ("python -m flows har data --sett x=1", "option --sett"),
])
def test_the_flow_command_check_catches_a_wrong_name(monkeypatch, tmp_path, bad, expected):
    """The checks can fail: a doc with a misspelt paper, stage or option is reported."""
    doc = tmp_path / "README.md"
    doc.write_text(f"Run `{bad}` first.\n")
    monkeypatch.setattr(f"{__name__}.DOCS", [doc])
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)   # documents are named relative to it
    with pytest.raises(AssertionError, match=re.escape(expected)):
        test_documented_flow_commands_name_existing_papers_stages_and_options()


def test_the_dvc_and_benchmark_checks_catch_a_wrong_name(monkeypatch, tmp_path):
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "b.py").write_text('p.add_argument("--out")\n')
    (tmp_path / "dvc.yaml").write_text("stages:\n  har_data: {cmd: x}\n")
    doc = tmp_path / "README.md"
    monkeypatch.setattr(f"{__name__}.DOCS", [doc])
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    doc.write_text("```bash\ndvc repro har_dta\n```\n")
    with pytest.raises(AssertionError, match="har_dta"):
        test_documented_dvc_commands_name_stages_of_dvc_yaml()
    doc.write_text("`dvc repro -f har_data` and `python benchmarks/b.py --out x.json --seeds 3`\n")
    test_documented_dvc_commands_name_stages_of_dvc_yaml()
    with pytest.raises(AssertionError, match="option --seeds"):
        test_documented_benchmark_commands_name_existing_scripts_and_their_options()
    doc.write_text("`python benchmarks/c.py`\n")
    with pytest.raises(AssertionError, match="no such script"):
        test_documented_benchmark_commands_name_existing_scripts_and_their_options()
