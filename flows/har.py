"""RT-HARE / IMFE flow: data -> teacher (flow + stream CNNs) -> IMFE distillation -> evaluate.

``python -m flows har <stage>`` runs one stage (what ``dvc repro har_<stage>`` calls);
``python -m flows har all`` runs every stage in one process. See components/har/README.md.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from prefect import flow

from components.base import InputError
from components.har.config import HarConfig
from components.io import read_json_record
from tasks.io import atomic_dir, atomic_file, write_json
from tasks.pipeline import StageContext, flow_config, run_paper, stage_task
from tasks.timing import stage_cost

PAPER = "har"
CONFIG = HarConfig
STAGES = ("data", "teacher", "imfe", "evaluate")


def _timing_file(paths, stage: str) -> Path:
    return paths.results / stage / "timing.json"


@stage_task
def data(ctx: StageContext) -> dict:
    """Render the synthetic action clips (or import a UCF101-layout folder) into data/har. A UCF101
    folder is scanned (InputError naming ``data.ucf101_root``) before data/har is created."""
    from components.har.data import class_counts, generate_dataset, import_ucf101, scan_ucf101

    cfg = ctx.config
    scanned = scan_ucf101(cfg.data.ucf101_root or "", cfg.data.ucf101_split) if cfg.data.source == "ucf101" else None
    with atomic_dir(ctx.paths.data) as tmp:
        if cfg.data.source == "synthetic":
            clips = generate_dataset(cfg.data, tmp, seed=cfg.seed, progress=ctx.progress)
        else:
            clips = import_ucf101(cfg.data, tmp, cfg.opticalflow.clip_len, progress=ctx.progress, scanned=scanned)
    counts = {s: class_counts(clips, s) for s in ("train", "test")}
    out = {"num_clips": len(clips), "train_clips": sum(counts["train"].values()),
           "test_clips": sum(counts["test"].values())}
    ctx.log_metrics({f"data.{k}": v for k, v in out.items()})
    with atomic_dir(ctx.paths.results / "data") as tmp:
        write_json(tmp / "timing.json", {"stage": "data", **stage_cost(), "class_counts": counts})
    return out


@stage_task
def teacher(ctx: StageContext) -> dict:
    """TV-L1 / Farnebäck / DIS flow of every chunk; RGB and flow stream CNNs (TV-L1 = the teacher).
    The clips are read and checked before the outputs are created: a bad input leaves nothing behind."""
    from components.har.experiment import load_splits, run_teacher

    inputs = load_splits(ctx.paths.data, ctx.config.opticalflow.clip_len)
    with atomic_dir(ctx.paths.models / "teacher") as models, atomic_dir(ctx.paths.results / "teacher") as res:
        summary = run_teacher(ctx.config, ctx.paths.data, models, res, ctx.progress, inputs=inputs)
        ctx.log_metrics({"teacher.chunk_accuracy": summary["chunk_accuracy"],
                         "teacher.flow_ms_per_pair": {m: t["ms_per_pair"] for m, t in summary["flow_cpu"].items()}})
        write_json(res / "timing.json", {"stage": "teacher", **stage_cost()})    # after the MLflow logging
    return {"chunk_accuracy": summary["chunk_accuracy"]}


@stage_task
def imfe(ctx: StageContext) -> dict:
    """Distil IMFE onto the TV-L1 flow stream; export to ONNX and check onnxruntime parity (the stage
    fails when ONNX and PyTorch disagree by more than ``experiment.ONNX_PARITY_TOL``). The clips, the
    teacher and its flow are read and checked before the outputs are created."""
    from components.har.experiment import imfe_inputs, run_imfe

    teacher_models, flows_dir = ctx.paths.models / "teacher", ctx.paths.results / "teacher"
    inputs = imfe_inputs(ctx.config, ctx.paths.data, teacher_models, flows_dir)
    with atomic_dir(ctx.paths.models / "imfe") as models, atomic_dir(ctx.paths.results / "imfe") as res:
        summary = run_imfe(ctx.config, ctx.paths.data, teacher_models, flows_dir, models, res, ctx.progress,
                           inputs=inputs)
        val = summary["val_mse"] or [None] * len(summary["train_mse"])    # no val curve: log none (not train's)
        for epoch, (tr, va) in enumerate(zip(summary["train_mse"], val)):
            ctx.log_metrics({"imfe.train_mse": tr, **({"imfe.val_mse": va} if va is not None else {})}, step=epoch)
        ctx.log_metrics({"imfe.onnx_max_abs_diff": summary["onnx"]["max_abs_diff"], "imfe.params": summary["params"]})
        write_json(res / "timing.json", {"stage": "imfe", **stage_cost()})        # after the MLflow logging
    return {"val_mse": summary["val_mse"][-1] if summary["val_mse"] else None}


@stage_task
def evaluate(ctx: StageContext) -> dict:
    """Every motion source through the LSTR head (accuracy), the latency benchmark, the streaming
    runtime; metrics/har.json, plots/har, MLflow tables and figures.

    The earlier stages' records (teacher.json, imfe.json, timing.json), then the clips, nets, flows,
    the IMFE ONNX model and ``evaluate.stream_frames`` are read and checked first (InputError before
    minutes of head training, and before any output or its folder is created). The outputs --
    models/har/heads, results/har/evaluate, plots/har and metrics/har.json -- are built in temporary
    siblings and replace the old ones together at the very end (metrics last): a failure anywhere
    leaves every old output as it was, never new results or heads next to old metrics or plots."""
    upstream = _upstream_records(ctx.paths)
    inputs = _evaluation_inputs(ctx)
    with contextlib.ExitStack() as stack:           # entered first = committed last
        metrics_file = stack.enter_context(atomic_file(ctx.paths.metrics))
        heads_dir = stack.enter_context(atomic_dir(ctx.paths.models / "heads"))
        plots_dir = stack.enter_context(atomic_dir(ctx.paths.plots))
        res_dir = stack.enter_context(atomic_dir(ctx.paths.results / "evaluate"))
        metrics = _evaluate(ctx, upstream, inputs, heads_dir, res_dir, plots_dir)
        json.dump(metrics, metrics_file, indent=2, allow_nan=False)        # as tasks.io.write_json writes
        metrics_file.write("\n")
    return metrics


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _upstream_records(paths) -> dict[str, Any]:
    """The records of the earlier stages the evaluate stage reads, checked: ``teacher``, ``imfe`` and
    ``timings`` (stage -> timing.json of data/teacher/imfe, those that exist). InputError naming the
    file and what is expected when one is missing, not JSON or lacks (or has a malformed) field."""
    def what(stage: str, name: str) -> str:
        return f"the {name} the har {stage} stage writes (run `python -m flows har {stage}` first)"

    def need(path: Path, rec: dict, key: str, ok: bool, expected: str, stage: str, name: str) -> None:
        if not ok:
            raise InputError(f"{path}: {key}={str(rec[key])[:80]}; expected {expected} in {what(stage, name)}")

    f = paths.results / "teacher" / "teacher.json"
    teacher = read_json_record(f, ("chunk_accuracy", "flow_cpu"), what("teacher", "record"))
    need(f, teacher, "chunk_accuracy", isinstance(teacher["chunk_accuracy"], dict), "an object (stream -> accuracy)",
         "teacher", "record")
    need(f, teacher, "flow_cpu", isinstance(teacher["flow_cpu"], dict) and all(
        isinstance(t, dict) and _number(t.get("ms_per_pair")) for t in teacher["flow_cpu"].values()),
        "an object of flow methods, each with a number ms_per_pair", "teacher", "record")

    f = paths.results / "imfe" / "imfe.json"
    keys = ("train_mse", "val_mse", "val_relative_mse", "params", "onnx", "train_seconds")
    imfe = read_json_record(f, keys, what("imfe", "record"))
    for key in ("train_mse", "val_mse"):
        need(f, imfe, key, isinstance(imfe[key], list) and all(_number(v) for v in imfe[key]),
             "a list of numbers (one per epoch)", "imfe", "record")
    for key in ("val_relative_mse", "val_r2"):
        if key in imfe:
            need(f, imfe, key, imfe[key] is None or _number(imfe[key]), "a number or null", "imfe", "record")
    for key in ("params", "train_seconds"):
        need(f, imfe, key, _number(imfe[key]), "a number", "imfe", "record")
    need(f, imfe, "onnx", isinstance(imfe["onnx"], dict) and _number(imfe["onnx"].get("max_abs_diff")),
         "an object with a number max_abs_diff", "imfe", "record")

    timings = {}
    for stage in STAGES[:-1]:
        f = _timing_file(paths, stage)
        if f.is_file():
            timings[stage] = rec = read_json_record(f, ("wall_s", "cpu_s"), what(stage, "timing record"))
            for key in ("wall_s", "cpu_s"):
                need(f, rec, key, _number(rec[key]), "a number of seconds", stage, "timing record")
    return {"teacher": teacher, "imfe": imfe, "timings": timings}


def _evaluation_inputs(ctx: StageContext) -> dict[str, Any]:
    """What the evaluate stage reads besides the records, read and checked: ``experiment.evaluation_inputs``
    (clips, stream CNNs, IMFE, every split's flow), the IMFE ONNX model (the latency benchmark's and the
    streaming runtime's) and the streaming runtime's video frames (test clips back to back, at most
    ``evaluate.stream_frames``). InputError naming the file or parameter."""
    from components.har import experiment as ex
    from components.har.imfe import onnx_session

    cfg, paths = ctx.config, ctx.paths
    manifest, splits, nets, flows, meta = ex.evaluation_inputs(cfg, paths.data, paths.models, paths.results)
    stream_frames, truth = ex.stream_sequence(splits["test"], cfg.evaluate.stream_frames)
    onnx_session(paths.models / "imfe" / "imfe.onnx")
    return {"manifest": manifest, "splits": splits, "nets": nets, "flows": flows, "meta": meta,
            "stream_frames": stream_frames, "truth": truth}


def _evaluate(ctx: StageContext, upstream: dict[str, Any], inputs: dict[str, Any], heads_dir: Path, res: Path,
              plots_dir: Path) -> dict:
    """The evaluate stage's work on ``inputs`` (``_evaluation_inputs``), written into the temporary
    ``heads_dir``, ``res`` (results/har/evaluate) and ``plots_dir``; returns the metrics (the caller
    writes them and commits everything)."""
    import numpy as np
    import torch

    from components.har import experiment as ex
    from components.har.stream import WallClock, load_pipeline, run_stream
    from components.har.video import iter_frames, write_video

    cfg, paths = ctx.config, ctx.paths
    teacher_sum, imfe_sum = upstream["teacher"], upstream["imfe"]
    torch.set_num_threads(cfg.torch_threads)
    manifest, splits, nets, flows, meta = (inputs[k] for k in ("manifest", "splits", "nets", "flows", "meta"))
    classes = manifest["classes"]
    stream_frames, truth = inputs["stream_frames"], inputs["truth"]

    rows, per_source = ex.evaluate_heads(cfg, classes, splits, flows, nets, heads_dir, meta, ctx.progress)
    for r in rows:
        with ctx.child(f"{r['source']}-seed{r['seed']}", params={"source": r["source"], "seed": r["seed"]},
                       tags={"variant": r["source"]}) as run:
            run.log_metrics({k: v for k, v in r.items() if k not in ("source", "seed")})

    ctx.progress("har latency: %d chunks per source, %d thread(s)", cfg.evaluate.latency_chunks, cfg.evaluate.threads)
    latency = ex.latency_benchmark(cfg, splits["test"], nets, paths.models / "imfe" / "imfe.onnx", progress=ctx.progress)

    # the streaming runtime on a video file: test clips back to back, frames arriving at stream_fps
    streams: dict[str, Any] = {}
    video = write_video(res / "stream.mp4", stream_frames, manifest["fps"])
    lat_hist = {}
    for source in ("imfe", "tvl1"):
        if source not in cfg.evaluate.sources:
            continue
        pipe, _ = load_pipeline(paths.models, source, "onnx", cfg.evaluate.threads, heads=heads_dir)
        warmup_ms = pipe.warm_up()                # as a deployed recogniser does before the camera starts
        with contextlib.closing(iter_frames(video, pipe.size)) as frames:    # the decoder released at the end
            rep = run_stream(frames, pipe, cfg.evaluate.stream_fps, WallClock(), queue_size=cfg.evaluate.queue_size)
        streams[source] = {**rep.summary(), "warmup_ms": warmup_ms}
        if rep.frames_dropped == 0 and rep.labels:     # the runtime's own predictions, clips back to back
            streams[source]["online_accuracy"] = float(np.mean(np.array(rep.labels) == truth[:len(rep.labels)]))
        lat_hist[source] = rep.latencies_ms
        ctx.progress("har stream %s: p50 %.1f ms p99 %.1f ms, %.1f fps achieved (capacity %.0f), %d misses, %d drops",
                     source, rep.latency_ms_p50, rep.latency_ms_p99, rep.achieved_fps, rep.capacity_fps,
                     rep.deadline_misses, rep.frames_dropped)
    write_json(res / "stream_latencies_ms.json", lat_hist)
    write_json(res / "heads.json", {"rows": rows, "per_source": per_source})
    write_json(res / "latency.json", latency)
    _plots(plots_dir, per_source, latency, lat_hist, imfe_sum, cfg)

    # ---- the record
    acc = {s: v["online_accuracy"] for s, v in per_source.items()}
    pts = lambda a, b: 100.0 * (acc[a] - acc[b]) if a in acc and b in acc else None  # noqa: E731
    metrics = {
        "paper": PAPER, "profile": cfg.profile,
        "accuracy": {s: {k: v for k, v in d.items() if k != "accuracy_by_step"} for s, d in per_source.items()},
        "accuracy_points": {"imfe_minus_tvl1": pts("imfe", "tvl1"), "imfe_minus_rgb": pts("imfe", "rgb"),
                            "tvl1_minus_rgb": pts("tvl1", "rgb"),
                            "tvl1_minus_imfe_abs": abs(pts("imfe", "tvl1")) if pts("imfe", "tvl1") is not None else None},
        "latency": {k: v for k, v in latency.items() if k not in ("ms", "resolution")},
        "stream": streams,
        "imfe": {"val_mse": imfe_sum["val_mse"][-1] if imfe_sum["val_mse"] else None,
                 "val_relative_mse": imfe_sum["val_relative_mse"], "val_r2": imfe_sum.get("val_r2"),
                 "params": imfe_sum["params"],
                 "onnx_max_abs_diff": imfe_sum["onnx"]["max_abs_diff"], "train_seconds": imfe_sum["train_seconds"]},
        "teacher": {"chunk_accuracy": teacher_sum["chunk_accuracy"],
                    "flow_cpu_ms_per_pair": {m: t["ms_per_pair"] for m, t in teacher_sum["flow_cpu"].items()}},
    }
    metrics = _drop_none(metrics)
    ctx.log_metrics({k: v for k, v in metrics.items() if k not in ("paper", "profile")})
    ctx.log_table([{"source": s, "online_accuracy": d["online_accuracy"], "std": d["online_accuracy_std"],
                    "clip_accuracy": d["clip_accuracy"], "stream_accuracy": d["stream_accuracy"],
                    "motion_ms_p50": _motion_ms(latency, s)} for s, d in per_source.items()], "accuracy_by_source")
    ctx.log_table(rows, "heads_by_seed")
    ctx.log_table([{"path": k, "p50_ms": v["p50"], "p99_ms": v["p99"], "mean_ms": v["mean"]}
                   for k, v in latency["ms"].items()], "latency_per_chunk")
    ctx.log_table([{"source": s, **{k: v for k, v in d.items()}} for s, d in streams.items()], "streaming")
    ctx.log_artifact(plots_dir, "plots")

    # the stage's cost, as late as it can be taken: after the plots and the MLflow logging, right before
    # the last writes (uncounted: this MLflow call, the writes, the commits and what follows the stage)
    cost = stage_cost()
    timings = {**upstream["timings"], "evaluate": cost}
    profile = {f"{s}_wall_s": t["wall_s"] for s, t in timings.items()} | \
              {f"{s}_cpu_s": t["cpu_s"] for s, t in timings.items()}
    profile["total_wall_s"] = sum(t["wall_s"] for t in timings.values())
    profile["total_cpu_s"] = sum(t["cpu_s"] for t in timings.values())
    metrics["profile_seconds"] = profile
    ctx.log_metrics({"profile_seconds": profile})
    write_json(res / "timing.json", {"stage": "evaluate", **cost})
    return metrics


def _motion_ms(latency: dict[str, Any], source: str) -> float | None:
    if source == "imfe":
        return latency["imfe_ms_p50"]
    if source == "rgb":
        return 0.0
    return latency.get(f"{source}_feature_ms_p50")


def _drop_none(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _drop_none(v) for k, v in d.items() if v is not None}
    return d


def _plots(out: Path, per_source: dict, latency: dict, lat_hist: dict, imfe_sum: dict, cfg: HarConfig) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tasks.tracking import rows_to_csv

    names = list(per_source)
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    accs = [100 * per_source[s]["online_accuracy"] for s in names]
    errs = [100 * per_source[s]["online_accuracy_std"] for s in names]
    ax[0].bar(names, accs, yerr=errs, color=["tab:blue", "tab:cyan", "tab:olive", "tab:red", "tab:gray"][: len(names)])
    ax[0].set_ylabel("online accuracy (%)")
    ax[0].set_title(f"test accuracy, mean of {len(cfg.evaluate.seeds)} head seeds")
    for i, a in enumerate(accs):
        ax[0].text(i, a + 1, f"{a:.1f}", ha="center", fontsize=8)
    motion = {s: _motion_ms(latency, s) for s in names if s != "rgb"}
    ax[1].bar(list(motion), list(motion.values()), color="tab:purple")
    ax[1].set_yscale("log")
    ax[1].set_ylabel("motion feature per chunk, p50 (ms)")
    ax[1].set_title(f"{latency['pairs_per_chunk']} flow pairs + flow CNN vs IMFE ({latency['resolution']})")
    fig.tight_layout()
    fig.savefig(out / "accuracy_latency.png", dpi=110)
    plt.close(fig)
    (out / "accuracy.csv").write_text(rows_to_csv([{"source": s, "online_accuracy": per_source[s]["online_accuracy"],
                                                   "clip_accuracy": per_source[s]["clip_accuracy"],
                                                   "stream_accuracy": per_source[s]["stream_accuracy"]} for s in names]))
    (out / "latency.csv").write_text(rows_to_csv([{"source": s, "motion_ms_p50": v} for s, v in motion.items()]))

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.4))
    ep = list(range(1, len(imfe_sum["train_mse"]) + 1))
    ax[0].plot(ep, imfe_sum["train_mse"], label="train (augmented)")
    if imfe_sum["val_mse"]:
        ax[0].plot(ep, imfe_sum["val_mse"], label="test chunks")
    ax[0].set_xlabel("epoch")
    ax[0].set_ylabel("MSE to the TV-L1 teacher feature")
    ax[0].set_yscale("log")
    ax[0].legend()
    ax[0].set_title("IMFE distillation")
    for s, lat in lat_hist.items():
        v = sorted(lat)
        ax[1].plot(v, [(i + 1) / len(v) for i in range(len(v))], label=s)
    ax[1].axvline(1000.0 / cfg.evaluate.stream_fps, color="k", lw=1, ls="--", label="frame period")
    ax[1].set_xscale("log")
    ax[1].set_xlabel("per-frame latency (ms)")
    ax[1].set_ylabel("fraction of frames")
    ax[1].set_title(f"streaming at {cfg.evaluate.stream_fps:g} fps")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(out / "distillation_streaming.png", dpi=110)
    plt.close(fig)
    (out / "distillation.csv").write_text(rows_to_csv([{"epoch": e, "train_mse": t, **({"val_mse": v} if v is not None else {})}
                                                       for e, t, v in zip(ep, imfe_sum["train_mse"],
                                                                          imfe_sum["val_mse"] or [None] * len(ep))]))


@flow(name="har", log_prints=True)
def har(config: HarConfig | None = None, stages: list[str] | None = None) -> dict:
    """RT-HARE: a TV-L1 two-stream online action recogniser vs. the IMFE single-shot motion extractor
    (distilled from the TV-L1 flow stream): accuracy of every motion source, per-chunk latency and
    a 30 fps streaming run (metrics/har.json)."""
    cfg = flow_config(HarConfig, config)
    return run_paper(PAPER, cfg, stages, {"data": data, "teacher": teacher, "imfe": imfe, "evaluate": evaluate})


FLOW = har
