"""JanusPipe flow: data -> reference training -> phase-cost profiling -> real pipelined runs ->
simulation at 2..32 devices (metrics/januspipe.json, plots/januspipe/, MLflow experiment ``januspipe``).

Stage outputs (each written atomically, each a DVC output):

- ``data``:     data/mlip/{train,val,test}.extxyz, manifest.json (EMT molecular dynamics)
- ``train``:    models/januspipe/train/ (weights, history), results/januspipe/train/metrics.json
- ``profile``:  results/januspipe/profile/costs.json (per-block/per-phase costs, activation bytes, P2P)
- ``pipeline``: results/januspipe/pipeline/runs.json (real gloo runs of every schedule, exactness check)
- ``simulate``: metrics/januspipe.json, plots/januspipe/*.png
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import time
from pathlib import Path
from typing import Any

from prefect import flow

from components.base import InputError
from components.io import read_json_record
from components.januspipe.config import JanuspipeConfig
from tasks.io import atomic_dir, write_json
from tasks.pipeline import StageContext, flow_config, run_paper, stage_task

PAPER = "januspipe"
CONFIG = JanuspipeConfig
STAGES = ("data", "train", "profile", "pipeline", "simulate")


def data_dir(ctx: StageContext) -> Path:
    """The issue asks for the MLIP data in ``data/mlip`` (DVC stage ``januspipe_data``)."""
    return ctx.paths.root / "data" / "mlip"


def _results(ctx: StageContext, stage: str) -> Path:
    return ctx.paths.results / stage


def _read_results(ctx: StageContext, stage: str, name: str) -> dict:
    """Stage ``stage``'s output ``name`` with the keys the later stages read (:data:`_REQUIRED`);
    InputError naming the file and the stage to (re-)run when it is missing, malformed or incomplete."""
    path = _results(ctx, stage) / name
    what = (f"the complete output of `python -m flows januspipe {stage}` (run that stage, or `dvc repro "
            f"januspipe_{stage}`)")
    out = read_json_record(path, _REQUIRED.get(name, ()), what)
    if name == "costs.json":
        cm = out["cost_model"]
        missing = [f"cost_model.{k}" for k in _COST_MODEL_KEYS if not isinstance(cm, dict) or k not in cm]
        if missing:
            raise InputError(f"{path}: keys {missing} missing; expected {what}")
    return out


#: keys the later stages read from each stage output (checked by :func:`_read_results`)
_REQUIRED = {
    "costs.json": ("cost_model", "latency_s", "bandwidth_Bps", "phase_ratio_vs_P1", "force_graph_over_forward_bytes"),
    "runs.json": ("runs", "exactness_rel_error"),
    "timelines.json": (),
    "metrics.json": ("model", "per_element_mean", "force_mae_ratio_baseline_over_model", "finite_difference"),
}

_COST_MODEL_KEYS = ("block_s", "stage_overhead_s", "first_extra_s", "last_extra_s", "block_act_forward_bytes",
                    "block_act_force_bytes", "stage_act_forward_bytes", "stage_act_force_bytes", "state_bytes",
                    "geo_bytes", "structures_per_microbatch")


def _finite_json(obj: Any, what: str) -> str:
    """``obj`` as indented JSON, refusing NaN/inf (raised before any output of the stage is written)."""
    try:
        return json.dumps(obj, indent=2, allow_nan=False) + "\n"
    except ValueError:
        bad = [k for k, v in _flat(obj) if isinstance(v, float) and not math.isfinite(v)]
        raise InputError(f"{what}: non-finite values at {bad[:8]}; expected finite numbers (a diverged "
                         f"training or a broken measurement; nothing was written)") from None


def _flat(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(obj, dict):
        return [kv for k, v in obj.items() for kv in _flat(v, f"{prefix}{k}.")]
    if isinstance(obj, (list, tuple)):
        return [kv for i, v in enumerate(obj) for kv in _flat(v, f"{prefix}{i}.")]
    return [(prefix.rstrip("."), obj)]


def _cpu_seconds() -> float:
    """User + system CPU of this process and its finished children (spawned ranks included)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


# -- data ---------------------------------------------------------------------------------------
@stage_task
def data(ctx: StageContext) -> dict:
    from components.mlip.data import generate_emt_dataset

    t0, c0 = time.perf_counter(), _cpu_seconds()
    with atomic_dir(data_dir(ctx)) as tmp:
        manifest = generate_emt_dataset(ctx.config.data, tmp, seed=ctx.config.seed, progress=ctx.progress)
        manifest["stage_seconds"] = time.perf_counter() - t0
        manifest["stage_cpu_seconds"] = _cpu_seconds() - c0
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    ctx.log_metrics({f"data.{k}_structures": v for k, v in manifest["splits"].items()})
    ctx.log_metrics({"data.force_rms_eV_per_A": manifest["force_rms_eV_per_A"]})
    return manifest


# -- reference training -------------------------------------------------------------------------------
@stage_task
def train(ctx: StageContext) -> dict:
    import torch

    from components.mlip.data import load_split
    from components.mlip.graph import GraphDataset
    from components.mlip.model import MatrisLikeMLIP, count_parameters
    from components.mlip.train import (evaluate, finite_difference_check, per_element_mean_baseline, prepare_model,
                                       train_reference)

    cfg = ctx.config
    t0, c0 = time.perf_counter(), _cpu_seconds()
    torch.set_num_threads(1)
    require = ("energy", "forces", "stress") if cfg.train.stress_weight > 0 else ("energy", "forces")
    splits = {s: load_split(data_dir(ctx), s, require=require) for s in ("train", "val", "test")}
    sets = {s: GraphDataset(v, cfg.model.cutoff, cfg.model.three_body_cutoff) for s, v in splits.items()}
    torch.manual_seed(cfg.seed)
    model = MatrisLikeMLIP(cfg.model)
    prepare_model(model, splits["train"])
    ctx.progress("training %d parameters on %d structures (%d epochs max)", count_parameters(model),
                 len(splits["train"]), cfg.train.epochs)
    res = train_reference(model, sets["train"], sets["val"], cfg.train, seed=cfg.seed, progress=ctx.progress)
    test = evaluate(model, sets["test"])
    base = per_element_mean_baseline(splits["train"], splits["test"])
    fd = finite_difference_check(model, sets["test"])
    out = {
        "model": {**{k: v for k, v in test.items() if k != "structures"}, "parameters": count_parameters(model)},
        "per_element_mean": base,
        "force_mae_ratio_baseline_over_model": base["force_mae_eV_per_A"] / max(test["force_mae_eV_per_A"], 1e-12),
        "energy_mae_ratio_baseline_over_model": base["energy_mae_eV_per_atom"]
        / max(test["energy_mae_eV_per_atom"], 1e-12),
        "finite_difference": fd,
        "steps": res.steps, "epochs_done": res.epochs_done, "stopped_early": res.stopped_early,
        "train_seconds": res.seconds, "test_structures": test["structures"],
        "stage_seconds": time.perf_counter() - t0, "stage_cpu_seconds": _cpu_seconds() - c0,
    }
    # a diverged training (NaN/inf loss or metric) fails here, before any output is written
    history_json = _finite_json(res.history, "train stage: training history (losses)")
    metrics_json = _finite_json(out, "train stage: results/januspipe/train/metrics.json")
    with atomic_dir(ctx.paths.models / "train") as tmp:
        torch.save(model.state_dict(), tmp / "model.pt")
        (tmp / "history.json").write_text(history_json)
    with atomic_dir(_results(ctx, "train")) as tmp:
        (tmp / "metrics.json").write_text(metrics_json)
    with ctx.child("reference_mlip", params={"seed": cfg.seed}) as run:
        run.log_metrics({"test_" + k: v for k, v in out["model"].items()})
        for row in res.history:
            run.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
    with ctx.child("per_element_mean_baseline") as run:
        run.log_metrics({"test_" + k: v for k, v in base.items()})
    ctx.log_metrics({"train.force_mae_eV_per_A": test["force_mae_eV_per_A"],
                     "train.force_mae_ratio_baseline_over_model": out["force_mae_ratio_baseline_over_model"]})
    return out


# -- phase-cost profiling ---------------------------------------------------------------------------
@stage_task
def profile(ctx: StageContext) -> dict:
    from components.januspipe.profiler import profile_machine
    from components.januspipe.validation import cores
    from components.mlip.data import load_split

    cfg = ctx.config
    t0, c0 = time.perf_counter(), _cpu_seconds()
    measured = profile_machine(cfg, load_split(data_dir(ctx), "train"), progress=ctx.progress)
    measured.pop("samples_s")  # every timed sample (for benchmarks/januspipe/profile_estimators.py); not kept
    ratios, latency = measured["phase_ratio_vs_P1"], measured["latency_s"]
    out = {**measured, "cores": cores(), "stage_seconds": time.perf_counter() - t0,
           "stage_cpu_seconds": _cpu_seconds() - c0}
    with atomic_dir(_results(ctx, "profile")) as tmp:
        (tmp / "costs.json").write_text(json.dumps(out, indent=2) + "\n")
    ctx.log_metrics({"profile.phase_ratio_P2": ratios[1], "profile.phase_ratio_P3": ratios[2],
                     "profile.phase_ratio_P4": ratios[3], "profile.p2p_latency_us": latency * 1e6,
                     "profile.force_graph_over_forward_bytes": out["force_graph_over_forward_bytes"]})
    return out


def _cost_model(ctx: StageContext):
    from components.januspipe.profiler import cost_model

    costs = _read_results(ctx, "profile", "costs.json")
    return cost_model(costs, costs["latency_s"], costs["bandwidth_Bps"]), costs


# -- real pipelined runs --------------------------------------------------------------------------
@stage_task
def pipeline(ctx: StageContext) -> dict:
    from components.januspipe.runtime import fork_server_cpu_seconds, start_fork_server
    from components.januspipe.validation import cores, validate
    from components.mlip.data import load_split
    from components.mlip.train import LossWeights

    cfg = ctx.config
    pc = cfg.pipeline
    t0, c0 = time.perf_counter(), _cpu_seconds()
    # the ranks are forked from a server that imports torch once (in the background, from now on)
    # instead of each rank starting a fresh interpreter; their CPU time is added below
    start_fork_server()
    costs, _ = _cost_model(ctx)
    n_cores = cores()
    runs, timelines, exact, ranks_cpu = validate(pc.process_counts, pc, costs, cfg.model,
                                                 load_split(data_dir(ctx), "train"), LossWeights.from_config(cfg.train),
                                                 seed=cfg.seed, n_cores=n_cores, progress=ctx.progress)

    out = {"runs": runs, "exactness_rel_error": exact, "cores": n_cores, "stage_seconds": time.perf_counter() - t0,
           "stage_cpu_seconds": _cpu_seconds() - c0 + ranks_cpu + fork_server_cpu_seconds()}
    with atomic_dir(_results(ctx, "pipeline")) as tmp:
        (tmp / "runs.json").write_text(json.dumps(out, indent=2) + "\n")
        (tmp / "timelines.json").write_text(json.dumps(timelines) + "\n")
    for row in runs:
        with ctx.child(f"real_{row['schedule']}_{row['processes']}p", params={"schedule": row["params"]}) as run:
            run.log_metrics({k: v for k, v in row.items() if isinstance(v, (int, float))})
    ctx.log_metrics({"pipeline.exactness_max_rel_error": max(exact.values())})
    return out


def _max_abs_errors(runs: list[dict], key: str, name: str) -> dict[str, float]:
    """``{name: max |run[key]|, name_<p>proc: the same over the runs with p processes}``."""
    out = {name: max(abs(r[key]) for r in runs)}
    for p in sorted({r["processes"] for r in runs}):
        out[f"{name}_{p}proc"] = max(abs(r[key]) for r in runs if r["processes"] == p)
    return out


def _torch_one_thread() -> None:
    import torch

    torch.set_num_threads(1)


@contextlib.contextmanager
def _process_map(workers: int):
    """``map``-like function running pure, picklable functions in ``workers`` fresh processes (spawned,
    not forked from this process, which runs Prefect/MLflow threads; our children, so their CPU time
    is in ``_cpu_seconds`` once the pool is shut down); the built-in ``map`` for one worker. Results
    come back in input order."""
    if workers <= 1:
        yield map
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_torch_one_thread) as pool:
        yield lambda fn, items: pool.map(fn, items, chunksize=1)


# -- simulation ---------------------------------------------------------------------------------------
@stage_task
def simulate(ctx: StageContext) -> dict:
    from components.januspipe import plots
    from components.januspipe.schedules import SCHEDULE_NAMES
    from components.januspipe.simulator import (canonical_1f1b_budget, ideal_makespan, simulate as sim,
                                                simulate_candidates, tune)
    from components.januspipe.validation import cores

    cfg = ctx.config
    sc = cfg.simulate
    t0, c0 = time.perf_counter(), _cpu_seconds()
    costs, raw_costs = _cost_model(ctx)
    real = _read_results(ctx, "pipeline", "runs.json")
    train_metrics = _read_results(ctx, "train", "metrics.json")
    timelines = _read_results(ctx, "pipeline", "timelines.json")
    nb = sc.num_blocks
    spm = costs.structures_per_microbatch

    # every (devices, micro-batches) point swept below; the candidates of each schedule's parameter grid
    # are independent pure simulations: build them first in one process per core (the WaveK budget
    # admissions at 16-32 devices dominate), then tune (bisections, selection) on the memo
    points = [(D, sc.microbatches_per_device * D) for D in sc.devices]
    points += [(sc.headline_devices, f * sc.headline_devices) for f in sc.extra_microbatch_factors]
    points.append((sc.timeline_devices, sc.microbatches_per_device * sc.timeline_devices))
    budget_of = {p: canonical_1f1b_budget(p[0], p[1], costs, nb) for p in dict.fromkeys(points)}
    jobs = [(name, D, M, None if name == "gpipe4" else budget_of[(D, M)])
            for D, M in budget_of for name in SCHEDULE_NAMES]
    real_pngs: dict[str, bytes] = {}
    with _process_map(min(2, cores())) as pmap:
        pending = simulate_candidates(jobs, costs, nb, map_fn=pmap)  # a pool has them all submitted now
        for key, tl in timelines.items():  # the real-vs-simulated timelines meanwhile (plots only)
            f = plots.timelines_real_vs_sim([tuple(e) for e in tl["real"]], [tuple(e) for e in tl["sim"]],
                                            tl["devices"], key)
            buf = io.BytesIO()
            f.savefig(buf, format="png", dpi=90)
            real_pngs[key] = buf.getvalue()
            plots.close(f)
        cache = dict(pending)
    ctx.progress("simulated %d tuning candidates (%d points)", len(cache), len(budget_of))
    swept: dict[tuple[int, int], tuple[list[dict], dict[str, Any], float]] = {}

    def sweep(devices: int, M: int) -> tuple[list[dict], dict[str, Any], float]:
        if (devices, M) in swept:  # a pure function of (devices, M): the timeline point is swept above
            rows, best, budget = swept[(devices, M)]
            return [dict(r) for r in rows], dict(best), budget
        budget = budget_of[(devices, M)]
        rows, best = [], {}
        for name in SCHEDULE_NAMES:
            tuned = tune(name, devices, M, costs, nb, None if name == "gpipe4" else budget, cache=cache)
            if tuned.best is None:
                continue
            best[name] = tuned
            row = tuned.best.row(spm)
            row["candidates"] = len(tuned.candidates)
            row["memory_budget_MiB"] = budget / 2**20 if name != "gpipe4" else None
            rows.append(row)
        swept[(devices, M)] = ([dict(r) for r in rows], dict(best), budget)
        return rows, best, budget

    table: list[dict[str, Any]] = []
    headline: dict[str, Any] = {}
    budgets: dict[int, float] = {}
    for D in sc.devices:
        M = sc.microbatches_per_device * D
        ctx.progress("simulating %d devices, %d micro-batches (every schedule's parameter sweep)", D, M)
        rows, best, budget = sweep(D, M)
        budgets[D] = budget / 2**20
        ideal = ideal_makespan(D, M, costs, nb)
        for r in rows:
            r["efficiency_vs_ideal"] = ideal / r["makespan_s"]
        table += rows
        if D == sc.headline_devices:
            headline = {"rows": rows, "best": best, "budget": budget}
    extra_rows = []
    for f in sc.extra_microbatch_factors:
        D = sc.headline_devices
        ctx.progress("simulating %d devices with M = %d x devices", D, f)
        rows, _, _ = sweep(D, f * D)
        extra_rows += rows

    def best(name: str):
        return headline_best(headline["best"], name, headline["budget"], sc.headline_devices)

    def thr(name: str) -> float:
        return best(name).throughput(spm)

    mem_1f1b = best("1f1b4").peak_memory_max_bytes
    speed = {
        "speedup_vs_1f1b4": thr("wavek") / thr("1f1b4"),
        "speedup_vs_hanayo4": thr("wavek") / thr("hanayo4"),
        "memory_ratio_vs_1f1b4": best("wavek").peak_memory_max_bytes / mem_1f1b,
        "symfold_speedup_vs_1f1b4": thr("symfold") / thr("1f1b4"),
        "gpipe4_speedup_vs_1f1b4": thr("gpipe4") / thr("1f1b4"),
        "gpipe4_memory_ratio_vs_1f1b4": best("gpipe4").peak_memory_max_bytes / mem_1f1b,
    }
    by_sched = {r["schedule"]: r for r in headline["rows"]}

    # simulated timelines at a small device count, the real-vs-sim validation
    Dt = sc.timeline_devices
    Mt = sc.microbatches_per_device * Dt
    _, best_t, _ = sweep(Dt, Mt)
    runs = real["runs"]
    with atomic_dir(ctx.paths.plots) as tmp:
        fig = plots.throughput_and_memory(table, budgets)
        fig.savefig(tmp / "throughput_memory.png", dpi=110)
        ctx.log_figure(fig, "throughput_memory.png")
        for name, tuned in best_t.items():
            res = sim(tuned.schedule, costs, nb, keep_timeline=True)
            ev = [(d, a.phase, a.microbatch, a.stage, s, e) for d, a, s, e in res.timeline]
            f = plots.timeline(ev, Dt, f"{tuned.schedule.label}: simulated, {Dt} devices, {Mt} micro-batches "
                                       f"(bubble {res.bubble_ratio:.0%}, peak {res.peak_memory_max_bytes / 2**20:.0f} MiB)")
            f.savefig(tmp / f"timeline_sim_{name}.png", dpi=100)
        for key, png in real_pngs.items():
            (tmp / f"timeline_real_{key}.png").write_bytes(png)
        f = plots.real_vs_sim_bars(runs)
        f.savefig(tmp / "real_vs_sim.png", dpi=110)
        ctx.log_figure(f, "real_vs_sim.png")
        _write_csv(tmp / "throughput.csv", table)
        _write_csv(tmp / "real_runs.csv", [{k: v for k, v in r.items() if not isinstance(v, list)} for r in runs])
        seconds = {s: _stage_seconds(ctx, s) for s in ("data", "train", "profile", "pipeline")}
        seconds["simulate"] = time.perf_counter() - t0
        cpu = {s: _stage_seconds(ctx, s, "stage_cpu_seconds") for s in ("data", "train", "profile", "pipeline")}
        cpu["simulate"] = _cpu_seconds() - c0
        metrics = {
            "paper": PAPER, "profile": cfg.profile,
            "accuracy": {
                "force_mae_eV_per_A": train_metrics["model"]["force_mae_eV_per_A"],
                "energy_mae_eV_per_atom": train_metrics["model"]["energy_mae_eV_per_atom"],
                "baseline_force_mae_eV_per_A": train_metrics["per_element_mean"]["force_mae_eV_per_A"],
                "baseline_energy_mae_eV_per_atom": train_metrics["per_element_mean"]["energy_mae_eV_per_atom"],
                "force_mae_ratio_baseline_over_model": train_metrics["force_mae_ratio_baseline_over_model"],
                "fd_force_max_abs_err_eV_per_A": train_metrics["finite_difference"]["force_max_abs_err_eV_per_A"],
                "fd_stress_max_abs_err_eV_per_A3": train_metrics["finite_difference"]["stress_max_abs_err_eV_per_A3"],
            },
            "exactness": {"max_rel_grad_error": max(real["exactness_rel_error"].values()),
                          "per_schedule": real["exactness_rel_error"]},
            "phase_costs": {"ratio_vs_P1": dict(zip(("P1", "P2", "P3", "P4"), raw_costs["phase_ratio_vs_P1"])),
                            "force_graph_over_forward_bytes": raw_costs["force_graph_over_forward_bytes"],
                            "p2p_latency_us": raw_costs["latency_s"] * 1e6},
            "headline": {"devices": sc.headline_devices, "microbatches": sc.microbatches_per_device * sc.headline_devices,
                         "memory_budget_MiB": headline["budget"] / 2**20, **speed},
            "throughput": {f"{name}": {"throughput_structures_per_s": r["throughput_structures_per_s"],
                                       "bubble_ratio": r["bubble_ratio"], "peak_activation_MiB": r["peak_activation_MiB"]}
                           for name, r in by_sched.items()},
            "simulator": {**_max_abs_errors(runs, "sim_error", "max_abs_error"),
                          **_max_abs_errors(runs, "sim_load_model_error", "max_abs_error_load_model"),
                          "max_abs_error_idle_machine": max(abs(r["sim_idle_machine_error"]) for r in runs),
                          "max_abs_error_profile_costs": max(abs(r["sim_profile_costs_error"]) for r in runs),
                          "min_cpu_share_while_busy": min(r["cpu_share_while_busy"] for r in runs),
                          "external_load_min": min(r["external_load"] for r in runs),
                          "external_load_max": max(r["external_load"] for r in runs)},
            "real_runs": {f"{r['schedule']}_{r['processes']}p": {
                "measured_makespan_s": r["measured_makespan_s"], "sim_makespan_s": r["sim_makespan_s"],
                "sim_error": r["sim_error"], "sim_load_model_makespan_s": r["sim_load_model_makespan_s"],
                "sim_load_model_error": r["sim_load_model_error"], "sim_idle_machine_error": r["sim_idle_machine_error"],
                "external_load": r["external_load"], "message_delay_ms": 1e3 * (r.get("message_delay_s") or 0.0),
                "throughput_structures_per_s": r["throughput_structures_per_s"],
                "measured_peak_saved_MiB": r["measured_peak_saved_MiB"]} for r in runs},
            "stage_seconds": seconds,
            "stage_cpu_seconds": cpu,
            "quick_profile_seconds": sum(seconds.values()),
            "quick_profile_cpu_seconds": sum(cpu.values()),
        }
        # the metrics are checked (finite, JSON) before the plots folder is committed: a failure
        # leaves the previous outputs in place
        _finite_json(metrics, "simulate stage: metrics/januspipe.json")
    ctx.log_artifact(ctx.paths.plots, "plots")
    ctx.log_table(table, "simulated_throughput")
    ctx.log_table([{k: v for k, v in r.items() if not isinstance(v, list)} for r in runs], "real_vs_simulated")
    if extra_rows:
        ctx.log_table(extra_rows, "simulated_microbatch_sweep")

    write_json(ctx.paths.metrics, metrics)
    ctx.log_metrics({k: v for k, v in speed.items()})
    ctx.log_metrics({"simulator_max_abs_error": metrics["simulator"]["max_abs_error"],
                     "exactness_max_rel_grad_error": metrics["exactness"]["max_rel_grad_error"]})
    for name, r in by_sched.items():
        with ctx.child(f"sim_{name}_{sc.headline_devices}dev", params={"schedule": r["params"]}) as run:
            run.log_metrics({k: v for k, v in r.items() if isinstance(v, (int, float))})
    return metrics


def headline_best(best: dict[str, Any], name: str, budget_bytes: float, devices: int):
    """The simulated result of schedule ``name``'s tuned candidate at the headline device count
    (``best``: the sweep's tuned schedules by name); InputError naming the schedule and the memory
    budget when none of its candidates fits (it then has no row to compare: before, a bare KeyError)."""
    if name not in best:
        raise InputError(f"simulate stage: schedule {name!r} has no candidate within the memory budget of "
                         f"{budget_bytes / 2**20:.3f} MiB ({budget_bytes:.0f} bytes, 1F1B-4's peak) at "
                         f"simulate.headline_devices={devices}; expected every schedule of the throughput claims "
                         f"to fit (choose another headline device count)")
    return best[name].best


def _stage_seconds(ctx: StageContext, stage: str, key: str = "stage_seconds") -> float:
    name = {"data": None, "train": "metrics.json", "profile": "costs.json", "pipeline": "runs.json"}[stage]
    try:
        if stage == "data":
            return float(json.loads((data_dir(ctx) / "manifest.json").read_text()).get(key, 0.0))
        return float(_read_results(ctx, stage, name).get(key, 0.0))
    except (InputError, OSError, ValueError):
        return 0.0


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    from tasks.tracking import rows_to_csv

    path.write_text(rows_to_csv(rows))


@flow(name="januspipe", log_prints=True)
def januspipe(config: JanuspipeConfig | None = None, stages: list[str] | None = None) -> dict:
    """JanusPipe: four-phase (double-backward) pipeline-parallel training of a conservative MLIP;
    real gloo runs of GPipe-4, 1F1B-4, Hanayo-4 and the SymFold/WaveK reconstructions, and a
    discrete-event simulator at 2-32 devices fed by measured phase costs."""
    cfg = flow_config(JanuspipeConfig, config)
    return run_paper(PAPER, cfg, stages, {"data": data, "train": train, "profile": profile,
                                          "pipeline": pipeline, "simulate": simulate})


FLOW = januspipe
