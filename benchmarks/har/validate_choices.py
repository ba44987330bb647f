"""Would a validation split have made the HAR component's tuning choices? A check on fresh clips.

The data stage writes a train and a test split and no validation split, and the few settings chosen in
the component's history were chosen by looking at test accuracy (components/har/README.md, "Tuning and
the test split"). This benchmark re-makes each choice on a **validation set**: synthetic clips rendered
from random streams ``[seed, 3, i]`` that no stage uses (the data stage's clips draw from streams 0
(train) and 1 (test), IMFE's optional distillation set from 2), written as H.264 clips and read back
exactly as the data stage's are, with their own optical flow. For the committed settings and for each
alternative it trains on the committed training clips and scores on the validation set **and** on the
test split, with the evaluate stage's code (``experiment.evaluate_heads``: the same seeds, sources and
online accuracy), so a choice that only the test split favoured shows up as a disagreement.

An alternative is a set of ``KEY=VALUE`` changes (``--alternative``, repeatable; as ``--set``) to the
sections the benchmark can re-run from the committed stages: ``temporal`` (the heads are retrained),
``streams`` (every stream CNN is retrained) and ``opticalflow`` (``tvl1.*``, ``dis_preset``, ``bound``:
the changed methods' flow is recomputed for the training and the scored clips, and their CNNs
retrained). A change to the TV-L1 stream CNN changes IMFE's teacher, so IMFE is then left out (it would
need distilling again); a source whose inputs a change does not touch is left out too (its figures
would equal the committed ones). The default alternatives are the choices the README lists:

- ``temporal.epochs=40`` (committed 20);
- ``temporal.stream_passes=0`` (committed 1);
- ``streams.epochs=12`` (committed 20);
- ``opticalflow.tvl1.nscales=5 opticalflow.tvl1.warps=5`` (committed 3 / 3; OpenCV's defaults).

(The fourth tuned setting, ``imfe.distill_clips_per_class`` for the full profile, was picked with
``imfe_scale_probe.py`` on a GPU machine and is not re-made here.) A choice "holds" on a split and
metric when the committed setting's accuracy, averaged over the sources scored, is at least the
alternative's. Two metrics: the per-clip online accuracy (the claims' metric) and the continuous-stream
accuracy (the scored clips back to back, as the real-time runtime streams them), which is what
``temporal.stream_passes`` was chosen on.

    .venv/bin/python benchmarks/har/validate_choices.py --out benchmarks/results/har_validate_choices.json

Needs the committed data, teacher and IMFE (``dvc repro har_imfe``). On the 2-core VM the default run
takes about 15 minutes (every head is trained twice, once per scored split, with the same seeds).
The output file is rewritten after each alternative; ``complete`` is false until the last one is in.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks._cli import fail, output_file, params_config, positive_int  # noqa: E402

#: random-stream id of the validation clips (data stage: 0 train, 1 test; distillation set: 2)
VALIDATION_STREAM = 3

DEFAULT_ALTERNATIVES = (
    ("temporal.epochs=40",),
    ("temporal.stream_passes=0",),
    ("streams.epochs=12",),
    ("opticalflow.tvl1.nscales=5", "opticalflow.tvl1.warps=5"),
)

#: the per-source figures kept from ``evaluate_heads``
KEEP = ("online_accuracy", "online_accuracy_std", "stream_accuracy", "stream_accuracy_std")
SCORED = ("validation", "test")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--alternative", dest="alternatives", action="append", nargs="+", metavar="KEY=VALUE",
                    default=None, help="one alternative to the committed settings (one or more KEY=VALUE); "
                                       "repeat for more (default: the README's four choices)")
    ap.add_argument("--clips-per-class", type=positive_int, default=None,
                    help="validation clips per class (default: har.data.test_clips_per_class)")
    ap.add_argument("--root", type=Path, default=ROOT,
                    help="folder holding the committed data/har, models/har and results/har (default: the repo)")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--out", type=output_file, default=None, help="write the JSON result here")
    a = ap.parse_args(argv)

    from components.base import ConfigError, InputError
    from components.har.config import HarConfig

    try:  # a missing file, bad YAML, a 'har' section that is not a mapping, an invalid value: named, exit 2
        base = params_config(HarConfig, a.params)
        if base.data.source != "synthetic":
            raise ConfigError(f"params har.data.source={base.data.source!r}: the validation clips are rendered by "
                              f"the synthetic generator; expected 'synthetic'")
        alternatives = [alternative(base, items, a.params) for items in (a.alternatives or DEFAULT_ALTERNATIVES)]
        return _run(a, base, alternatives)
    except (ConfigError, InputError) as err:
        return fail(err)


# ------------------------------------------------------------------------------------ alternatives
def alternative(base, items: tuple[str, ...] | list[str], params: Path) -> dict[str, Any]:
    """``{"changes", "config", "flows", "nets", "drop_imfe"}`` for one alternative: its ``KEY=VALUE``
    items, the validated config, the flow methods whose flow it changes, the stream CNNs it retrains and
    whether IMFE's teacher changes. ConfigError naming the item when a key is unknown, a value invalid,
    nothing changes or the change is outside what the benchmark can re-run."""
    from components.base import ConfigError, deep_merge, parse_override
    from components.har.config import HarConfig
    from components.har.opticalflow import FLOW_METHODS
    from tasks.params import load_config

    text = " ".join(items)
    overrides: dict[str, Any] = {}
    changes: dict[str, Any] = {}   # dotted key -> value, as given
    try:
        for item in items:
            one = parse_override(item)
            overrides = deep_merge(overrides, one)
            changes[item.split("=", 1)[0]] = _leaf(one)
        cfg = load_config(HarConfig, overrides, params_path=params)
    except ConfigError as err:   # parse_override names the item as "--set ITEM"; here it is an --alternative
        raise ConfigError(f"--alternative {text}: {str(err).removeprefix('--set ')}") from None
    movable = ("temporal", "streams", "opticalflow")
    fixed = [k for k in HarConfig.model_fields if k not in movable and getattr(cfg, k) != getattr(base, k)]
    if base.opticalflow.clip_len != cfg.opticalflow.clip_len:
        fixed.append("opticalflow.clip_len")
    if fixed:
        raise ConfigError(f"--alternative {text}: changes {', '.join(fixed)}; expected changes to temporal, streams "
                          f"or opticalflow only (tvl1.*, dis_preset, bound, workers): the others need the data or "
                          f"IMFE stages re-run (python -m flows har all --set ...)")
    of, bf = cfg.opticalflow, base.opticalflow
    flows = [m for m in FLOW_METHODS if of.bound != bf.bound or (m == "tvl1" and of.tvl1 != bf.tvl1)
             or (m == "dis" and of.dis_preset != bf.dis_preset)]
    nets = ["rgb", *FLOW_METHODS] if cfg.streams != base.streams else flows
    if not nets and cfg.temporal == base.temporal:
        raise ConfigError(f"--alternative {text}: changes nothing the benchmark re-runs (the committed settings "
                          f"already have these values); expected a different value of temporal, streams or "
                          f"opticalflow")
    return {"changes": changes, "config": cfg, "flows": flows, "nets": nets, "drop_imfe": "tvl1" in nets}


def _leaf(tree: dict[str, Any]) -> Any:
    while isinstance(tree, dict):
        (tree,) = tree.values()
    return tree


def scored_sources(alt: dict[str, Any], base) -> list[str]:
    """The sources an alternative is scored on: every source when it changes the heads or the RGB CNN
    (the RGB feature is part of every head's input), else those whose CNN it retrains; never IMFE when
    IMFE's teacher (the TV-L1 stream CNN) changes."""
    cfg = alt["config"]
    every = cfg.temporal != base.temporal or "rgb" in alt["nets"]
    return [s for s in base.evaluate.sources
            if (every or s in alt["nets"]) and not (s == "imfe" and alt["drop_imfe"])]


# ------------------------------------------------------------------------------------ validation clips
def render_validation(cfg, root: Path, clips_per_class: int, progress=print):
    """Render ``clips_per_class`` clips per class from streams ``[seed, VALIDATION_STREAM, i]``, write them
    under ``root`` as the data stage writes its clips (H.264, a manifest) and read them back: the
    manifest and an ``experiment.Split``. Clip ``i = k * classes + label``, interleaved by class."""
    from components.har import experiment as ex
    from components.har.chunks import split_chunks
    from components.har.data import load_clip, load_manifest, render_clip, write_manifest
    from components.har.video import write_video

    classes, clips = cfg.data.classes, []
    for k in range(clips_per_class):
        for label, name in enumerate(classes):
            i = k * len(classes) + label
            frames = render_clip(name, np.random.default_rng([cfg.seed, VALIDATION_STREAM, i]), cfg.data)
            rel = Path("videos") / name / f"validation_{i:05d}_{name}.mp4"
            write_video(root / rel, frames, cfg.data.fps, cfg.data.crf)
            # "test": the manifest's split names are train/test; this manifest holds the scored clips only
            clips.append({"id": f"validation_{i:05d}_{name}", "split": "test", "label": label, "class": name,
                          "path": rel.as_posix(), "frames": int(len(frames))})
    write_manifest(root, cfg.data, clips, classes)
    manifest = load_manifest(root)
    clip_len = cfg.opticalflow.clip_len
    split = ex.Split([c["id"] for c in clips], np.array([c["label"] for c in clips]),
                     [split_chunks(load_clip(root, c, manifest, clip_len), clip_len) for c in clips])
    progress(f"# validation set: {len(clips)} clips ({clips_per_class} per class) rendered to {root}")
    return manifest, split


# ------------------------------------------------------------------------------------ the run
def _log(msg: str, *args: Any) -> None:
    print("# " + (msg % args if args else msg), file=sys.stderr, flush=True)


def _run(a: argparse.Namespace, base, alternatives: list[dict[str, Any]]) -> int:
    import torch

    from components.har import experiment as ex
    from components.har.opticalflow import FLOW_METHODS
    from components.har.streams import train_stream
    from tasks.io import write_json

    torch.set_num_threads(base.torch_threads)
    data_dir = a.root / "data" / "har"
    manifest, splits, nets, flows, meta = ex.evaluation_inputs(base, data_dir, a.root / "models" / "har",
                                                               a.root / "results" / "har")
    classes = manifest["classes"]
    n = a.clips_per_class or base.data.test_clips_per_class
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="har-validation-") as tmp:
        val_manifest, val = render_validation(base, Path(tmp), n, lambda m: print(m, file=sys.stderr, flush=True))
        val_flows, _ = ex.compute_flows(Path(tmp), val_manifest, base.opticalflow, FLOW_METHODS, _log)
        splits["validation"] = val
        flows["validation"] = {m: [val_flows[m][i] for i in val.ids] for m in FLOW_METHODS}

        def score(cfg, sources, the_nets, the_flows) -> dict[str, Any]:
            cfg = cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update={"sources": sources})})
            out = {}
            for name in SCORED:
                _, per = ex.evaluate_heads(cfg, classes, {"train": splits["train"], "test": splits[name]},
                                           {"train": the_flows["train"], "test": the_flows[name]}, the_nets,
                                           None, meta, _log)
                out[name] = {s: {k: d[k] for k in KEEP} for s, d in per.items()}
            return out

        result: dict[str, Any] = {
            "validation_set": {"stream": VALIDATION_STREAM, "clips_per_class": n, "clips": len(val.ids),
                               "chunks": int(sum(len(c) for c in val.chunks)),
                               "render_and_flow_seconds": round(time.perf_counter() - t0, 1)},
            "test_set": {"clips": len(splits["test"].ids), "chunks": int(sum(len(c) for c in splits["test"].chunks))},
            "seeds": base.evaluate.seeds, "torch_threads": base.torch_threads,
            "planned": [alt["changes"] for alt in alternatives], "complete": False, "alternatives": []}
        _log("committed settings: heads on the validation and the test clips")
        t1 = time.perf_counter()
        result["committed"] = {**score(base, base.evaluate.sources, nets, flows),
                               "seconds": round(time.perf_counter() - t1, 1)}
        mirror = torch.from_numpy(ex.mirror_labels(np.arange(len(classes)), classes)).long()
        for alt in alternatives:
            cfg, t1 = alt["config"], time.perf_counter()
            _log("alternative %s", alt["changes"])
            alt_flows = {s: dict(f) for s, f in flows.items()}
            if alt["flows"]:   # the changed methods' flow of every clip: the data stage's, then the validation clips
                for root, man, names in ((data_dir, manifest, ("train", "test")), (Path(tmp), val_manifest, ("validation",))):
                    new, _ = ex.compute_flows(root, man, cfg.opticalflow, tuple(alt["flows"]), _log)
                    for name in names:
                        for m in alt["flows"]:
                            alt_flows[name][m] = [new[m][i] for i in splits[name].ids]
            alt_nets = dict(nets)
            for kind in alt["nets"]:
                x, y = ex._inputs(kind, splits["train"], alt_flows["train"].get(kind))
                alt_nets[kind], _ = train_stream(x, y, "rgb" if kind == "rgb" else "flow", len(classes), cfg.streams,
                                                 cfg.seed, mirror, _log, name=kind)
            sources = scored_sources(alt, base)
            row = {"changes": alt["changes"], "sources": sources, "recomputed_flows": alt["flows"],
                   "retrained_stream_cnns": alt["nets"], **score(cfg, sources, alt_nets, alt_flows)}
            row.update(compare(result["committed"], row))
            row["seconds"] = round(time.perf_counter() - t1, 1)
            result["alternatives"].append(row)
            result["complete"] = len(result["alternatives"]) == len(alternatives)
            print(summary_line(row), flush=True)
            if a.out:
                write_json(a.out, result)   # whole or not at all; 'complete' says whether every one is in
    return 0


#: the figures a choice is judged on: the claims' per-clip online accuracy, and the continuous-stream
#: accuracy (the test clips back to back, as the runtime streams them; ``temporal.stream_passes`` was
#: chosen on it)
METRICS = ("online_accuracy", "stream_accuracy")


def compare(committed: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """Per scored split and metric: the alternative's accuracy minus the committed one's, per source
    (``delta[split][metric]``) and averaged over the row's sources (``mean_delta[split][metric]``), and
    whether the committed choice holds there (``holds[split][metric]``: mean delta <= 0)."""
    delta: dict[str, Any] = {}
    mean: dict[str, Any] = {}
    holds: dict[str, Any] = {}
    for name in SCORED:
        delta[name], mean[name], holds[name] = {}, {}, {}
        for m in METRICS:
            d = {s: row[name][s][m] - committed[name][s][m] for s in row["sources"]}
            delta[name][m], mean[name][m] = d, float(np.mean(list(d.values())))
            holds[name][m] = mean[name][m] <= 0
    return {"delta": delta, "mean_delta": mean, "holds": holds}


def summary_line(row: dict[str, Any]) -> str:
    """One printed line per alternative: the mean change of both metrics on both splits, in points."""
    changes = " ".join(f"{k}={v}" for k, v in row["changes"].items())
    parts = [f"{name}: " + ", ".join(f"{m.split('_')[0]} {100 * row['mean_delta'][name][m]:+.1f} pts "
                                     f"(committed {'holds' if row['holds'][name][m] else 'loses'})" for m in METRICS)
             for name in SCORED]
    return f"{changes} vs committed, mean over {', '.join(row['sources'])} -- {'; '.join(parts)}"


if __name__ == "__main__":
    sys.exit(main())
