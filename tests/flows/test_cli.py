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
