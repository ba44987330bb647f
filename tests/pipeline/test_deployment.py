"""The deployment path on loopback, as README documents it: a Prefect server, every paper served as
a deployment (`python -m flows serve`), and `prefect deployment run '<flow>/<deployment>' -p ...`
from another process; the run shows up in MLflow."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from flows import PAPERS
from tasks.launch import free_port
from tests.conftest import mlflow_client

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _wait(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: process exited with {proc.returncode}")
        time.sleep(0.5)
    raise AssertionError(f"{what}: not ready within {timeout:.0f} s")


def _healthy(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).read()
        return True
    except OSError:
        return False


def _stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.stdout.read() if proc.stdout else ""


@pytest.fixture
def deployment_env(tmp_path):
    root = tmp_path / "root"
    (root / "infra" / "prefect").mkdir(parents=True)
    spec = (REPO / "infra" / "prefect" / "deployments.yaml").read_text()
    (root / "infra" / "prefect" / "deployments.yaml").write_text(spec)
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    (root / "metrics").mkdir()
    (root / "metrics" / "fixture.json").write_text(json.dumps({"paper": "fixture", "profile": "quick", "x": 1.0}))
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PAPERWORKS_ROOT": str(root),
           "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("DVC_STAGE", None)
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    procs = [server]
    try:
        _wait(lambda: _healthy(f"{env['PREFECT_API_URL']}/health"), 180, "prefect server", server)
        yield root, env, procs
    finally:
        for p in reversed(procs):
            _stop(p)


def _deployments(env) -> str:
    out = subprocess.run([str(BIN / "prefect"), "deployment", "ls"], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    return out.stdout


def test_served_deployments_run_and_record_to_mlflow(deployment_env):
    root, env, procs = deployment_env
    serve = subprocess.Popen([sys.executable, "-m", "flows", "serve"], env=env, cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    procs.append(serve)
    expected = [f"{paper}/{profile}" for paper in PAPERS for profile in ("quick", "full")] + ["report/default"]

    def all_registered() -> bool:
        listing = _deployments(env)
        return all(name in listing for name in expected)

    _wait(all_registered, 240, "deployments registered", serve)

    run = subprocess.run([str(BIN / "prefect"), "deployment", "run", "report/default",
                          "-p", 'papers=["fixture"]', "--watch", "--watch-timeout", "300"],
                         env=env, cwd=REPO, capture_output=True, text=True, timeout=360)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Completed" in run.stdout
    assert "fixture" in (root / "reports" / "README.md").read_text()
    client = mlflow_client(root)
    exp = client.get_experiment_by_name("report")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["prefect_flow_run_id"] not in ("", "none")
    assert runs[0].data.metrics["claims_total"] == 0

    # a real paper deployment: the har data stage on a tiny config, recorded as an MLflow parent run
    from tests.flows.test_har_flow import TINY

    tiny = {"data": TINY["data"], "torch_threads": 1}
    run = subprocess.run([str(BIN / "prefect"), "deployment", "run", "har/quick",
                          "-p", f"config={json.dumps(tiny)}", "-p", 'stages=["data"]',
                          "--watch", "--watch-timeout", "300"],
                         env=env, cwd=REPO, capture_output=True, text=True, timeout=360)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Completed" in run.stdout
    manifest = list((root / "data" / "har").rglob("manifest.json"))
    assert manifest, "the har data stage wrote no manifest under data/har"
    exp = client.get_experiment_by_name("har")
    runs = client.search_runs([exp.experiment_id])
    assert any(r.info.status == "FINISHED" and r.data.tags.get("stages") == "data" for r in runs)

    bad = subprocess.run([str(BIN / "prefect"), "deployment", "run", f"{sorted(PAPERS)[0]}/quick",
                          "-p", 'config={"seed": -1}'], env=env, cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode != 0, "a config that fails the pydantic model must be refused"
    assert "seed" in (bad.stdout + bad.stderr)
