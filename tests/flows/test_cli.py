"""The CLI: fast help (no heavy imports), registry consistent with the flow modules, bad input exits 2
with a clear message and writes nothing."""
from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows import PAPERS, REPORT
from flows.__main__ import main

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "prefect", "mlflow", "dvc", "monai", "flwr", "tvm", "deepspeed", "diffusers", "cv2")


def test_help_lists_every_paper_and_imports_nothing_heavy():
    code = ("import sys\nfrom flows.__main__ import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout
    for paper, entry in PAPERS.items():
        assert paper in out.stdout and " ".join(entry.stages) in out.stdout


@pytest.mark.parametrize("paper", sorted(PAPERS))
def test_registry_matches_flow_module(paper):
    module = importlib.import_module(PAPERS[paper].module)
    assert tuple(module.STAGES) == PAPERS[paper].stages
    assert module.CONFIG.paper == paper
    assert module.FLOW.name == paper


def test_report_module_registered():
    assert tuple(importlib.import_module(REPORT.module).STAGES) == REPORT.stages


@pytest.mark.parametrize("paper", sorted(PAPERS))
def test_params_yaml_section_equals_quick_defaults(paper):
    module = importlib.import_module(PAPERS[paper].module)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert params[paper] == module.CONFIG().model_dump(mode="json"), (
        f"params.yaml[{paper}] differs from {module.CONFIG.__name__}() defaults (the quick profile)")


@pytest.mark.parametrize("paper", sorted(PAPERS))
def test_full_profile_validates(paper):
    module = importlib.import_module(PAPERS[paper].module)
    cfg = module.CONFIG.model_validate({"profile": "full"})
    assert cfg.profile == "full"


@pytest.mark.parametrize("paper", sorted(PAPERS))
def test_bad_parameter_exits_2_and_writes_nothing(paper, paperworks_root, capsys):
    stage = PAPERS[paper].stages[0]
    assert main([paper, stage, "--set", "no_such_key=1"]) == 2
    err = capsys.readouterr().err
    assert f"{paper}.no_such_key" in err and "unknown parameter" in err
    assert main([paper, stage, "--set", "seed=-3"]) == 2
    assert f"{paper}.seed: got -3" in capsys.readouterr().err
    assert sorted(p.name for p in paperworks_root.iterdir()) == ["components", "params.yaml"]


def test_unknown_paper_and_stage(capsys):
    assert main(["nopaper", "data"]) == 2
    assert "paper 'nopaper'" in capsys.readouterr().err
    paper = sorted(PAPERS)[0]
    assert main([paper, "nostage"]) == 2
    assert "stage 'nostage'" in capsys.readouterr().err


def test_malformed_params_file_is_a_clear_error(paperworks_root, capsys):
    (paperworks_root / "params.yaml").write_text("har: [unclosed\n")
    paper = sorted(PAPERS)[0]
    assert main([paper, PAPERS[paper].stages[0]]) == 2
    assert "not valid YAML" in capsys.readouterr().err


BENCH_PARAMS = sorted((REPO / "benchmarks").glob("*/*.yaml"))


@pytest.mark.parametrize("path", BENCH_PARAMS, ids=[p.relative_to(REPO).as_posix() for p in BENCH_PARAMS])
def test_benchmark_params_files_validate(path):
    """The params files READMEs tell users to pass with ``--params`` still validate, and each
    differs from the quick profile (else the documented experiment would silently be the quick run)."""
    from tasks.params import load_config

    sections = yaml.safe_load(path.read_text())
    assert sections and set(sections) <= set(PAPERS), f"{path}: expected paper sections, got {sorted(sections)}"
    for paper in sections:
        module = importlib.import_module(PAPERS[paper].module)
        cfg = load_config(module.CONFIG, params_path=path)
        assert cfg.model_dump() != module.CONFIG().model_dump()


@pytest.mark.parametrize("item", ["seed=[1", "seed=*x"])
def test_set_value_that_is_not_yaml_exits_2(paperworks_root, capsys, item):
    """Was a yaml traceback, exit 1."""
    assert main(["skrull", "simulate", "--set", item]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --set {item!r}: value {item.split('=', 1)[1]!r} is not valid YAML")
    assert "expected KEY=VALUE with a YAML value" in err


def test_params_file_that_is_not_utf8_exits_2(paperworks_root, capsys):
    """Was a UnicodeDecodeError traceback, exit 1."""
    bad = paperworks_root / "latin1.yaml"
    bad.write_bytes("har:\n  data: {classes: [caf\xe9]}\n".encode("latin-1"))
    assert main(["har", "data", "--params", str(bad)]) == 2
    assert f"error: params file {bad}: not UTF-8 text (byte 0xe9" in capsys.readouterr().err


@pytest.mark.parametrize("argv, given", [
    (["report", "build", "--set", "seed=1"], "--set seed=1"),
    (["report", "--profile", "full"], "--profile full"),
    (["report", "build", "--params", "p.yaml"], "--params p.yaml"),
    (["serve", "--set", "seed=1", "--profile", "quick"], "--set seed=1 --profile quick"),
    (["serve", "--params", "p.yaml"], "--params p.yaml"),
])
def test_report_and_serve_refuse_parameter_options(paperworks_root, capsys, argv, given):
    """They used to ignore --set/--profile/--params silently."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"error: {argv[0]} takes no parameters (got {given}); expected `python -m flows {argv[0]}` alone" in err
    assert not (paperworks_root / "reports").exists()


@pytest.mark.parametrize("text, needle", [
    ("papers: [bogus]\n", "papers=['bogus']: unknown; expected 'all' or keys of"),
    ("papers: har\n", "papers='har'; expected 'all' or a list of paper keys"),
    ("papers: [har\n", "not valid YAML"),
    ("- papers\n", "a YAML list; expected a mapping"),
    ("profiles: [quick]\n", "profiles=['quick']; expected a mapping"),
    ("limit: 0\n", "limit=0; expected an integer >= 1"),
    ("paper: all\n", "unknown keys ['paper']"),
    # the deployments' flow parameters are checked too: a served deployment with bad ones fails every run
    ("papers: [har]\nprofiles: {x: {parameters: {confg: {seed: 1}}}}\n",
     "profiles.x.parameters: unknown flow parameters ['confg']; expected only config and stages"),
    ("papers: [har]\nprofiles: {x: {parameters: {config: {seed: -1}}}}\n",
     "profiles.x.parameters.config for har: invalid parameters:\n  har.seed: got -1"),
    ("papers: [har]\nprofiles: {x: {parameters: {config: {profil: full}}}}\n",
     "profiles.x.parameters.config for har: invalid parameters:\n  har.profil"),
    ("papers: [skrull]\nprofiles: {x: {parameters: {config: {train: {cp: 4}}}}}\n",
     "profiles.x.parameters.config for skrull:"),
    ("papers: [har]\nprofiles: {x: {parameters: {config: full}}}\n",
     "profiles.x.parameters.config='full'; expected a mapping of har parameters"),
    ("papers: [har]\nprofiles: {x: {parameters: {stages: [teacher, trian]}}}\n",
     "profiles.x.parameters.stages=['teacher', 'trian'] for har; expected null (every stage) or a non-empty list"),
    ("papers: [har]\nprofiles: {x: {parameters: {stages: []}}}\n", "profiles.x.parameters.stages=[] for har"),
])
def test_serve_with_a_bad_deployments_file_exits_2(paperworks_root, capsys, monkeypatch, text, needle):
    """Was a ValueError / YAMLError traceback (checked before a Prefect server is needed)."""
    spec = paperworks_root / "infra" / "prefect" / "deployments.yaml"
    spec.parent.mkdir(parents=True)
    spec.write_text(text)
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")   # nothing is contacted: the spec fails first
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {spec}: ") and needle in err


def test_a_profile_without_a_body_is_served_with_no_parameters(paperworks_root):
    """``profiles: {quick: }`` passed the check, then build_deployments crashed on None.get."""
    from flows.serve import build_deployments, load_spec

    spec = paperworks_root / "deployments.yaml"
    spec.write_text("papers: [har]\nprofiles: {quick: }\nreport: false\n")
    (dep,) = build_deployments(load_spec(spec))
    assert (dep.name, dep.parameters) == ("quick", {})


def test_repo_deployments_file_is_valid():
    from flows.serve import load_spec

    assert load_spec(REPO / "infra" / "prefect" / "deployments.yaml")["papers"] == "all"


def test_user_error_inside_a_flow_is_one_clean_line(prefect_harness, paperworks_root, tmp_path):
    """A ConfigError/InputError raised inside a stage used to print ~75 lines of Prefect tracebacks (task run
    failed, flow run failed) before the ``error:`` line; the CLI filters the traceback out of those records.
    The child uses the session's test server (an ephemeral one of its own had 20 s to start on a loaded
    2-core machine, and kept its database in ~/.prefect)."""
    import os

    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PAPERWORKS_ROOT": str(paperworks_root), "DVC_STAGE": "har_teacher",
           "PREFECT_API_URL": str(PREFECT_API_URL.value()), "PREFECT_HOME": str(tmp_path / "prefect")}
    proc = subprocess.run([sys.executable, "-m", "flows", "har", "teacher"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    manifest = paperworks_root / "data" / "har" / "manifest.json"
    assert f"\nerror: {manifest}: manifest not found; run the har data stage first" in proc.stderr
    written = [p for d in ("data", "models", "results", "metrics") for p in (paperworks_root / d).rglob("*")
               if p.is_file()]
    assert written == []                                             # nothing half-written


def test_traceback_filter_keeps_real_crashes():
    import logging

    from components.base import ConfigError, InputError
    from flows.__main__ import UserErrorTracebackFilter
    from tasks.dvc import DataUnavailable
    from tasks.launch import LaunchError, LaunchTimeout

    def record(exc: BaseException) -> logging.LogRecord:
        try:
            raise exc
        except BaseException:
            return logging.getLogger("prefect.task_runs").makeRecord(
                "prefect.task_runs", logging.ERROR, __file__, 1, "Task run failed", (), sys.exc_info())

    for user in (ConfigError("x=1: expected 2"), InputError("f.json: missing"), DataUnavailable("no data")):
        rec = record(user)
        assert UserErrorTracebackFilter().filter(rec) and rec.exc_info is None
        assert "Traceback" not in logging.Formatter().format(rec)
    for crash in (RuntimeError("boom"), LaunchError("rank 1 failed: ZeroDivisionError"), KeyError("k"),
                  LaunchTimeout("timed out (or a rank hung)")):
        rec = record(crash)
        assert UserErrorTracebackFilter().filter(rec) and rec.exc_info is not None
        assert "Traceback" in logging.Formatter().format(rec)


def _documented_stage_commands() -> list[tuple[str, str]]:
    """``python -m flows <paper> <stage> ...`` lines of the READMEs and docs that run one stage other than
    the data stage in this checkout (not ``all``, not in a scratch copy with ``DVC_STAGE`` set)."""
    import re

    found = []
    for doc in [REPO / "README.md", *sorted(REPO.glob("docs/*.md")), *sorted(REPO.glob("components/*/README.md"))]:
        text = re.sub(r"\\\n\s*", " ", doc.read_text(encoding="utf-8"))   # join continued shell lines
        for line in text.splitlines():
            m = re.search(r"python -m flows (\w+) (\w+)([^`]*)", line)
            if not m or m.group(1) not in PAPERS or m.group(2) in ("all", "data") or "DVC_STAGE" in line:
                continue
            if "<" in m.group(3) or "..." in m.group(3):         # a placeholder or an elided command
                continue
            found.append((f"{doc.relative_to(REPO)}", m.group(0).strip()))
    return found


@pytest.mark.parametrize("doc, command", _documented_stage_commands())
def test_documented_single_stage_commands_agree_with_the_data_stage(doc, command):
    """A stage run without the data stage is refused when its config differs from params.yaml where the
    data stage is built from it (tasks.pipeline.check_data_config); the commands the docs show must pass
    that check (a command that changes the seed, the profile or the data section must run ``all``)."""
    import shlex

    from components.base import deep_merge, parse_override
    from tasks.params import load_config
    from tasks.pipeline import check_data_config

    argv = shlex.split(command, comments=True)[3:]
    paper, rest = argv[0], argv[2:]
    overrides, params = {}, None
    while rest:
        flag, value, rest = rest[0], rest[1], rest[2:]
        if flag == "--set":
            overrides = deep_merge(overrides, parse_override(value))
        elif flag == "--profile":
            overrides["profile"] = value
        elif flag == "--params":
            params = REPO / value
        else:
            pytest.fail(f"{doc}: {command}: unexpected option {flag}")
    module = importlib.import_module(PAPERS[paper].module)
    config = load_config(module.CONFIG, overrides, params)
    check_data_config(paper, config, f"{paper}_data", REPO)


def test_command_line_pauses_the_collector_only_for_start_up():
    """``python -m flows`` (``flows.__main__._run``) pauses Python's cyclic garbage collector while it imports,
    resumes it with the imported objects frozen before the flow runs, and freezes what is alive at exit;
    ``main`` keeps its return code."""
    code = """
import gc, json
import flows.__main__ as cli
seen = {}
def fake_main():
    seen['during_start_up'] = gc.isenabled()
    cli._startup_done()
    seen['in_flow'], seen['frozen'] = gc.isenabled(), gc.get_freeze_count()
    gc.disable(); gc.enable()
    cli._startup_done()                      # once only: a second call changes nothing
    seen['frozen_again'] = gc.get_freeze_count()
    return 3
cli.main = fake_main
seen['rc'] = cli._run()
seen['enabled_after'], seen['frozen_at_exit'] = gc.isenabled(), gc.get_freeze_count()
print(json.dumps(seen))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    import json

    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["during_start_up"] is False and seen["in_flow"] is True and seen["rc"] == 3
    assert seen["frozen"] > 0 and seen["frozen_again"] == seen["frozen"]
    assert seen["enabled_after"] is True and seen["frozen_at_exit"] >= seen["frozen"]


def test_main_in_process_leaves_the_collector_alone(capsys):
    import gc

    from flows.__main__ import _startup_done

    frozen = gc.get_freeze_count()
    _startup_done()
    assert main(["nope", "data"]) == 2
    assert gc.isenabled() and gc.get_freeze_count() == frozen
    assert "paper 'nope'" in capsys.readouterr().err
