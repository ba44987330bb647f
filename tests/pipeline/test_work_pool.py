"""The work-pool deployment path of ``infra/prefect/prefect.yaml`` (the commands of its header), on
loopback: ``prefect work-pool create``, ``prefect deploy --all --prefect-file ...`` from the checkout,
a ``prefect worker start`` whose ``PAPERWORKS_ROOT`` is a separate checkout, ``prefect deployment run``;
the run shows up in that checkout's MLflow store. The server and its environment are the fixture of
test_deployment.py (the served path)."""
from __future__ import annotations

import re
import subprocess

import yaml

from flows import PAPERS
from flows.serve import _check_parameters
from tests.conftest import mlflow_client
from tests.pipeline import test_deployment as served

REPO = served.REPO
BIN = served.BIN
PREFECT_YAML = REPO / "infra" / "prefect" / "prefect.yaml"
POOL = "paperworks-process"

deployment_env = served.deployment_env         # the fixture: a Prefect server on a free port, its env, a root


def _load_flow(entrypoint: str):
    from prefect.flows import load_flow_from_entrypoint

    path, func = entrypoint.split(":")
    return load_flow_from_entrypoint(f"{REPO / path}:{func}")


def test_prefect_yaml_loads_as_prefect_deploy_reads_it_and_its_parameters_validate():
    from prefect.cli.deploy._config import _load_deploy_configs_and_actions
    from rich.console import Console

    console = Console(record=True, width=200)
    configs, actions = _load_deploy_configs_and_actions(PREFECT_YAML, console=console)
    assert console.export_text() == "", f"prefect deploy would skip {PREFECT_YAML}:\n{console.export_text()}"
    raw = yaml.safe_load(PREFECT_YAML.read_text())
    assert len(configs) == len(raw["deployments"]) == 2 * len(PAPERS) + 1
    assert actions["pull"] == [{"prefect.deployments.steps.set_working_directory":
                                {"directory": "{{ $PAPERWORKS_ROOT }}"}}]
    assert not actions["build"] and not actions["push"], "the work-pool path builds and pushes nothing"
    names = set()
    for i, dep in enumerate(configs):
        where = f"deployments[{i}] ({dep['entrypoint']}, {dep['name']})"
        assert dep["work_pool"]["name"] == POOL, where
        # without a `schedules` key, `prefect deploy` in a terminal asks "configure schedules?" per deployment
        assert dep.get("schedules") == [], f"{where}: no `schedules: []`"
        flow = _load_flow(dep["entrypoint"])
        names.add(f"{flow.name}/{dep['name']}")
        params = dep.get("parameters") or {}
        flow.validate_parameters(params)                    # names and types, as Prefect checks a run's
        if flow.name in PAPERS:
            _check_parameters(PREFECT_YAML, f"{where}.parameters", flow.name, params)
    assert len(names) == len(configs), "two deployments share a '<flow>/<deployment>' name"


def _prefect(env, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "prefect"), *args], env=env, cwd=REPO, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


def test_work_pool_deploy_worker_run_records_to_mlflow(deployment_env, tmp_path):
    root, env, procs = deployment_env
    # the worker's checkout: the code of this one, its own outputs (data/, metrics/, reports/, mlflow/)
    for code in ("flows", "tasks", "components"):
        (root / code).symlink_to(REPO / code, target_is_directory=True)

    created = _prefect(env, "work-pool", "create", POOL, "--type", "process")
    assert created.returncode == 0, created.stdout + created.stderr
    # PREFECT_CLI_PROMPT=true: prompts as in a terminal; a question would read EOF from stdin and fail
    deployed = _prefect({**env, "PREFECT_CLI_PROMPT": "true"},
                        "deploy", "--all", "--prefect-file", "infra/prefect/prefect.yaml")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    listing = _prefect(env, "deployment", "ls").stdout
    expected = [f"{paper}/{profile}" for paper in PAPERS for profile in ("quick", "full")] + ["report/default"]
    assert all(name in listing for name in expected), listing

    worker_log = tmp_path / "worker.log"      # a file, not a pipe nobody reads until the end (64 KiB would block)
    with open(worker_log, "w") as out:
        worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--limit", "1"],
                                  env=env, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=subprocess.STDOUT, text=True)
    procs.append(worker)
    run = _prefect(env, "deployment", "run", "report/default", "-p", 'papers=["fixture"]',
                   "--watch", "--watch-timeout", "150", timeout=200)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Completed" in run.stdout
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", run.stdout).group(1)

    assert "fixture" in (root / "reports" / "README.md").read_text()
    client = mlflow_client(root)
    runs = client.search_runs([client.get_experiment_by_name("report").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["prefect_flow_run_id"] == flow_run_id
    served._stop(worker)
    log = worker_log.read_text()
    assert "set_working_directory' completed successfully" in log, log
