"""Compile a model with a tuning database and measure end-to-end latency (Relax VM, PyTorch eager).

- tuned build: the fused module that was tuned + ``MetaScheduleApplyDatabase`` + Relax lowering;
- untuned build: the same fused module + lowering, no schedules (see :func:`_build`);
- PyTorch eager: the same weights and inputs under ``torch.inference_mode``.

Latency samples come from ``VirtualMachine.time_evaluator`` (each sample averages runs for at least
``min_repeat_ms``); p50/p99 are over samples. Every build's output is checked against PyTorch's: its
largest absolute difference (``max_abs_err``) must be within :data:`OUTPUT_RTOL` of the reference's
largest magnitude, or :class:`OutputMismatch` is raised (float32 builds differ from PyTorch by
summation order only: up to 3.1e-7 on the committed resnet_tiny builds, 3e-6 of the largest output).
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from components.base import InputError
from components.familyseer.measure import lean_tensor_intrinsics, pool_threads

#: a build's output may differ from PyTorch's by this share of the reference's largest magnitude
OUTPUT_RTOL = 1e-3


class OutputMismatch(RuntimeError):
    """A compiled model computes something else than the PyTorch model it was imported from."""


def check_output(out: np.ndarray, reference: np.ndarray, label: str) -> float:
    """``max_abs_err`` of ``out`` against ``reference``; OutputMismatch (naming ``label``) when the shapes
    differ or it exceeds ``OUTPUT_RTOL x max|reference|`` (NaN fails too)."""
    out, reference = np.asarray(out), np.asarray(reference)
    if out.shape != reference.shape:
        raise OutputMismatch(f"{label}: output shape {out.shape} differs from PyTorch's {reference.shape}")
    err = float(np.max(np.abs(out.astype(np.float64) - reference))) if out.size else 0.0
    scale = float(np.max(np.abs(reference))) if reference.size else 0.0
    tol = OUTPUT_RTOL * max(scale, 1e-6)
    if not err <= tol:
        raise OutputMismatch(f"{label}: output differs from PyTorch's by up to {err:.3g} (max |reference| "
                             f"{scale:.3g}); expected at most {tol:.3g} ({OUTPUT_RTOL:g} x max |reference|)")
    return err


def load_database(run_dir: Path, max_records: int | None = None):
    """A run's MetaSchedule database; with ``max_records``, only its first records (the database
    file holds them in measurement order), so that every policy is compiled from exactly its
    trial budget although a round may run past it (MetaSchedule checks the budget between rounds)."""
    lean_tensor_intrinsics()
    from tvm.s_tir import meta_schedule as ms

    paths = [run_dir / "database_workload.json", run_dir / "database_tuning_record.json"]
    for p in paths:
        if not p.is_file():
            raise InputError(f"{p}: missing; expected the MetaSchedule database of a tuning run (run the tune stage)")
    if max_records is not None and max_records < 1:
        raise InputError(f"max_records={max_records}: expected >= 1 tuning records")
    records = paths[1].read_text().splitlines()
    if max_records is None or len(records) <= max_records:
        return ms.database.JSONDatabase(path_workload=str(paths[0]), path_tuning_record=str(paths[1]),
                                        allow_missing=False)
    tmp = Path(tempfile.mkdtemp(prefix="familyseer_db_"))
    try:
        shutil.copyfile(paths[0], tmp / paths[0].name)
        (tmp / paths[1].name).write_text("\n".join(records[:max_records]) + "\n")
        # JSONDatabase reads both files when it is built; the copies are not needed afterwards
        return ms.database.JSONDatabase(path_workload=str(tmp / paths[0].name),
                                        path_tuning_record=str(tmp / paths[1].name), allow_missing=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _scheduled(mod: Any) -> dict[str, bool]:
    """PrimFunc name -> whether it carries a tuned schedule (``tirx.is_scheduled``)."""
    import tvm

    return {gv.name_hint: bool(f.attrs and f.attrs.get("tirx.is_scheduled", False))
            for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}


def _build(fused_mod: Any, target: Any, database: Any = None, applied: dict[str, bool] | None = None):
    """Build the *fused* module as it was tuned: (apply the database,) lower, finalize.

    ``relax_integration.compile_relax`` and the default ``tvm.compile`` pipeline re-run legalization and
    fusion, which on an already fused module produces PrimFuncs that no longer match the tuned
    workloads (checked: every lookup missed). Both builds here start from the same fused functions that
    were extracted and tuned, so the only difference between them is the schedules. ``applied``: filled
    with :func:`_scheduled` of the module right after the database was applied.
    """
    lean_tensor_intrinsics()
    import tvm
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu  # the llvm pipeline's own pass lists
    from tvm.relax.transform import MetaScheduleApplyDatabase

    @tvm.transform.module_pass(opt_level=3)
    def _pipeline(mod: Any, _ctx: Any) -> Any:
        if database is not None:
            mod = MetaScheduleApplyDatabase(enable_warning=False)(mod)
            if applied is not None:
                applied.update(_scheduled(mod))
        return tvm.transform.Sequential(cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target))(mod)

    if database is None:
        with target, tvm.transform.PassContext(opt_level=3):
            return relax.build(fused_mod, target=target, relax_pipeline=_pipeline)
    with target, database, tvm.transform.PassContext(opt_level=3):
        return relax.build(fused_mod, target=target, relax_pipeline=_pipeline)


def applied_schedules(fused_mod: Any, run_dir: Path, target: Any, max_records: int | None = None) -> dict[str, bool]:
    """Which PrimFuncs of ``fused_mod`` get a tuned schedule from a run's database (its first
    ``max_records`` records, see :func:`load_database`)."""
    lean_tensor_intrinsics()
    import tvm
    from tvm.relax.transform import MetaScheduleApplyDatabase

    with target, load_database(run_dir, max_records), tvm.transform.PassContext(opt_level=3):
        return _scheduled(MetaScheduleApplyDatabase(enable_warning=False)(fused_mod))


def compile_tuned(fused_mod: Any, run_dir: Path, target: Any,
                  max_records: int | None = None) -> tuple[Any, dict[str, bool]]:
    """The model with the best schedule of every tuned task from a run's database (its first
    ``max_records`` records: pass the run's trial budget to compare policies at equal budgets), and,
    from the same application of the database, what :func:`applied_schedules` returns."""
    applied: dict[str, bool] = {}
    return _build(fused_mod, target, load_database(run_dir, max_records), applied), applied


def compile_untuned(fused_mod: Any, target: Any):
    """The same fused model with no schedules (what TVM builds without tuning)."""
    return _build(fused_mod, target)


def _stats(samples_s: list[float]) -> dict[str, float]:
    ms = np.asarray(samples_s, dtype=float) * 1e3
    return {"latency_ms_p50": float(np.percentile(ms, 50)), "latency_ms_p99": float(np.percentile(ms, 99)),
            "latency_ms_mean": float(ms.mean()), "samples": int(ms.size)}


def measure_vm(executable: Any, inputs: tuple[Any, ...], repeat: int, min_repeat_ms: int,
               reference: np.ndarray | None = None, label: str = "build") -> dict[str, float]:
    """Latency of ``main`` in the Relax VM; with ``reference``, its output is checked first
    (:func:`check_output`; ``label`` names the build in the error) and ``max_abs_err`` recorded."""
    import tvm
    from tvm import relax

    dev = tvm.cpu()
    vm = relax.VirtualMachine(executable, dev)
    args = [tvm.runtime.tensor(np.ascontiguousarray(x.numpy()), dev) for x in inputs]
    out = vm["main"](*args)
    out = out[0] if isinstance(out, (list, tuple)) or type(out).__name__ == "Array" else out
    err = check_output(out.numpy(), reference, label) if reference is not None else None
    stats = _stats(list(vm.time_evaluator("main", dev, number=1, repeat=repeat,
                                          min_repeat_ms=min_repeat_ms)(*args).results))
    stats["kernel_threads"] = pool_threads()   # TVM's pool in this thread
    if err is not None:
        stats["max_abs_err"] = err
    return stats


def torch_reference(module: Any, inputs: tuple[Any, ...]) -> np.ndarray:
    import torch

    with torch.inference_mode():
        out = module(*inputs)
    return (out[0] if isinstance(out, (tuple, list)) else out).numpy()


def measure_torch(module: Any, inputs: tuple[Any, ...], repeat: int, min_repeat_ms: int,
                  threads: int) -> dict[str, float]:
    """PyTorch eager latency with the same protocol as :func:`measure_vm`."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            module(*inputs)  # warm-up
            samples = []
            for _ in range(repeat):
                n, t0 = 0, time.perf_counter()
                while True:
                    module(*inputs)
                    n += 1
                    dt = time.perf_counter() - t0
                    if dt * 1e3 >= min_repeat_ms:
                        break
                samples.append(dt / n)
    finally:
        torch.set_num_threads(old)
    return _stats(samples)
