"""Shared fixtures.

- ``prefect_harness`` (session): a throw-away Prefect API (temporary SQLite) for flow tests.
- ``paperworks_root`` : an isolated checkout root (``PAPERWORKS_ROOT``) with its own MLflow store,
  so flow tests write ``data/``, ``models/``, ``metrics/`` and ``mlflow/`` under ``tmp_path``.
- ``load_script(relative_path)``: a script of the repo (``benchmarks/...``) imported as a module.
- ``_restore_torch_threads`` / ``_restore_torch_threads_per_module`` (autouse): ``torch.set_num_threads``
  in a test, a module-scoped fixture or an in-process flow does not outlive the test / the module.
- ``_restore_thread_env`` (autouse): nor do TVM_NUM_THREADS / OMP_NUM_THREADS / MKL_NUM_THREADS set in a test.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parent.parent

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

# Prefect configures logging when it is first imported, and its console handler keeps the sys.stderr
# of that moment. Imported here, while pytest collects, that is pytest's session-long stream. First
# imported inside a test that uses capsys, it would be that test's stream, closed when the test ends:
# every later Prefect log line then failed ("I/O operation on closed file") and a later flow test
# died in a RecursionError (e.g. `pytest tests/flows/test_har_flow.py tests/flows/test_familyseer_flow.py`).
importlib.import_module("prefect.main")   # not `import prefect`: that loads prefect.main lazily


def _torch_threads() -> int | None:
    """torch's intra-op thread count, or None where torch is not imported yet (not imported for this:
    a test that never uses torch does not pay ~1.5 s for it)."""
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


def _restore_torch_threads_to(before: int | None) -> None:
    # None: torch was first imported after the recording, whose default count is not known here
    # (in a whole-suite run torch is imported while collecting, before any test)
    torch = sys.modules.get("torch")
    if before is not None and torch is not None and torch.get_num_threads() != before:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Undo ``torch.set_num_threads`` made by the test (or by a flow it runs in process). Function-
    scoped fixtures of narrower conftests (``_one_thread`` ...) set up after and tear down before this
    one; a module-scoped fixture's setting is recorded here, kept for the module's tests and undone
    by ``_restore_torch_threads_per_module``. Costs well under a microsecond per test.
    ``torch.set_num_interop_threads`` is not handled: torch allows it once per process."""
    before = _torch_threads()
    yield
    _restore_torch_threads_to(before)


#: variables that code run in process sets for itself and that change later tests' thread pools
#: (``familyseer.measure.use_kernel_threads`` sets TVM_NUM_THREADS for the process, as the stage needs)
_PROCESS_ENV = ("TVM_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


@pytest.fixture(autouse=True)
def _restore_thread_env():
    """Undo what a test (or a flow it runs in process) set of ``_PROCESS_ENV``; fixtures of wider
    scope (the familyseer package's ``tvm_num_threads``) are set up before and keep their value."""
    before = {k: os.environ.get(k) for k in _PROCESS_ENV}
    yield
    for k, v in before.items():
        if os.environ.get(k) != v:
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module", autouse=True)
def _restore_torch_threads_per_module():
    """Undo ``torch.set_num_threads`` made by a module-scoped fixture (``tiny`` in
    tests/components/har/test_parity.py, ``har_inputs`` in tests/flows/test_har_flow.py) once the
    module's tests are done: set up before a module's other module-scoped fixtures, torn down after."""
    before = _torch_threads()
    yield
    _restore_torch_threads_to(before)


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
