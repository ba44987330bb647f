"""Real pipelined runs beside the simulator's predictions, and the exactness check.

Used by the flow's ``pipeline`` stage and by ``benchmarks/januspipe/real_vs_sim.py`` (the same
comparison at other process counts or on another machine, without MLflow or Prefect).

:func:`real_vs_simulated` tunes every schedule for ``procs`` pipeline devices (same memory budget
as the flow: 1F1B-4's peak), runs them for real in one launch of ``procs`` ranks, and predicts each
run four ways (see the row keys): the validated one (``sim_error``) is the simulator fed with the
per-(stage, phase) wall times and message delays measured inside the same run, so that what it
tests is the action lists' waits and bubbles, not the machine's speed.
"""
from __future__ import annotations

import dataclasses
import os
import statistics
from typing import Any, Callable, Sequence

import torch

from components.base import InputError
from components.januspipe.config import PipelineConfig
from components.januspipe.simulator import CostModel

Progress = Callable[..., None]


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def run_device(pc: PipelineConfig) -> str:
    """The ranks' device: nccl runs one GPU per rank, gloo runs on the CPU."""
    return "cuda" if pc.backend == "nccl" else "cpu"


def exactness_runs(pc: PipelineConfig, procs: int, costs: CostModel, model_cfg, structures: Sequence, weights,
                   seed: int) -> tuple[list, list[str], dict[str, torch.Tensor]]:
    """Float64 runs of every schedule at ``procs`` devices on a tiny-width copy of the model, and
    the single-process double-backward reference gradients on the same micro-batches. Each schedule
    is tuned as the timed runs of :func:`real_vs_simulated` tune it (same devices, micro-batches,
    costs and memory budget), so the action lists checked are the ones timed (until 2026-11-27 they
    were tuned without a budget: every micro-batch admitted, or cap = D, which the timed runs were not).

    Returns ``(specs, labels, reference)``; compare with :func:`components.januspipe.runtime.exactness_error`."""
    from components.januspipe.runtime import RunSpec
    from components.januspipe.simulator import canonical_1f1b_budget, tune
    from components.mlip.graph import GraphDataset
    from components.mlip.model import MatrisLikeMLIP
    from components.mlip.train import prepare_model, reference_gradients

    m = pc.microbatches_per_device * procs
    if len(structures) < m:
        raise InputError(f"exactness check at {procs} processes: {len(structures)} structures; expected >= {m}")
    tiny = model_cfg.model_copy(update={"num_blocks": pc.num_blocks, "hidden_dim": 8})
    structs = list(structures[:m])
    torch.manual_seed(seed)
    ref_model = MatrisLikeMLIP(tiny).double()
    prepare_model(ref_model, structs)
    ds = GraphDataset(structs, tiny.cutoff, tiny.three_body_cutoff)
    reference = reference_gradients(ref_model, [ds.batch([i], dtype=torch.float64) for i in range(m)], weights)
    budget = canonical_1f1b_budget(procs, m, costs, pc.num_blocks)
    specs, labels = [], []
    for name in pc.schedules:
        sched = tune(name, procs, m, costs, pc.num_blocks, None if name == "gpipe4" else budget).schedule
        if sched is None:   # nothing fits the budget: the timed runs skip it too
            continue
        specs.append(RunSpec(sched, tiny, structs, weights, 1, steps=0, warmup=1, dtype="float64",
                             seed=seed, measure_memory=False, return_grads=True, optimizer_step=False,
                             device=run_device(pc)))
        labels.append(sched.label)
    return specs, labels, reference


def real_vs_simulated(procs: int, pc: PipelineConfig, costs: CostModel, model_cfg, structures: Sequence, weights, *,
                      seed: int, n_cores: int | None = None, extra_specs: Sequence = (),
                      progress: Progress | None = None) -> tuple[list[dict], dict[str, Any], list, float]:
    """Real runs of every schedule in ``pc.schedules`` at ``procs`` devices and their simulations.

    ``extra_specs`` ride along in the same launch (their per-rank results are returned).
    Returns ``(rows, timelines, extra_results, ranks_cpu_seconds)``."""
    from components.januspipe.loadmeter import ExternalLoadSampler
    from components.januspipe.runtime import RunSpec, launch, run_many, summarize
    from components.januspipe.schedules import check_stages, dropped_candidates
    from components.januspipe.simulator import canonical_1f1b_budget, simulate, tune

    say = progress or (lambda *a: None)
    n_cores = n_cores or cores()
    M = pc.microbatches_per_device * procs
    need = M * pc.structures_per_microbatch
    if need > len(structures):
        raise InputError(f"{len(structures)} training structures; a {procs}-process run needs {need} "
                         f"(pipeline.microbatches_per_device x processes x structures_per_microbatch)")
    model_cfg = model_cfg.model_copy(update={"num_blocks": pc.num_blocks})
    budget = canonical_1f1b_budget(procs, M, costs, pc.num_blocks)
    specs, chosen, dropped = [], [], {}
    for name in pc.schedules:
        # a candidate needing more stages than pipeline.num_blocks (Hanayo-4 with two waves needs 4 x
        # processes) is not tuned at this count: said here and recorded in the run's row, not silent
        dropped[name] = [",".join(f"{k}={v}" for k, v in sorted(p.items()))
                         for p in dropped_candidates(name, procs, M, pc.num_blocks)]
        if dropped[name]:
            say("%s at %d processes: %d grid candidate(s) need more stages than pipeline.num_blocks=%d and are "
                "not tuned: %s", name, procs, len(dropped[name]), pc.num_blocks, "; ".join(dropped[name]))
        tuned = tune(name, procs, M, costs, pc.num_blocks, None if name == "gpipe4" else budget)
        if tuned.schedule is None:
            say("%s at %d processes: no configuration fits the memory budget; skipped", name, procs)
            continue
        check_stages(tuned.schedule.num_stages, pc.num_blocks, f"{name} at {procs} processes")
        chosen.append((name, tuned))
        specs.append(RunSpec(tuned.schedule, model_cfg, list(structures[:need]), weights, pc.structures_per_microbatch,
                             steps=pc.steps, warmup=pc.warmup, dtype=pc.dtype, seed=seed, device=run_device(pc)))
    over = max(1.0, procs / n_cores)
    say("real runs at %d processes (%d micro-batches, %s): %s", procs, M,
        "oversubscribed %.1fx on %d cores" % (over, n_cores) if over > 1 else f"{n_cores} cores",
        ", ".join(t.schedule.label for _, t in chosen))
    with ExternalLoadSampler() as load:  # other jobs' runnable tasks while the ranks run
        results, cpu_s = launch(run_many, procs, list(specs) + list(extra_specs), backend=pc.backend,
                                timeout=pc.timeout_s)
    extra = [[r[len(specs) + k] for r in results] for k in range(len(extra_specs))]
    rows, timelines = [], {}
    for k, (name, tuned) in enumerate(chosen):
        per_rank = [r[k] for r in results]
        summ = summarize(per_rank, tuned.schedule)
        # external load (other jobs' CPU-bound tasks) during each timed step of this schedule
        steps_l = [load.mean(min(r["windows"][i][0] for r in per_rank), max(r["windows"][i][1] for r in per_rank))
                   for i in range(len(per_rank[0]["windows"]))]
        ext = statistics.mean(x for x in steps_l if x is not None) if any(x is not None for x in steps_l) else 0.0
        # (1) in-run calibration, the validated prediction: each (stage, phase)'s mean *wall* time
        #     measured inside this run (what the machine - shared with other jobs, possibly more ranks
        #     than cores - actually gave each action; the mean keeps every device's busy time) and the
        #     mean delay of the messages a rank waited for in this run (wake-up included); from
        #     them the simulator predicts the waits and bubbles of the action lists
        delay = summ["message_delay_s"]
        inrun_costs = costs if delay is None else dataclasses.replace(costs, latency_s=delay, bandwidth_Bps=1e18)
        sim_inrun = simulate(tuned.schedule, inrun_costs, pc.num_blocks, keep_timeline=True,
                             stage_costs=summ["stage_wall_mean_s"])
        # (2) load model: the run's per-phase *CPU* times, the cores shared (processor sharing)
        #     between the busy ranks and the external load sampled during the step
        sim_load = simulate(tuned.schedule, costs, pc.num_blocks, stage_costs=summ["stage_cpu_mean_s"],
                            cores=n_cores, external_load=ext)
        # (3) idle machine: CPU times, no external load
        sim_idle = simulate(tuned.schedule, costs, pc.num_blocks, stage_costs=summ["stage_cpu_mean_s"], cores=n_cores)
        # (4) the profile's costs (one process, CPU time) under the same load model
        sim_profile = simulate(tuned.schedule, costs, pc.num_blocks, cores=n_cores, external_load=ext)
        measured = summ["makespan_s"]
        rows.append({
            "schedule": name, "params": tuned.schedule.label, "processes": procs, "microbatches": M,
            "grid_candidates_dropped": len(dropped[name]), "grid_dropped": "; ".join(dropped[name]),
            "oversubscription": over, "measured_makespan_s": measured, "measured_step_s": summ["step_s"],
            "measured_makespans_s": summ["makespans_s"],
            "throughput_structures_per_s": M * pc.structures_per_microbatch / summ["step_s"],
            "external_load": ext, "cores": n_cores, "message_delay_s": delay,
            "messages_waited": summ["messages_waited"], "profile_latency_s": costs.latency_s,
            "sim_makespan_s": sim_inrun.makespan_s, "sim_error": sim_inrun.makespan_s / measured - 1.0,
            "sim_load_model_makespan_s": sim_load.makespan_s,
            "sim_load_model_error": sim_load.makespan_s / measured - 1.0,
            "sim_idle_machine_makespan_s": sim_idle.makespan_s,
            "sim_idle_machine_error": sim_idle.makespan_s / measured - 1.0,
            "cpu_share_while_busy": sum(map(sum, summ["stage_cpu_s"])) / max(sum(map(sum, summ["stage_costs_s"])),
                                                                             1e-12),
            "sim_profile_costs_makespan_s": sim_profile.makespan_s,
            "sim_profile_costs_error": sim_profile.makespan_s / measured - 1.0,
            "measured_peak_saved_MiB": max(summ["peak_saved_bytes"]) / 2**20,
            "sim_peak_activation_MiB": sim_inrun.peak_memory_max_bytes / 2**20,
            "stage_wall_s": summ["stage_costs_s"], "stage_cpu_s": summ["stage_cpu_s"]})
        real_events = [(r["pp"], ph, mb, st, ts, te) for r in per_rank for (ph, mb, st, ts, te, *_) in r["actions"][-1]
                       if r["gp"] == 0 and r["dp"] == 0]
        sim_events = [(d, a.phase, a.microbatch, a.stage, s, e) for d, a, s, e in sim_inrun.timeline]
        timelines[f"{name}_{procs}p"] = {"devices": procs, "real": real_events, "sim": sim_events}
        say("%s %dp: measured %.3f s, simulated %.3f s (%+.1f%%; load model %+.1f%% at external load %.2f)",
            name, procs, measured, sim_inrun.makespan_s, 100 * rows[-1]["sim_error"],
            100 * rows[-1]["sim_load_model_error"], ext)
    return rows, timelines, extra, cpu_s


def validate(process_counts: Sequence[int], pc: PipelineConfig, costs: CostModel, model_cfg, structures: Sequence,
             weights, *, seed: int, n_cores: int | None = None,
             progress: Progress | None = None) -> tuple[list[dict], dict[str, Any], dict[str, float], float]:
    """:func:`real_vs_simulated` at every count of ``process_counts``, with the float64 exactness
    check of every schedule (:func:`exactness_runs`: the timed action lists among them) riding along
    in each launch.

    Returns ``(rows, timelines, exactness_rel_error per "<schedule label> @ <n> processes",
    ranks_cpu_seconds)``."""
    from components.januspipe.runtime import exactness_error

    rows: list[dict] = []
    timelines: dict[str, Any] = {}
    exact: dict[str, float] = {}
    ranks_cpu = 0.0
    for procs in dict.fromkeys(process_counts):
        specs, labels, reference = exactness_runs(pc, procs, costs, model_cfg, structures, weights, seed)
        r, tl, extra_results, cpu_s = real_vs_simulated(procs, pc, costs, model_cfg, structures, weights, seed=seed,
                                                        n_cores=n_cores, extra_specs=specs, progress=progress)
        exact.update({f"{label} @ {procs} processes": exactness_error(res, reference)
                      for label, res in zip(labels, extra_results)})
        rows += r
        timelines.update(tl)
        ranks_cpu += cpu_s
    return rows, timelines, exact, ranks_cpu
