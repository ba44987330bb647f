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

from flows import PAPERS, REPORT
from tasks.paths import repo_root


def load_spec(path: Path | None = None) -> dict[str, Any]:
    """The serving spec (``infra/prefect/deployments.yaml``), checked: a :class:`ConfigError` names the
    file, the key, the value found and what is expected."""
    from components.base import ConfigError
    from components.io import read_yaml_mapping

    path = path or repo_root() / "infra" / "prefect" / "deployments.yaml"
    spec = read_yaml_mapping(path, "the serving spec (papers, profiles, report, tags, limit)")
    unknown_keys = sorted(set(spec) - {"papers", "profiles", "report", "tags", "limit"}, key=str)
    if unknown_keys:
        raise ConfigError(f"{path}: unknown keys {unknown_keys}; expected only papers, profiles, report, tags, limit")
    papers = spec.get("papers", "all")
    if papers != "all":
        if not isinstance(papers, list) or not all(isinstance(p, str) for p in papers):
            raise ConfigError(f"{path}: papers={papers!r}; expected 'all' or a list of paper keys from {sorted(PAPERS)}")
        unknown = [p for p in papers if p not in PAPERS]
        if unknown:
            raise ConfigError(f"{path}: papers={unknown}: unknown; expected 'all' or keys of {sorted(PAPERS)}")
    profiles = spec.get("profiles")
    if profiles is not None:
        if not isinstance(profiles, dict):
            raise ConfigError(f"{path}: profiles={profiles!r}; expected a mapping of deployment name to "
                              f"{{parameters: {{...}}, description: ...}}")
        for name, prof in profiles.items():
            if prof is not None and not isinstance(prof, dict):
                raise ConfigError(f"{path}: profiles.{name}={prof!r}; expected a mapping with parameters and description")
            params = (prof or {}).get("parameters")
            if params is not None and not isinstance(params, dict):
                raise ConfigError(f"{path}: profiles.{name}.parameters={params!r}; expected a mapping of flow "
                                  f"parameters, e.g. {{config: {{profile: full}}}}")
        selected = list(PAPERS) if papers == "all" else papers
        for name, prof in profiles.items():
            for paper in selected:
                _check_parameters(path, f"profiles.{name}.parameters", paper, (prof or {}).get("parameters") or {})
    tags = spec.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ConfigError(f"{path}: tags={tags!r}; expected a list of strings")
    if not isinstance(spec.get("report", True), bool):
        raise ConfigError(f"{path}: report={spec['report']!r}; expected true or false")
    limit = spec.get("limit", 1)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigError(f"{path}: limit={limit!r}; expected an integer >= 1 (flow runs executed at once)")
    return spec


def _check_parameters(path: Path, where: str, paper: str, params: dict[str, Any]) -> None:
    """The flow parameters of one deployment: only ``config`` and ``stages``; ``config`` resolves through the
    paper's model (profile file and cross-field rules included); ``stages`` is a non-empty list of the
    paper's stages. Checked here, as a served deployment with bad parameters fails every run it gets."""
    from components.base import ConfigError
    from tasks.pipeline import flow_config

    unknown = sorted(set(params) - {"config", "stages"}, key=str)
    if unknown:
        raise ConfigError(f"{path}: {where}: unknown flow parameters {unknown}; expected only config and stages")
    config = params.get("config")
    if config is not None:
        if not isinstance(config, dict):
            raise ConfigError(f"{path}: {where}.config={config!r}; expected a mapping of {paper} parameters "
                              f"(e.g. {{profile: full}}) or null (params.yaml)")
        module = importlib.import_module(PAPERS[paper].module)
        try:
            flow_config(module.CONFIG, config)
        except ConfigError as err:
            raise ConfigError(f"{path}: {where}.config for {paper}: {err}") from None
    stages = params.get("stages")
    known = list(PAPERS[paper].stages)
    if stages is not None and (not isinstance(stages, list) or not stages
                               or any(not isinstance(x, str) or x not in known for x in stages)):
        raise ConfigError(f"{path}: {where}.stages={stages!r} for {paper}; expected null (every stage) or a "
                          f"non-empty list of {known}")


def build_deployments(spec: dict[str, Any]) -> list[Any]:
    """RunnerDeployments for every (paper, profile) of the spec, plus the report."""
    papers = list(PAPERS) if spec.get("papers", "all") == "all" else list(spec["papers"])
    tags = list(spec.get("tags", []))
    deployments = []
    for paper in papers:
        module = importlib.import_module(PAPERS[paper].module)
        for profile, prof in (spec.get("profiles") or {"quick": {}}).items():
            prof = prof or {}                                   # a profile with no body: no parameters
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
    """Serve the deployments of ``infra/prefect/deployments.yaml``; a bad spec raises :class:`ConfigError`
    (``python -m flows`` prints it, exit 2) before anything is served."""
    if arg not in (None, "all"):
        print(f"error: serve takes no stage (got {arg!r}); edit infra/prefect/deployments.yaml to choose papers",
              file=sys.stderr)
        return 2
    spec = load_spec()
    if not os.environ.get("PREFECT_API_URL"):
        print("error: PREFECT_API_URL is not set; start a server first (`make serve` does both)", file=sys.stderr)
        return 2
    from prefect import serve

    deployments = build_deployments(spec)
    names = ", ".join(f"'{d.flow_name}/{d.name}'" for d in deployments)
    print(f"serving {len(deployments)} deployments: {names}", flush=True)
    serve(*deployments, limit=int(spec.get("limit", 1)))
    return 0
