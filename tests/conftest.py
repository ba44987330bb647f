"""Shared fixtures.

- ``prefect_harness`` (session): a throw-away Prefect API (temporary SQLite) for flow tests.
- ``paperworks_root`` : an isolated checkout root (``PAPERWORKS_ROOT``) with its own MLflow store,
  so flow tests write ``data/``, ``models/``, ``metrics/`` and ``mlflow/`` under ``tmp_path``.
- ``load_script(relative_path)``: a script of the repo (``benchmarks/...``) imported as a module.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parent.parent

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def load_script(relative_path: str) -> ModuleType:
    """Import a script of the repo (e.g. ``benchmarks/har/flow_shift_ablation.py``) as a fresh module."""
    path = REPO / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def paperworks_root(tmp_path, monkeypatch):
    """An empty checkout root holding copies of params.yaml and every claims.yaml."""
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    for claims in REPO.glob("components/*/claims.yaml"):
        dest = root / claims.relative_to(REPO)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(claims, dest)
    monkeypatch.setenv("PAPERWORKS_ROOT", str(root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_STAGE", raising=False)
    return root


def mlflow_client(root: Path):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow' / 'mlflow.db'}")
