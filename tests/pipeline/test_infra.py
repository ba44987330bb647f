"""infra/ files stay in step with the code: every paper's flow is deployable from prefect.yaml and
served by deployments.yaml; the env files the scripts source parse."""
from __future__ import annotations

import importlib
import subprocess
from pathlib import Path

import yaml

from flows import PAPERS
from flows.serve import load_spec

REPO = Path(__file__).resolve().parents[2]


def test_prefect_yaml_entrypoints_resolve_for_every_paper():
    spec = yaml.safe_load((REPO / "infra" / "prefect" / "prefect.yaml").read_text())
    seen = {}
    for dep in spec["deployments"]:
        path, func = dep["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, func)
        seen.setdefault(flow.name, set()).add(dep["name"])
        if dep["name"] == "full":
            assert dep["parameters"] == {"config": {"profile": "full"}}
    for paper in PAPERS:
        assert seen.get(paper) == {"quick", "full"}, f"prefect.yaml lacks quick/full deployments of {paper}"
    assert seen["report"] == {"default"}


def test_serve_spec_covers_every_paper():
    spec = load_spec()
    assert spec["papers"] == "all" and set(spec["profiles"]) == {"quick", "full"}


def test_scripts_are_valid_bash():
    for script in (REPO / "infra" / "scripts").glob("*.sh"):
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0, script
