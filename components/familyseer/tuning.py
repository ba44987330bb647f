"""One tuning run: a model's tasks x one policy x one seed, on MetaSchedule, at a fixed trial budget.

Every policy gets the same tasks, budget (``trials_per_task x tasks`` trials, counted by the shared
:class:`~components.familyseer.scheduler.TrialLedger`), round size, search strategy settings, builder,
runner, XGBoost settings and seed. They differ only in what the policy table below says.

A run writes, into ``run_dir`` (atomically: a killed run leaves nothing behind):

- ``database_workload.json``, ``database_tuning_record.json``: MetaSchedule's JSON database of every
  measured record (what the compile stage applies);
- ``ledger.json``: every trial in measurement order (task, main/foresee, latency, error, wall time);
- ``run.json``: fingerprint, policy, seed, families, budget, totals, skipped tasks, timings.

With ``replay`` on, a run whose ``run.json`` fingerprint matches the requested run is read back
instead of re-measured (see :func:`fingerprint`).
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from components.base import ConfigError, InputError
from components.familyseer.config import TuneConfig
from components.familyseer.family import Grouping, family_of, make_family_group
from components.io import atomic_dir

RUN_FILES = ("database_workload.json", "database_tuning_record.json", "ledger.json", "run.json")
#: what the evaluation reads from a run's run.json (load_run checks them)
RUN_KEYS = ("fingerprint", "policy", "seed", "tasks", "weights", "budget", "num_trials", "wall_s")
FORMAT_VERSION = 2


@dataclass(frozen=True)
class Policy:
    """How a policy picks tasks and what its cost model is trained on."""

    scheduler: str             # "gradient" | "round-robin" | "familyseer"
    grouping: Grouping | None  # families sharing a cost model (None: one global model)
    foresee: bool              # FamilySeer's foresee rounds


POLICIES: dict[str, Policy] = {
    # baselines: MetaSchedule's own schedulers with its single global XGBoost model
    "gradient": Policy("gradient", None, False),
    "round_robin": Policy("round-robin", None, False),
    # FamilySeer (core-operator families) and its ablations
    "familyseer": Policy("familyseer", "op", True),
    "familyseer_hash": Policy("familyseer", "hash", True),
    "familyseer_ind": Policy("familyseer", "ind", True),
    "familyseer_no_foresee": Policy("familyseer", "op", False),
}


#: the modules whose code decides what a tuning run measures: an edit to any of them re-measures
CODE_MODULES = ("family.py", "cost_model.py", "scheduler.py", "measure.py", "tuning.py")


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 over the source of :data:`CODE_MODULES` (so a fixed scheduler is never replayed from
    runs the broken one stored)."""
    here = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for name in CODE_MODULES:
        h.update(name.encode() + b"\0" + (here / name).read_bytes())
    return h.hexdigest()[:20]


def _cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name (``cpuinfo``'s first 'model name'; else what :mod:`platform` says)."""
    import platform

    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, sep, value = line.partition(":")
                if sep and key.strip().lower() == "model name" and value.strip():
                    return " ".join(value.split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


@functools.lru_cache(maxsize=1)
def host_environment() -> dict[str, Any]:
    """The machine and the libraries a run is measured with: the CPU model, the logical CPUs, and the
    versions of TVM, XGBoost and tvm_ffi (part of a run's :func:`fingerprint`, so a run tuned on another
    machine or library version is measured anew rather than replayed). Read once per process."""
    import os
    from importlib import metadata

    import tvm
    import xgboost

    try:
        ffi_version: str | None = metadata.version("apache-tvm-ffi")
    except metadata.PackageNotFoundError:
        ffi_version = None
    return {"cpu_model": _cpu_model(), "cpu_count": os.cpu_count(), "tvm": str(tvm.__version__),
            "xgboost": str(xgboost.__version__), "tvm_ffi": ffi_version}


def fingerprint(model_manifest: dict[str, Any], policy: str, seed: int, cfg: TuneConfig) -> str:
    """What determines a run's records: the tasks, the policy, the seed, every tuning setting
    except the lists of policies/seeds and the replay switch, the threads the kernels are measured
    on (:func:`measure.kernel_threads`: what TVM gives ``target_cores`` on this machine), the machine and
    library versions (:func:`host_environment`), and the tuning code itself."""
    from components.familyseer.measure import kernel_threads

    settings = cfg.model_dump(mode="json")
    for key in ("policies", "seeds", "replay"):
        settings.pop(key, None)
    settings["kernel_threads"] = kernel_threads(cfg.target_cores)   # the runner's pool on this machine
    payload = {"version": FORMAT_VERSION, "tasks": [(t["name"], t["structural_hash"], t["weight"])
                                                    for t in model_manifest["tasks"]],
               "target": model_manifest.get("target"), "policy": policy, "spec": asdict(POLICIES[policy]),
               "seed": seed, "settings": settings, "host": host_environment(), "code": code_digest()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def read_json_object(path: Path, keys: tuple[str, ...], what: str) -> dict[str, Any]:
    """The JSON object in ``path``, which must hold ``keys``; InputError naming the file, what was wrong
    and the keys expected (``what``: the file's role and the stage that writes it)."""
    if not path.is_file():
        raise InputError(f"{path}: missing; expected {what}")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise InputError(f"{path}: not valid JSON ({err}); expected {what}, a JSON object with keys "
                         f"{list(keys)}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: a JSON {type(data).__name__}, not an object; expected {what}, a JSON object "
                         f"with keys {list(keys)}")
    missing = [k for k in keys if k not in data]
    if missing:
        raise InputError(f"{path}: keys {missing} missing; expected {what}, a JSON object with keys {list(keys)}")
    return data


#: the fields of a ledger.json trial that the evaluation reads (load_run checks them)
TRIAL_KEYS = ("index", "task", "latency_ms", "wall_s")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_run_record(run_dir: Path, run: dict[str, Any], trials: list[Any], what: str) -> None:
    """InputError naming the file, the field (and the trial) and what is expected where ``run.json`` and
    ``ledger.json`` do not hold what the evaluation reads."""
    run_file, ledger_file = run_dir / "run.json", run_dir / "ledger.json"
    tasks, weights = run["tasks"], run["weights"]
    if not tasks or len(tasks) != len(weights):
        raise InputError(f"{run_file}: 'tasks' lists {len(tasks)} task(s) and 'weights' {len(weights)} weight(s); "
                         f"expected one weight per task (at least one task); {what}")
    bad = [w for w in weights if not _is_number(w)]
    if bad:
        raise InputError(f"{run_file}: 'weights' holds {bad[0]!r}; expected numbers; {what}")
    if not (isinstance(run["budget"], int) and not isinstance(run["budget"], bool) and run["budget"] >= 1):
        raise InputError(f"{run_file}: 'budget' is {run['budget']!r}; expected a positive integer; {what}")
    n = len(tasks)
    for k, trial in enumerate(trials):
        if not isinstance(trial, dict):
            raise InputError(f"{ledger_file}: trial {k} is {str(trial)[:80]!r}; expected an object with keys "
                             f"{list(TRIAL_KEYS)}; {what}")
        missing = [key for key in TRIAL_KEYS if key not in trial]
        if missing:
            raise InputError(f"{ledger_file}: trial {k} has no {missing}; expected an object with keys "
                             f"{list(TRIAL_KEYS)}; {what}")
        task = trial["task"]
        if not (isinstance(task, int) and not isinstance(task, bool) and 0 <= task < n):
            raise InputError(f"{ledger_file}: trial {k} 'task' is {task!r}; expected a task index in [0, {n}) "
                             f"(run.json lists {n} task(s)); {what}")
        for key in ("index", "latency_ms", "wall_s"):
            if not _is_number(trial[key]):
                raise InputError(f"{ledger_file}: trial {k} {key!r} is {trial[key]!r}; expected a number; {what}")


def load_run(run_dir: Path) -> dict[str, Any]:
    """``run.json`` + ``ledger.json`` of a finished run (InputError naming a missing/bad file, and for a
    malformed record the field, the trial and what is expected)."""
    for name in RUN_FILES:
        if not (run_dir / name).is_file():
            raise InputError(f"{run_dir / name}: missing; expected a finished tuning run (run the tune stage)")
    what = "a finished tuning run's record as the tune stage writes it (re-run the tune stage)"
    run = read_json_object(run_dir / "run.json", RUN_KEYS, what)
    trials = read_json_object(run_dir / "ledger.json", ("trials",), what)["trials"]
    if not isinstance(trials, list) or not isinstance(run["tasks"], list) or not isinstance(run["weights"], list):
        raise InputError(f"{run_dir}: malformed run record ('trials' of ledger.json, 'tasks' and 'weights' of "
                         f"run.json must be lists); expected {what}")
    _check_run_record(run_dir, run, trials, f"expected {what}")
    run["trials"] = trials
    return run


def load_current_run(run_dir: Path, model_manifest: dict[str, Any], policy: str, seed: int, cfg: TuneConfig,
                     manifest_file: Path | str = "tasks.json") -> dict[str, Any]:
    """:func:`load_run`, checked to be the run the current data, settings, code and machine would tune
    (its stored fingerprint is :func:`fingerprint` of ``model_manifest``, ``policy``, ``seed`` and ``cfg``,
    as the tune stage computes it); InputError naming the run's folder and both fingerprints otherwise.
    ``manifest_file``: where ``model_manifest`` was read (named when it lacks what the fingerprint needs)."""
    run = load_run(run_dir)
    try:
        expected = fingerprint(model_manifest, policy, seed, cfg)
    except (KeyError, TypeError) as err:
        raise InputError(f"{manifest_file}: malformed task manifest ({type(err).__name__}: {err}); expected the "
                         f"data stage's tasks.json, whose tasks have 'name', 'structural_hash' and 'weight' "
                         f"(re-run the data stage)") from None
    stored = run.get("fingerprint")
    if stored != expected:
        raise InputError(f"{run_dir}: stored fingerprint {stored!r} differs from {expected!r}, the fingerprint "
                         f"the current task manifest, tune settings, tuning code and machine give to "
                         f"policy {policy!r}, seed {seed}: the run is stale; expected a run of the current "
                         f"configuration: re-run the tune stage (`python -m flows familyseer tune`)")
    return run


def _quiet_metaschedule() -> None:
    for name in ("tvm.s_tir.meta_schedule", "tvm_ffi"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.WARNING)
        # MetaSchedule rebuilds its loggers with logging.config.dictConfig from the names of the handlers
        # already attached; an unnamed handler (added by a host application or a test harness) makes
        # it fail with "'NoneType' object has no attribute 'format'". Such handlers cannot be expressed
        # in its config, so they are detached.
        for handler in list(logger.handlers):
            if handler.get_name() is None:
                logger.removeHandler(handler)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # XGBModel's warm-up predictions draw from numpy's global generator


def stored_run(model: Any, policy: str, seed: int, cfg: TuneConfig, run_dir: Path,
               fp: str | None = None) -> dict[str, Any] | None:
    """The run stored in ``run_dir`` if ``cfg.replay`` is on and its fingerprint is this run's (same
    model, policy, seed, settings and tuning code; ``fp``: that fingerprint, if the caller has it);
    None when it has to be measured."""
    if not (cfg.replay and (run_dir / "run.json").is_file()):
        return None
    try:
        stored = load_run(run_dir)
    except InputError:
        return None
    fp = fp or fingerprint(model.manifest, policy, seed, cfg)
    return stored if stored.get("fingerprint") == fp else None


def tune_model(model: Any, policy: str, seed: int, cfg: TuneConfig, run_dir: Path,
               progress: Callable[[str], None] | None = None, measurer: Any = None,
               fp: str | None = None) -> dict[str, Any]:
    """Tune ``model`` (a :class:`zoo.LoadedModel`) with ``policy`` and ``seed``; return the run summary.

    Replays the stored run when ``cfg.replay`` and its fingerprint matches; otherwise measures and
    replaces ``run_dir`` atomically. ``measurer`` (a :class:`measure.Measurer`) is shared by the runs of
    a stage; without one, the run starts and stops its own. ``fp``: the run's :func:`fingerprint` if
    the caller computed it already.
    """
    if policy not in POLICIES:
        raise ConfigError(f"familyseer.tune.policies: {policy!r} is unknown; expected one of {sorted(POLICIES)}")
    say = progress or (lambda msg: None)
    fp = fp or fingerprint(model.manifest, policy, seed, cfg)
    stored = stored_run(model, policy, seed, cfg, run_dir, fp)
    if stored is not None:
        say(f"{model.name}/{policy}/seed {seed}: replaying {len(stored['trials'])} stored trials "
            f"(fingerprint {fp})")
        stored["replayed"] = True
        return stored
    with atomic_dir(run_dir) as tmp:  # a killed or failed run leaves the stored one (or nothing) in place
        if measurer is None:
            from components.familyseer.measure import Measurer

            with Measurer.from_config(cfg) as own:
                summary = _measure(model, policy, seed, cfg, tmp, fp, say, own)
        else:
            summary = _measure(model, policy, seed, cfg, tmp, fp, say, measurer)
    summary["replayed"] = False
    return summary


def _measure(model: Any, policy: str, seed: int, cfg: TuneConfig, out: Path, fp: str,
             say: Callable[[str], None], measurer: Any) -> dict[str, Any]:
    from components.familyseer.measure import lean_tensor_intrinsics, target_needs_intrinsics
    from components.familyseer.zoo import extract_tasks, make_target

    target = make_target(cfg.target_cores)
    if not target_needs_intrinsics(target):
        lean_tensor_intrinsics()
    from tvm.s_tir import meta_schedule as ms

    from components.familyseer.cost_model import FamilyCostModel, make_xgb, store_features
    from components.familyseer.scheduler import (FAILED_MS, FamilySeerScheduler, ForeseeAwareSearch, TrialLedger,
                                                 trajectory, weighted_latency)

    _quiet_metaschedule()
    _seed_everything(seed)
    spec = POLICIES[policy]
    tasks, infos = extract_tasks(model.fused, target, bool(model.manifest.get("complex_tasks_only", True)))
    expected = [t["name"] for t in model.manifest["tasks"]]
    if [i.name for i in infos] != expected:
        raise InputError(f"model {model.name!r}: extracted tasks {[i.name for i in infos]} differ from the "
                         f"data stage's tasks.json {expected}; re-run the data stage")
    if len(set(expected)) != len(expected):
        raise InputError(f"model {model.name!r}: task names are not unique: {expected}")
    log_dir = Path(tempfile.mkdtemp(prefix="familyseer-mslogs-"))
    try:
        search_params = dict(
            population_size=cfg.search.population_size, init_min_unmeasured=cfg.search.init_min_unmeasured,
            genetic_num_iters=cfg.search.genetic_num_iters, eps_greedy=cfg.search.eps_greedy)
        # what was measured, per task name: written by the ledger, read by the searches of a
        # foresee policy (scheduler module docstring)
        measured: dict[str, set[int]] = {name: set() for name in expected}
        strategy = (ForeseeAwareSearch(search_params, measured) if spec.foresee
                    else ms.search_strategy.EvolutionarySearch(**search_params))
        ctxs, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            tasks, str(log_dir), strategy=strategy, num_threads=cfg.search_threads, seed=seed)
        _quiet_metaschedule()
        # a task whose design space cannot be generated is recorded and skipped, not fatal
        keep, skipped, spaces = [], [], []
        for i, ctx in enumerate(ctxs):
            try:
                task_spaces = ctx.space_generator.generate_design_space(ctx.mod)
                if not task_spaces:
                    raise RuntimeError("empty design space")
                keep.append(i)
                spaces.append(list(task_spaces))
            except Exception as err:  # TVM raises its own error classes
                skipped.append({"task": infos[i].name, "error": f"{type(err).__name__}: {str(err)[:300]}"})
        if not keep:
            raise InputError(f"model {model.name!r}: no task of {expected} can be tuned ({skipped})")
        ctxs = [ctxs[i] for i in keep]
        weights = [float(weights[i]) for i in keep]
        infos = [infos[i] for i in keep]
        n = len(ctxs)
        budget = cfg.trials_per_task * n
        task_dicts = [asdict(t) for t in infos]

        builder, runner = measurer.builder, measurer.runner
        database = ms.database.JSONDatabase(path_workload=str(out / "database_workload.json"),
                                            path_tuning_record=str(out / "database_tuning_record.json"),
                                            allow_missing=True)

        def report(count: int, best: list[float], wall: float) -> None:
            say(f"{model.name}/{policy}/seed {seed}: {count}/{budget} trials, weighted latency "
                f"{weighted_latency(weights, best) * 1e3:.1f} us, {wall:.0f} s")

        ledger = TrialLedger(n, report, every=max(cfg.trials_per_round * 4, 1), task_names=[t.name for t in infos])
        ledger.measured = measured
        families: dict[str, list[int]] = {}
        features = store_features(cfg.cost_model.feature_threads)  # the same extractor for every policy
        if spec.grouping is None:
            cost_model = make_xgb(cfg.cost_model, n, cfg.trials_per_round, cfg.cost_model.threads, features)
        else:
            families = make_family_group(task_dicts, spec.grouping)
            cost_model = FamilyCostModel(
                {infos[i].name: key for i, key in family_of(families).items()},
                {key: make_xgb(cfg.cost_model, len(members), cfg.trials_per_round, cfg.cost_model.threads, features)
                 for key, members in families.items()})
        if spec.scheduler == "gradient":
            scheduler = ms.task_scheduler.GradientBased(alpha=cfg.alpha, window_size=cfg.window_size, seed=seed)
        elif spec.scheduler == "round-robin":
            scheduler = ms.task_scheduler.RoundRobin()
        else:
            scheduler = FamilySeerScheduler(families, ledger, builder, runner, budget,
                                            cfg.foresee_trials if spec.foresee else 0, cfg.foresee_random,
                                            search_params=search_params, design_spaces=spaces,
                                            alpha=cfg.alpha, window_size=cfg.window_size, seed=seed)
        callbacks = list(ms.measure_callback.MeasureCallback.create("default")) + [ledger]
        say(f"{model.name}/{policy}/seed {seed}: tuning {n} tasks, budget {budget} trials"
            + (f", families {dict((k, len(v)) for k, v in families.items())}" if families else ""))
        if spec.foresee and cfg.foresee_trials > 0 and budget <= (n + 1) * cfg.trials_per_round:
            say(f"{model.name}/{policy}/seed {seed}: warning: budget {budget} <= (tasks + 1) x trials_per_round = "
                f"{(n + 1) * cfg.trials_per_round}: the first pass and one main round spend it, so no foresee "
                f"round fits unless rounds come back short")
        # a builder due for new worker processes gets them now, before the clock starts (never inside
        # the run's timed builds)
        builder_recycled = bool(measurer.between_runs())
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        ledger.start()
        scheduler.tune(tasks=ctxs, task_weights=weights, max_trials_global=budget,
                       max_trials_per_task=budget, num_trials_per_iter=cfg.trials_per_round,
                       builder=builder, runner=runner, measure_callbacks=callbacks,
                       database=database, cost_model=cost_model)
        wall = time.perf_counter() - t0
        cpu_main = time.process_time() - cpu0
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)

    trials = [asdict(t) for t in ledger.trials]
    curve = trajectory(trials, weights)
    # at the budget: the trials of the last round past it are recorded but not counted
    final = curve.latency_ms[min(budget, len(curve.latency_ms)) - 1] if curve.latency_ms else float("inf")
    summary = {
        "format": FORMAT_VERSION, "fingerprint": fp, "model": model.name, "policy": policy,
        "spec": asdict(spec), "seed": seed, "budget": budget, "num_trials": len(trials),
        "foresee_trials": sum(1 for t in trials if t["kind"] == "foresee"),
        "remeasured_trials": ledger.remeasured,
        "tasks": [t.name for t in infos], "weights": weights, "skipped_tasks": skipped,
        "families": families, "errors": {infos[k].name: v for k, v in ledger.errors.items()},
        "final_latency_ms": final if np.isfinite(final) else None,
        "per_task_best_ms": [b if b < FAILED_MS else None for b in curve.per_task_best_ms],
        "wall_s": wall, "cpu_main_s": cpu_main, "settings": cfg.model_dump(mode="json"),
        "kernel_threads": measurer.kernel_threads, "builder_recycled": builder_recycled,
        "foresee_log": [{"after": infos[a].name, "sibling": infos[b].name, "trials": k}
                        for a, b, k in getattr(scheduler, "foresee_log", [])],
        "cost_model_updates": dict(getattr(cost_model, "updates", {})) if families else {},
    }
    (out / "ledger.json").write_text(json.dumps({"trials": trials}))
    (out / "run.json").write_text(json.dumps(summary, indent=2))
    summary["trials"] = trials
    say(f"{model.name}/{policy}/seed {seed}: {len(trials)} trials in {wall:.0f} s, final weighted latency "
        f"{(final * 1e3) if np.isfinite(final) else float('nan'):.1f} us")
    return summary
