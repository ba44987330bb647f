"""VFDA flow: synthetic institutes -> Flower federations (strategy x variant x seed) -> evaluation.

Stages (``python -m flows vfda <stage>``; DVC stages ``vfda_<stage>``):

- ``data``: institutes as NIfTI + MONAI datalists -> ``data/vfda`` (+ ``results/vfda/data/summary.json``)
- ``federate``: every federation in one Flower simulation -> ``models/vfda/federate`` (global models,
  FedBN norm layers) and ``results/vfda/federate`` (per-round, per-client records); MLflow: one nested
  run per federation with Dice per round and per client
- ``evaluate``: Dice per institute, held-in / held-out, mean +- std over seeds, each gain's 90 % interval
  (seeds and test volumes resampled) -> ``metrics/vfda.json``,
  ``plots/vfda``; MLflow: the paper-style table and figures
"""
from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from pathlib import Path

from prefect import flow

from components.base import InputError
from components.io import read_json_record
from components.vfda.config import VfdaConfig
from tasks.io import atomic_dir, write_json
from tasks.pipeline import StageContext, flow_config, run_paper, stage_task

PAPER = "vfda"
CONFIG = VfdaConfig
STAGES = ("data", "federate", "evaluate")


def _results(ctx: StageContext, stage: str) -> Path:
    return ctx.paths.results / stage


def _process_span() -> dict[str, float]:
    """This process's start and now (epoch s): a stage's cost including imports, Prefect and MLflow."""
    import psutil

    return {"process_start": psutil.Process().create_time(), "process_end": time.time()}


def _pipeline_seconds(spans: list[dict[str, float]]) -> float:
    """Wall time of the stage processes (stages run in one process, e.g. ``all``, count once)."""
    by_process: dict[float, float] = {}
    for sp in spans:
        start = round(sp["process_start"], 1)
        by_process[start] = max(by_process.get(start, 0.0), sp["process_end"] - sp["process_start"])
    return sum(by_process.values())


@stage_task
def data(ctx: StageContext) -> dict:
    from components.vfda.data import generate_dataset, import_dataset, validate_dataset

    t0, c0 = time.perf_counter(), time.process_time()
    with atomic_dir(ctx.paths.data) as tmp:  # data/vfda appears whole or not at all
        if ctx.config.data.root:  # a real dataset in the same layout: validated, then copied
            manifest = import_dataset(ctx.config.data.root, tmp, ctx.config.data)
        else:
            manifest = generate_dataset(ctx.config.data, tmp, seed=ctx.config.seed, progress=ctx.progress)
        validate_dataset(tmp, ctx.config.data)
    wall = time.perf_counter() - t0
    counts = {e["name"]: e["num_training"] + e["num_validation"] for e in manifest["institutes"]}
    summary = {"institutes": counts, "volumes": sum(counts.values()), "wall_s": wall,
               "cpu_s": time.process_time() - c0, **_process_span()}
    with atomic_dir(_results(ctx, "data")) as tmp:
        write_json(tmp / "summary.json", summary)
    ctx.log_metrics({"data.volumes": summary["volumes"], "data.wall_s": wall,
                     **{f"data.volumes.{k}": v for k, v in counts.items()}})
    return summary


@stage_task
def federate(ctx: StageContext) -> dict:
    from components.vfda.data import check_federation, validate_dataset
    from components.vfda.federation import RunSettings, plan
    from components.vfda.server_app import FederationError
    from components.vfda.simulation import simulate

    cfg: VfdaConfig = ctx.config
    manifest = validate_dataset(ctx.paths.data, cfg.data)  # bad datalists stop here with a clear error
    check_federation(manifest, ctx.paths.data, cfg)  # min_train_clients, fault_partition vs the real institutes
    feds = plan(cfg)
    ctx.progress("vfda federate: %d federations (%s x %s x seeds %s) in one Flower simulation",
                 len(feds), cfg.federation.strategies, cfg.federation.variants, cfg.federation.seeds)
    t0, c0 = time.perf_counter(), time.process_time()
    models_dir = ctx.paths.models / "federate"
    with atomic_dir(models_dir) as mtmp, atomic_dir(_results(ctx, "federate")) as rtmp, _component_progress(ctx):
        try:
            summary = simulate(RunSettings(config=cfg, data_dir=ctx.paths.data, out_dir=rtmp,
                                           federations=tuple(feds)))
        except FederationError as err:  # every round lacked replies: the clients' data or the parameters
            raise InputError(f"vfda federate: {err}") from err
        for fed in feds:  # weights to models/, records stay in results/
            src = rtmp / "federations" / fed.id
            (mtmp / fed.id).mkdir(parents=True)
            for pt in src.glob("*.pt"):
                shutil.move(str(pt), mtmp / fed.id / pt.name)
        wall = time.perf_counter() - t0
        summary["federate_wall_s"] = wall
        summary["federate_process_cpu_s"] = time.process_time() - c0  # this process: ServerApp, Ray driver
        summary.update(_process_span())
        write_json(rtmp / "run.json", summary)
        histories = [json.loads((rtmp / "federations" / f.id / "history.json").read_text()) for f in feds]
    for hist in histories:
        _log_federation(ctx, hist)
    ctx.log_metrics({"federate.wall_s": wall, "federate.federations": len(feds)})
    return {"federations": len(feds), "wall_s": wall}


@contextlib.contextmanager
def _component_progress(ctx: StageContext):
    """Show the component's progress lines (one per finished federation, client failures) in the
    flow's log; Flower's own per-round INFO chatter is reduced to warnings meanwhile."""
    run_log = ctx.log

    class Forward(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            run_log.log(record.levelno, record.getMessage())

    def warnings_only(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING

    handler, comp, flwr_log = Forward(logging.INFO), logging.getLogger("paperworks.vfda"), logging.getLogger("flwr")
    old_level, old_prop = comp.level, comp.propagate
    comp.addHandler(handler)
    comp.setLevel(logging.INFO)
    comp.propagate = False
    flwr_log.addFilter(warnings_only)  # a filter holds even if Flower resets the logger's level
    try:
        yield
    finally:
        comp.removeHandler(handler)
        comp.setLevel(old_level)
        comp.propagate = old_prop
        flwr_log.removeFilter(warnings_only)


def _log_federation(ctx: StageContext, hist: dict) -> None:
    """A nested MLflow run per federation: Dice per round (mean and per client), held-out per round."""
    params = {"strategy": hist["strategy"], "variant": hist["variant"], "seed": hist["seed"],
              "vfda_rule": hist["vfda_rule"]}
    with ctx.child(hist["federation"], params=params, tags={"stage": "federate", **params}) as run:
        for r in hist["rounds"]:
            m: dict[str, float] = {}
            ev = r.get("evaluate", {})
            if ev:
                m["dice"] = sum(v["dice"] for v in ev.values()) / len(ev)
                m.update({f"dice.{inst}": v["dice"] for inst, v in ev.items()})
            tr = r.get("train", {})
            if tr:
                m["train_loss"] = sum(v["train-loss"] for v in tr.values()) / len(tr)
                m.update({f"train_loss.{inst}": v["train-loss"] for inst, v in tr.items()})
            m.update({f"heldout_dice.{inst}": v["dice"] for inst, v in r.get("heldout", {}).items()})
            m["failed_clients"] = len(r.get("failures", []))
            run.log_metrics(m, step=r["round"])
        run.log_metrics({"wall_s": hist["wall_s"]})


@stage_task
def evaluate(ctx: StageContext) -> dict:
    from components.vfda.evaluation import evaluate_federation, load_history, paper_table, summarize
    from components.vfda.federation import plan

    cfg: VfdaConfig = ctx.config
    t0, c0 = time.perf_counter(), time.process_time()
    results_dir = _results(ctx, "federate")
    feds = plan(cfg)
    # every input is read and checked before anything is written or logged: a missing or bad file
    # must not leave new plots beside an old metrics/vfda.json
    data_rec = _read_record(_results(ctx, "data") / "summary.json", ("wall_s",), "vfda data")
    run = _read_record(results_dir / "run.json", ("federate_wall_s",), "vfda federate")
    results, histories = [], {}
    for i, fed in enumerate(feds):
        hist = load_history(results_dir, fed.id)
        histories[fed.id] = hist
        res = evaluate_federation(ctx.paths.models / "federate" / fed.id, hist, ctx.paths.data, cfg)
        res.update(strategy=fed.strategy, variant=fed.variant, seed=fed.seed, vfda_rule=fed.vfda_rule(cfg))
        results.append(res)
        ctx.progress("vfda evaluate %d/%d %s: held-in %.3f held-out %.3f", i + 1, len(feds), fed.id,
                     res["held_in_mean"], res["held_out_mean"])
    for fed, res in zip(feds, results):  # MLflow only once every federation has been evaluated
        params = {"strategy": fed.strategy, "variant": fed.variant, "seed": fed.seed, "vfda_rule": res["vfda_rule"]}
        with ctx.child(f"eval:{fed.id}", params=params, tags={"stage": "evaluate", **params}) as run_log:
            run_log.log_metrics({"dice.held_in": res["held_in_mean"], "dice.held_out": res["held_out_mean"],
                                 **{f"dice.{k}": v["dice"] for k, v in {**res["held_in"], **res["held_out"]}.items()}})
    summary = summarize(results)
    rules = {(f.strategy, f.variant): f.vfda_rule(cfg) for f in feds}
    table = paper_table(summary, rules)
    ctx.log_table(table, "dice_table")
    ctx.log_table([{"federation": f"{r['strategy']}-{r['variant']}-s{r['seed']}", "vfda_rule": r["vfda_rule"],
                    "held_in": round(r["held_in_mean"], 4), "held_out": round(r["held_out_mean"], 4),
                    **{k: round(v["dice"], 4) for k, v in {**r["held_in"], **r["held_out"]}.items()}}
                   for r in results], "dice_per_federation")

    with atomic_dir(ctx.paths.plots) as tmp:
        _plots(tmp, summary, histories, feds, rules)
    ctx.log_artifact(ctx.paths.plots, "plots")

    # stage time (inside the stage) and the wall time of the stage processes from their start
    # (imports, Prefect, MLflow included): pipeline_s is what `dvc repro vfda_evaluate` costs minus DVC
    timing: dict[str, float] = {"evaluate_s": time.perf_counter() - t0, "evaluate_cpu_s": time.process_time() - c0}
    timing["data_s"] = float(data_rec["wall_s"])
    timing["data_cpu_s"] = float(data_rec.get("cpu_s", 0.0))
    timing["federate_s"] = float(run["federate_wall_s"])
    timing["federate_server_cpu_s"] = float(run.get("federate_process_cpu_s", run.get("server_process_cpu_s", 0.0)))
    timing["federate_client_cpu_s"] = float(run.get("client_cpu_s", 0.0))
    spans = [r for r in (data_rec, run) if "process_start" in r] + [_process_span()]
    timing["pipeline_s"] = _pipeline_seconds(spans)
    metrics = {"paper": PAPER, "profile": cfg.profile, "vfda_rule": cfg.vfda.rule,
               "federations": len(feds), "seeds": len(cfg.federation.seeds),
               "rounds": cfg.federation.num_rounds, **summary, "timing": timing}
    write_json(ctx.paths.metrics, metrics)
    flat = {f"gain.{s}.{v}.{k}": x for s, vs in summary["gain"].items() for v, d in vs.items()
            for k, x in d.items() if k in ("held_in", "held_out", "held_in_ci90_low", "held_out_ci90_low")}
    flat.update({f"dice.{s}.{v}.{k}": x for s, vs in summary["dice"].items() for v, d in vs.items()
                 for k, x in d.items() if k in ("held_in", "held_out")})
    ctx.log_metrics({**flat, **{f"timing.{k}": v for k, v in timing.items()}})
    ctx.log_artifact(ctx.paths.metrics)
    return metrics


def _read_record(path: Path, required: tuple[str, ...], stage: str) -> dict:
    """A stage's JSON record, with the numeric fields ``required``; InputError naming the file and
    what is expected when it is missing, not JSON, or lacks a field or has one that is not a number."""
    what = f"the record the {stage} stage writes (run `python -m flows {stage}` first)"
    rec = read_json_record(path, required, what)
    for key in (*required, "cpu_s", "process_start", "process_end", "federate_process_cpu_s",
                "server_process_cpu_s", "client_cpu_s"):
        if key in rec and (isinstance(rec[key], bool) or not isinstance(rec[key], (int, float))):
            raise InputError(f"{path}: {key}={rec[key]!r}; expected a number in {what}")
    return rec


def _plots(out: Path, summary: dict, histories: dict, feds: list, rules: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    from components.vfda.evaluation import variant_label

    strategies = list(summary["dice"])
    # Dice per round (federated evaluation on held-in test splits; server-side held-out), mean over seeds
    fig, axes = plt.subplots(1, len(strategies), figsize=(5 * len(strategies), 3.8), squeeze=False)
    rows = []
    for ax, strategy in zip(axes[0], strategies):
        for variant in summary["dice"][strategy]:
            hs = [h for h in histories.values() if h["strategy"] == strategy and h["variant"] == variant]
            rounds = [r["round"] for r in hs[0]["rounds"]]
            held_in = np.mean([[np.mean([v["dice"] for v in r["evaluate"].values()]) if r["evaluate"] else np.nan
                                for r in h["rounds"]] for h in hs], axis=0)
            held_out = np.mean([[np.mean([v["dice"] for v in r["heldout"].values()]) if r["heldout"] else np.nan
                                 for r in h["rounds"]] for h in hs], axis=0)
            label = variant_label(strategy, variant, rules.get((strategy, variant), "-"))
            line, = ax.plot(rounds, held_in, marker="o", ms=3, label=f"{label} held-in")
            ax.plot(rounds, held_out, ls="--", color=line.get_color(), label=f"{label} held-out")
            rows += [{"round": rd, "method": label, "held_in": float(a), "held_out": float(b)}
                     for rd, a, b in zip(rounds, held_in, held_out)]
        ax.set_title(variant_label(strategy, "base", "-"))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("round")
        ax.set_ylabel("Dice")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "dice_per_round.png", dpi=110)
    plt.close(fig)
    import csv

    with open(out / "dice_per_round.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["round", "method", "held_in", "held_out"])
        w.writeheader()
        w.writerows(rows)

    # Dice per institute (mean over seeds)
    labels, per_inst = [], []
    for strategy in strategies:
        for variant, d in summary["dice"][strategy].items():
            labels.append(variant_label(strategy, variant, rules.get((strategy, variant), "-")))
            per_inst.append(d["per_institute"])
    insts = list(per_inst[0])
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(labels) + 2), 4))
    width = 0.8 / len(insts)
    x = np.arange(len(labels))
    for i, inst in enumerate(insts):
        ax.bar(x + i * width, [p[inst] for p in per_inst], width, label=inst)
    ax.set_xticks(x + 0.4 - width / 2)
    ax.set_xticklabels(labels, rotation=40, ha="right", fontsize=7)
    ax.set_ylabel("Dice (mean over seeds)")
    ax.legend(title="institute", fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "dice_per_institute.png", dpi=110)
    plt.close(fig)


@flow(name="vfda", log_prints=True)
def vfda(config: VfdaConfig | None = None, stages: list[str] | None = None) -> dict:
    """VFDA (IPMI 2023): federated 3D segmentation (Flower + MONAI) with vicinal feature-statistics
    augmentation; FedAvg / FedProx / FedBN x {base, +MixUp, +VFDA} x seeds, Dice per institute."""
    cfg = flow_config(VfdaConfig, config)
    return run_paper(PAPER, cfg, stages, {"data": data, "federate": federate, "evaluate": evaluate})


FLOW = vfda
