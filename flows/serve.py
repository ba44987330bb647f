"""``python -m flows serve``: serve every paper's flow as Prefect deployments.

Reads ``infra/prefect/deployments.yaml`` (which papers, which profiles, tags, concurrency) and calls
``prefect.serve`` — a long-running process that polls the Prefect server at ``PREFECT_API_URL`` and
executes the runs created with ``prefect deployment run '<paper>/<profile>'``. ``make serve`` starts
a local server first (``infra/scripts/serve.sh``).
"""
from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from flows import PAPERS, REPORT
from tasks.paths import repo_root


def load_spec(path: Path | None = None) -> dict[str, Any]:
    path = path or repo_root() / "infra" / "prefect" / "deployments.yaml"
    spec = yaml.safe_load(path.read_text()) or {}
    papers = spec.get("papers", "all")
    if papers != "all":
        unknown = [p for p in papers if p not in PAPERS]
        if unknown:
            raise ValueError(f"{path}: papers={unknown}: unknown; expected 'all' or keys of {sorted(PAPERS)}")
    return spec


def build_deployments(spec: dict[str, Any]) -> list[Any]:
    """RunnerDeployments for every (paper, profile) of the spec, plus the report."""
    papers = list(PAPERS) if spec.get("papers", "all") == "all" else list(spec["papers"])
    tags = list(spec.get("tags", []))
    deployments = []
    for paper in papers:
        module = importlib.import_module(PAPERS[paper].module)
        for profile, prof in (spec.get("profiles") or {"quick": {}}).items():
            deployments.append(module.FLOW.to_deployment(
                name=profile, parameters=dict(prof.get("parameters") or {}),
                description=f"{PAPERS[paper].title} — {prof.get('description', profile)}",
                tags=[*tags, f"paper:{paper}", f"profile:{profile}"]))
    if spec.get("report", True):
        module = importlib.import_module(REPORT.module)
        deployments.append(module.FLOW.to_deployment(name="default", tags=[*tags, "report"],
                                                     description=REPORT.title))
    return deployments


def main(arg: str | None = None) -> int:
    from prefect import serve

    if arg not in (None, "all"):
        print(f"error: serve takes no stage (got {arg!r}); edit infra/prefect/deployments.yaml to choose papers",
              file=sys.stderr)
        return 2
    if not os.environ.get("PREFECT_API_URL"):
        print("error: PREFECT_API_URL is not set; start a server first (`make serve` does both)", file=sys.stderr)
        return 2
    spec = load_spec()
    deployments = build_deployments(spec)
    names = ", ".join(f"'{d.flow_name}/{d.name}'" for d in deployments)
    print(f"serving {len(deployments)} deployments: {names}", flush=True)
    serve(*deployments, limit=int(spec.get("limit", 1)))
    return 0
