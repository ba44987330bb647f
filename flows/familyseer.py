"""FamilySeer flow: model zoo -> tuning (policy x model x seed) -> compile + latency -> evaluation.

Stages (``python -m flows familyseer <stage>``; DVC stages ``familyseer_<stage>``):

- ``data``: PyTorch models with random weights -> fused Relax modules -> MetaSchedule tasks with
  family keys. Writes ``data/familyseer/zoo/<model>/``.
- ``tune``: every policy x model x seed at the same trial budget; MetaSchedule JSON databases and trial
  ledgers under ``data/familyseer/tuning/<model>/<policy>/seed<k>/`` (DVC-versioned, persistent:
  a run whose fingerprint matches is replayed, not re-measured).
- ``compile``: each run's best schedules compiled with the Relax VM; end-to-end latency against the
  untuned build and PyTorch eager. Writes ``results/familyseer/compile/latency.json`` (each tuned
  build with the fingerprint of the run it came from).
- ``evaluate``: search-time speed-up, final latency, per-family vs global cost-model ranking
  accuracy; ``metrics/familyseer.json``, ``plots/familyseer/``, MLflow tables and figures.

``compile`` and ``evaluate`` use a run only if its stored fingerprint is the one the tune stage would
give it now (same tasks, policy, seed, settings, tuning code, machine and library versions); a stale
run is an InputError naming its folder (re-run the tune stage). ``evaluate`` also checks that
``latency.json`` covers every model (with its PyTorch eager and untuned builds) and seed of the config
and was compiled from the runs on disk.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from prefect import flow

from components.base import InputError
from components.familyseer.config import FamilySeerConfig
from tasks.io import atomic_dir, read_json, write_json
from tasks.pipeline import StageContext, flow_config, run_paper, stage_task
from tasks.timing import stage_cost

PAPER = "familyseer"
CONFIG = FamilySeerConfig
STAGES = ("data", "tune", "compile", "evaluate")


def _run_seed(cfg: FamilySeerConfig, seed: int) -> int:
    """The seed a run of tune seed ``seed`` is tuned with (below 2**32, numpy's range: the config checks it)."""
    return cfg.seed * 1000 + seed


def _zoo_dir(ctx: StageContext) -> Path:
    return ctx.paths.data / "zoo"


def _tuning_dir(ctx: StageContext) -> Path:
    return ctx.paths.data / "tuning"


def measurement_order(policies: list[str], seeds: list[int]) -> list[tuple[int, str]]:
    """(seed, policy) in the order the tune and compile stages measure them: seed-major, with the
    policy order rotated by one per seed, so that a drift in machine load during a stage hits every
    policy alike instead of always the one measured first or last."""
    policies = list(policies)
    n = len(policies)
    return [(seed, policy) for k, seed in enumerate(seeds) for policy in policies[k % n:] + policies[:k % n]]


def _run_dir(ctx: StageContext, model: str, policy: str, seed: int) -> Path:
    return _tuning_dir(ctx) / model / policy / f"seed{seed}"


# ------------------------------------------------------------------------------------------------


@stage_task
def data(ctx: StageContext) -> dict:
    """Build the model zoo and extract MetaSchedule tasks."""
    from components.familyseer.family import make_family_group
    from components.familyseer.measure import lean_tensor_intrinsics
    from components.familyseer.zoo import export_model

    cfg = ctx.config
    lean_tensor_intrinsics()
    rows, out = [], {}
    with atomic_dir(_zoo_dir(ctx)) as tmp:
        for name in cfg.zoo.models:
            ctx.progress("familyseer/data: importing %s", name)
            manifest = export_model(name, tmp / name, cfg.seed, cfg.tune.target_cores, cfg.zoo.complex_tasks_only)
            groups = {g: make_family_group(manifest["tasks"], g) for g in ("op", "hash", "ind")}
            out[name] = {"tasks": manifest["num_tasks"], "parameters": manifest["parameters"],
                         "families_op": len(groups["op"]), "families_hash": len(groups["hash"])}
            for t in manifest["tasks"]:
                rows.append({"model": name, "task": t["name"], "weight": t["weight"], "flops": t["flops"],
                             "family_op": t["core_op"], "family_hash": t["subgraph_hash"][:8]})
            ctx.progress("familyseer/data: %s -> %d tasks, op families %s", name, manifest["num_tasks"],
                         {k: len(v) for k, v in groups["op"].items()})
        cost = stage_cost()
        (tmp / "timing.json").write_text(json.dumps(cost))
    ctx.log_metrics({f"data.{m}.{k}": v for m, d in out.items() for k, v in d.items()})
    ctx.log_table(rows, "tasks")
    return out


def _curve_points(run: dict) -> list[tuple[int, float, float]]:
    """(trial, best weighted latency in us, tuning wall s) where a run's best-so-far curve improves, and
    its last trial, cut at the run's budget (the trials of a last round past it are not counted, as in
    the evaluation)."""
    from components.familyseer.scheduler import trajectory

    curve = trajectory(run["trials"], run["weights"])
    n = min(int(run["budget"]), len(curve.latency_ms))
    points, best = [], float("inf")
    for i, (lat, wall) in enumerate(zip(curve.latency_ms[:n], curve.wall_s[:n]), start=1):
        if lat < best or i == n:
            best = min(best, lat)
            if best != float("inf"):
                points.append((i, best * 1e3, wall))
    return points


def _log_run(ctx: StageContext, model: str, policy: str, seed: int, run: dict) -> None:
    """One MLflow child run per tuning run: the best-latency-vs-trials curve (a point where it improves)."""
    with ctx.child(f"{model}/{policy}/seed{seed}", params={"model": model, "policy": policy, "seed": seed,
                                                           "budget": run["budget"]},
                   tags={"variant": policy, "model": model}) as child:
        for i, best_us, wall in _curve_points(run):
            child.log_metrics({"best_weighted_latency_us": best_us, "tuning_wall_s": wall}, step=i)
        child.log_metrics({"trials": run["num_trials"], "foresee_trials": run["foresee_trials"],
                           "wall_s": run["wall_s"], "replayed": int(bool(run.get("replayed"))),
                           **({"final_weighted_latency_us": run["final_latency_ms"] * 1e3}
                              if run.get("final_latency_ms") else {})})


@stage_task
def tune(ctx: StageContext) -> dict:
    """Tune every model with every policy and seed (replaying stored runs whose fingerprint matches)."""
    from components.familyseer.measure import lean_tensor_intrinsics
    from components.familyseer.tuning import fingerprint, stored_run, tune_model
    from components.familyseer.zoo import load_model

    cfg = ctx.config
    lean_tensor_intrinsics()
    planned: set[Path] = set()
    summary: dict[str, Any] = {"runs": 0, "replayed": 0, "trials": 0, "tuning_wall_s": 0.0}
    measurer = None  # builder + runner processes, started on the first run that measures, shared by all
    policies = list(cfg.tune.policies)
    try:
        for name in cfg.zoo.models:
            model = load_model(_zoo_dir(ctx), name)
            for seed, policy in measurement_order(policies, cfg.tune.seeds):
                run_dir = _run_dir(ctx, name, policy, seed)
                planned.add(run_dir)
                run_seed = _run_seed(cfg, seed)
                fp = fingerprint(model.manifest, policy, run_seed, cfg.tune)
                if measurer is None and stored_run(model, policy, run_seed, cfg.tune, run_dir, fp) is None:
                    from components.familyseer.measure import Measurer

                    measurer = Measurer.from_config(cfg.tune)
                run = tune_model(model, policy, run_seed, cfg.tune, run_dir,
                                 progress=lambda msg: ctx.progress("familyseer/tune: %s", msg), measurer=measurer,
                                 fp=fp)
                _log_run(ctx, name, policy, seed, run)
                summary["runs"] += 1
                summary["replayed"] += int(bool(run.get("replayed")))
                summary["trials"] += run["num_trials"]
                summary["tuning_wall_s"] += 0.0 if run.get("replayed") else run["wall_s"]
    finally:
        if measurer is not None:
            measurer.close()
    # runs no longer in the plan (a model, policy or seed removed from params.yaml) are pruned
    root = _tuning_dir(ctx)
    for run_json in sorted(root.glob("*/*/seed*/run.json")) if root.is_dir() else []:
        if run_json.parent not in planned:
            shutil.rmtree(run_json.parent)
    for d in sorted(root.glob("*/*"), reverse=True) if root.is_dir() else []:
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()
    cost = stage_cost()
    wall, cpu = cost["wall_s"], cost["cpu_s"]
    write_json(root / "timing.json", {"wall_s": wall, "cpu_s": cpu, **summary})
    ctx.log_metrics({f"tune.{k}": v for k, v in summary.items()})
    return summary


def _current_runs(ctx: StageContext) -> dict[tuple[str, str, int], dict]:
    """Every run the config plans ((model, policy, seed) -> its record), each checked against the
    fingerprint the tune stage gives it now (InputError naming a stale or malformed run and telling the
    user to re-run the tune stage)."""
    from components.familyseer.evaluation import read_manifest
    from components.familyseer.tuning import load_current_run

    cfg = ctx.config
    runs = {}
    for name in cfg.zoo.models:
        tasks_file = _zoo_dir(ctx) / name / "tasks.json"
        manifest = read_manifest(tasks_file, name)
        for policy in cfg.tune.policies:
            for seed in cfg.tune.seeds:
                runs[name, policy, seed] = load_current_run(_run_dir(ctx, name, policy, seed), manifest, policy,
                                                            _run_seed(cfg, seed), cfg.tune, tasks_file)
    return runs


@stage_task
def compile(ctx: StageContext) -> dict:  # noqa: A001 (the stage's name)
    """Compile each run's best schedules; measure end-to-end latency vs the untuned build and PyTorch."""
    from components.familyseer.latency import (compile_tuned, compile_untuned, measure_torch, measure_vm,
                                               torch_reference)
    from components.familyseer.measure import lean_tensor_intrinsics, use_kernel_threads
    from components.familyseer.zoo import load_model, make_target

    cfg = ctx.config
    ev = cfg.evaluate
    lean_tensor_intrinsics()
    runs = _current_runs(ctx)   # before anything is measured: a stale run stops the stage at once
    threads = use_kernel_threads(cfg.tune.target_cores)   # as the tuning runner measured the schedules
    if threads != cfg.tune.target_cores:
        ctx.progress("familyseer/compile: TVM's kernel pool has %d thread(s) for tune.target_cores=%d (TVM caps it "
                     "at the logical CPUs and the fastest cores, or the pool was made before this stage); the "
                     "TVM builds below run on %d (recorded as kernel_threads)", threads, cfg.tune.target_cores,
                     threads)
    target = make_target(cfg.tune.target_cores)
    results: dict[str, Any] = {}
    for name in cfg.zoo.models:
        model = load_model(_zoo_dir(ctx), name, with_torch=True)
        ref = torch_reference(model.torch_module, model.inputs)
        res: dict[str, Any] = {}
        for torch_threads in ev.torch_threads:   # not `threads`: that stays TVM's kernel thread count
            res[f"pytorch_eager_{torch_threads}t"] = measure_torch(model.torch_module, model.inputs,
                                                                   ev.latency_repeat, ev.latency_min_repeat_ms,
                                                                   torch_threads)
        fastest = min(ev.torch_threads, key=lambda t: res[f"pytorch_eager_{t}t"]["latency_ms_p50"])
        res["pytorch_eager"] = {**res[f"pytorch_eager_{fastest}t"], "threads": fastest}
        ctx.progress("familyseer/compile: %s untuned build", name)
        res["tvm_untuned"] = measure_vm(compile_untuned(model.fused, target), model.inputs, ev.latency_repeat,
                                        ev.latency_min_repeat_ms, ref, label=f"{name}: untuned build")
        policies = list(cfg.tune.policies)
        per_policy: dict[str, dict[str, Any]] = {policy: {} for policy in policies}
        for seed, policy in measurement_order(policies, cfg.tune.seeds):   # as the tune stage ran them
            ctx.progress("familyseer/compile: %s %s seed %d", name, policy, seed)
            run_dir = _run_dir(ctx, name, policy, seed)
            run = runs[name, policy, seed]
            budget = run["budget"]  # the trials past it (the last round's) are not used
            if run.get("kernel_threads", threads) != threads:
                ctx.progress("familyseer/compile: warning: %s was tuned with its kernels on %s thread(s); this "
                             "stage times its build on %d", run_dir, run["kernel_threads"], threads)
            exe, applied = compile_tuned(model.fused, run_dir, target, budget)
            rec = measure_vm(exe, model.inputs, ev.latency_repeat, ev.latency_min_repeat_ms, ref,
                             label=f"{name}: build tuned by {policy}, seed {seed} ({run_dir})")
            rec["tuned_functions"] = sorted(k for k, v in applied.items() if v)
            rec["run_fingerprint"] = run["fingerprint"]   # the evaluate stage checks it
            per_policy[policy][str(seed)] = rec
        for policy in policies:
            res[f"tvm_{policy}"] = {str(seed): per_policy[policy][str(seed)] for seed in cfg.tune.seeds}
        results[name] = res
    cost = stage_cost()
    wall, cpu = cost["wall_s"], cost["cpu_s"]
    out = ctx.paths.results / "compile"
    with atomic_dir(out) as tmp:
        (tmp / "latency.json").write_text(json.dumps(results, indent=2))
        (tmp / "timing.json").write_text(json.dumps({"wall_s": wall, "cpu_s": cpu}))
    return {m: {k: v.get("latency_ms_p50") for k, v in r.items() if isinstance(v, dict) and "latency_ms_p50" in v}
            for m, r in results.items()}


def _read_timing(stage: str, path: Path) -> dict:
    """A stage's ``timing.json`` ({} when it has none); InputError naming the file when it is not the
    JSON object with numeric ``wall_s`` and ``cpu_s`` that the stage writes."""
    if not path.is_file():
        return {}
    expected = (f"the {stage} stage's timing record, a JSON object with numeric 'wall_s' and 'cpu_s' "
                f"(re-run `python -m flows familyseer {stage}`)")
    try:
        timing = read_json(path)
    except ValueError as err:
        raise InputError(f"{err}; expected {expected}") from None
    if not isinstance(timing, dict) or not all(
            isinstance(timing.get(k), (int, float)) and not isinstance(timing.get(k), bool) for k in ("wall_s", "cpu_s")):
        raise InputError(f"{path}: {str(timing)[:160]!r}; expected {expected}")
    return timing


@stage_task
def evaluate(ctx: StageContext) -> dict:
    """Speed-ups, final latency, cost-model ranking quality, latency table -> metrics, plots, MLflow."""
    from components.familyseer.evaluation import evaluate_all

    cfg = ctx.config
    latency_path = ctx.paths.results / "compile" / "latency.json"
    try:
        latency = read_json(latency_path)
    except (FileNotFoundError, ValueError) as err:
        raise InputError(str(err)) from None
    timings = {}
    for stage, path in (("data", _zoo_dir(ctx) / "timing.json"), ("tune", _tuning_dir(ctx) / "timing.json"),
                        ("compile", ctx.paths.results / "compile" / "timing.json")):
        timings[stage] = _read_timing(stage, path)
    t0 = time.time()
    with atomic_dir(ctx.paths.plots) as plots:
        report = evaluate_all(cfg, _zoo_dir(ctx), lambda m, p, s: _run_dir(ctx, m, p, s), latency, plots,
                              run_seed=lambda s: _run_seed(cfg, s), progress=lambda msg: ctx.progress(
                                  "familyseer/evaluate: %s", msg), latency_file=latency_path)
    cost = stage_cost()
    wall, cpu = cost["wall_s"], cost["cpu_s"]
    timings["evaluate"] = {"wall_s": wall, "cpu_s": cpu}
    metrics = report["metrics"]
    replayed = timings.get("tune", {}).get("replayed", 0)
    wall_total = sum(v.get("wall_s", 0.0) for v in timings.values())
    metrics["timing"] = {
        **{f"{k}_wall_s": v.get("wall_s") for k, v in timings.items() if v},
        **{f"{k}_cpu_s": v.get("cpu_s") for k, v in timings.items() if v},
        # a replayed tuning run costs nothing now, so the profile's time is only known when every
        # run was measured in this pipeline (None: the report leaves the time claim unjudged)
        "pipeline_wall_s": None if replayed else wall_total,
        "pipeline_wall_s_with_replay": wall_total,
        "pipeline_cpu_s": sum(v.get("cpu_s", 0.0) for v in timings.values()),
        "tune_runs_replayed": replayed,
    }
    metrics = {"paper": PAPER, "profile": cfg.profile, **metrics}
    for name, rows in report["tables"].items():
        ctx.log_table(rows, name)
    ctx.log_artifact(ctx.paths.plots, "plots")
    ctx.log_metrics({k: v for k, v in metrics.items() if k not in ("paper", "profile")})
    for policy, per_model in report["policy_summary"].items():
        with ctx.child(f"summary/{policy}", params={"policy": policy}, tags={"variant": policy}) as child:
            child.log_metrics(per_model)
    write_json(ctx.paths.metrics, metrics)
    ctx.progress("familyseer/evaluate: done in %.0f s -> %s", time.time() - t0, ctx.paths.metrics)
    return metrics


@flow(name="familyseer", log_prints=True)
def familyseer(config: FamilySeerConfig | None = None, stages: list[str] | None = None) -> dict:
    """FamilySeer (arXiv:2201.00194): subgraph-family cost models + foresee tuning on TVM MetaSchedule,
    against MetaSchedule's gradient and round-robin schedulers at equal trial budgets."""
    cfg = flow_config(FamilySeerConfig, config)
    return run_paper(PAPER, cfg, stages, {"data": data, "tune": tune, "compile": compile, "evaluate": evaluate})


FLOW = familyseer
