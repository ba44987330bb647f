"""Shared fixtures: ``TVM_NUM_THREADS=2`` while this package's tests run, and a tiny zoo (the
three-layer MLP: one 'matmul' family of three tasks)."""
from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="package", autouse=True)
def tvm_num_threads():
    """``TVM_NUM_THREADS=2`` (unless set already) for this package's tests only, put back after them.

    TVM reads the variable when it makes a thread's kernel pool (``MaxConcurrency()`` in
    ``src/runtime/threading_backend.cc``, called by the thread-local ``ThreadPool``'s constructor in
    ``thread_pool.cc``; falling back to ``OMP_NUM_THREADS``, then to half the logical CPUs), i.e. at
    the first kernel or ``runtime.NumThreads`` call of a thread, not at ``import tvm``; and the
    builder/runner processes the tests start inherit it. So it is set before any test of the package
    (package scope, set up before the module- and function-scoped fixtures), not at collection, when
    it leaked into every test of the session."""
    with pytest.MonkeyPatch.context() as mp:
        if "TVM_NUM_THREADS" not in os.environ:
            mp.setenv("TVM_NUM_THREADS", "2")
        yield


@pytest.fixture(scope="package")
def mlp_zoo(tvm_num_threads, tmp_path_factory):
    from components.familyseer.zoo import export_model

    zoo = tmp_path_factory.mktemp("zoo")
    export_model("mlp_tiny", zoo / "mlp_tiny", seed=0, target_cores=2, complex_only=True)
    return zoo


def tiny_tune_config(**overrides):
    """A few dozen trials: enough for the warm-up round, a gradient pick and a foresee round."""
    from components.familyseer.config import TuneConfig

    base = dict(trials_per_task=4, trials_per_round=2, foresee_trials=1, foresee_random=0, repeat=2,
                min_repeat_ms=1, replay=True,
                search={"population_size": 8, "init_min_unmeasured": 4, "genetic_num_iters": 1})
    base.update(overrides)
    return TuneConfig(**base)


# --------------------------------------------------------------------------------------------------
# synthetic stage outputs (no TVM tuning): task manifests, tuning runs with their fingerprints


HOST = {"cpu_model": "Test CPU", "cpu_count": 2, "tvm": "0.27.0", "xgboost": "3.2.0", "tvm_ffi": "0.1.14"}


@pytest.fixture
def fast_fingerprint(monkeypatch):
    """Fingerprints without the kernel-pool probe (a TVM process) and with a fixed host."""
    from components.familyseer import measure, tuning

    monkeypatch.setattr(measure, "kernel_threads", lambda threads: threads)
    monkeypatch.setattr(tuning, "host_environment", lambda: dict(HOST))
    return tuning.fingerprint


def manifest(tasks=("a", "b")):
    """A data-stage task manifest (tasks.json) of one 'matmul' family."""
    return {"model": "m", "target": "llvm", "tasks": [
        {"name": t, "core_op": "matmul", "structural_hash": f"hash-{t}", "weight": 1} for t in tasks]}


def trials(tasks_latencies, dt=1.0):
    """Ledger trials: trial i measures task ``t`` at ``ms`` (1e9 = a failed trial), ``dt`` s apart."""
    return [{"index": i + 1, "task": t, "kind": "main", "latency_ms": ms, "error": "" if ms < 1e9 else "run",
             "wall_s": dt * (i + 1)} for i, (t, ms) in enumerate(tasks_latencies)]


def write_run(folder, fingerprint, trial_list, policy="gradient", seed=0, tasks=("a", "b"), budget=4):
    """A run folder as the tune stage writes it (the MetaSchedule databases empty)."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    for name in ("database_workload.json", "database_tuning_record.json"):
        (folder / name).write_text("")
    run = {"fingerprint": fingerprint, "policy": policy, "seed": seed, "tasks": list(tasks),
           "weights": [1.0] * len(tasks), "budget": budget, "num_trials": len(trial_list),
           "wall_s": float(len(trial_list))}
    (folder / "run.json").write_text(json.dumps(run))
    (folder / "ledger.json").write_text(json.dumps({"trials": trial_list}))
    return folder
