"""Diagnostic probe: does IMFE learn the TV-L1 teacher's motion feature when the distillation set grows?

The quick profile distils IMFE on the 480 training chunks of the HAR data and IMFE stays at chance
(README, *Diagnosis*). The paper distils on ActivityNet, a set disjoint from the action data and
~10^5 clips large. This probe renders a distillation set **disjoint from the HAR clips** with the
same generator (random streams ``[seed, 2, i]``; the data stage uses ``[seed, 0|1, i]``), computes its
TV-L1 flow with the committed settings, and distils IMFE with ``components.har.imfe.distill`` and the
committed ``params.yaml`` settings (same epochs, batch, lr schedule, augmentation) on nested subsets
of it, ``--clips-per-class`` each (x 8 classes x 3 chunks per clip).

Evaluation is on the HAR **test** split's clips, rendered in memory from the data stage's random
streams (the same clips as ``data/har``, before the H.264 round trip) with their own TV-L1 flow:

- ``r2``: 1 - MSE(IMFE feature, teacher feature) / variance of the teacher feature;
- ``head_acc``: chunk accuracy of the committed TV-L1 flow-stream classifier (``fc``) applied to the
  IMFE feature instead of its own (the teacher's own chunk accuracy is ``teacher.head_acc``);
- ``ncc``: nearest-centroid chunk accuracy, centroids from the distillation set's features.

Prints one JSON line per subset and writes the whole result to ``--out`` after each one (atomically):
``planned`` lists every size of the run (``clips_per_class``, ``epochs``) from the first write on,
``runs`` the sizes done so far, and ``complete`` is ``false`` until the last size is done, so the file
of a run that was stopped part-way says so. (Results written before these two keys existed, such as
``benchmarks/results/har_imfe_scale_h200.json``, lack them.)

    # local smoke run (minutes on 2 cores):
    .venv/bin/python benchmarks/har/imfe_scale_probe.py --clips-per-class 4 --epochs 1 --out /tmp/p.json
    # the two runs reported in components/har/README.md ("Confirmed: ..."; GPU machine, 16 cores for
    # TV-L1; raw output benchmarks/results/har_imfe_scale_h200.json, one session each):
    python benchmarks/har/imfe_scale_probe.py --clips-per-class 20 60 200 --workers 16 --device cuda
    python benchmarks/har/imfe_scale_probe.py --clips-per-class 60 400 --epochs 50 15 --workers 16 --device cuda

Needs the committed TV-L1 teacher ``models/har/teacher/tvl1.pt`` (``dvc repro har_teacher``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks._cli import fail, output_file, params_config, positive_int  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips-per-class", type=positive_int, nargs="+", default=[20, 100],
                    help="distillation-set sizes to try (clips per class; nested subsets of the largest)")
    ap.add_argument("--epochs", type=positive_int, nargs="+", default=None,
                    help="distillation epochs: one value for every size, or one per --clips-per-class "
                         "(default: params.yaml har.imfe.epochs)")
    ap.add_argument("--workers", type=positive_int, default=2, help="processes rendering clips and computing TV-L1 "
                                                           "(sets opticalflow.workers)")
    ap.add_argument("--device", default="cpu", help="torch device for the distillation (cpu, cuda)")
    ap.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads")
    ap.add_argument("--teacher", type=Path, default=ROOT / "models/har/teacher/tvl1.pt")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--out", type=output_file, default=None, help="JSON file for the results (rewritten after every size)")
    a = ap.parse_args(argv)
    if a.epochs is not None and len(a.epochs) not in (1, len(a.clips_per_class)):
        ap.error(f"--epochs {a.epochs}: expected one value or one per --clips-per-class {a.clips_per_class}")
    if not a.teacher.is_file():
        ap.error(f"--teacher {a.teacher}: not found; run `dvc repro har_teacher` first")

    from components.base import ConfigError, InputError
    from components.har.config import HarConfig

    try:  # bad YAML, a 'har' section that is not a mapping, an invalid value: named, exit 2
        cfg = params_config(HarConfig, a.params)
    except ConfigError as err:
        return fail(err)
    if cfg.data.source != "synthetic":
        ap.error(f"params har.data.source={cfg.data.source!r}: the probe renders synthetic clips; expected 'synthetic'")

    import torch

    try:
        dev = torch.device(a.device)
    except RuntimeError:
        ap.error(f"--device {a.device}: expected a torch device such as cpu, cuda or cuda:1")
    if dev.type == "cuda" and not torch.cuda.is_available():
        ap.error(f"--device {a.device}: no CUDA device is visible to torch {torch.__version__}")
    try:
        return _probe(a, cfg, dev)
    except (ConfigError, InputError) as err:
        return fail(err)


def _probe(a: argparse.Namespace, cfg, dev) -> int:
    import torch

    from components.har import imfe as I
    from components.har.chunks import flow_tensor, rgb_tensor
    from components.har.experiment import load_stream_net, render_distill_set
    from components.io import atomic_file

    torch.set_num_threads(a.threads)
    cfg = cfg.model_copy(update={"opticalflow": cfg.opticalflow.model_copy(update={"workers": a.workers})})
    epochs = a.epochs or [cfg.imfe.epochs]
    plan = sorted(zip(a.clips_per_class, epochs * (len(a.clips_per_class) // len(epochs))))
    H, W = cfg.data.height, cfg.data.width
    teacher = load_stream_net(a.teacher).to(dev)
    for p in teacher.parameters():
        p.requires_grad_(False)

    t0 = time.perf_counter()
    def log(msg, *args):
        print("# " + msg % args, file=sys.stderr, flush=True)

    te_frames, te_flows, te_y = render_distill_set(cfg, cfg.data.test_clips_per_class, stream=1, progress=log)
    tr_frames, tr_flows, tr_y = render_distill_set(cfg, max(a.clips_per_class), progress=log)
    render_s = time.perf_counter() - t0
    te_x, te_f = rgb_tensor(te_frames), flow_tensor(te_flows)
    tr_x, tr_f = rgb_tensor(tr_frames), flow_tensor(tr_flows)
    k = len(cfg.data.classes)
    yte = torch.from_numpy(te_y)

    @torch.no_grad()
    def feats_of(fn, x):
        return torch.cat([fn(x[i:i + 256].to(dev)).cpu() for i in range(0, len(x), 256)])

    fc = teacher.fc.cpu()
    t_te = feats_of(teacher.features, te_f)
    var = float(((t_te - t_te.mean(0)) ** 2).mean())

    def scores(f_te: torch.Tensor, f_tr: torch.Tensor, y_tr: np.ndarray) -> dict:
        with torch.no_grad():
            head = float((fc(f_te).argmax(1) == yte).float().mean())
        cents = torch.stack([f_tr[torch.from_numpy(y_tr == c)].mean(0) for c in range(k)])
        ncc = float((torch.cdist(f_te, cents).argmin(1) == yte).float().mean())
        return {"head_acc": round(head, 4), "ncc": round(ncc, 4),
                "r2": round(1 - float(((f_te - t_te) ** 2).mean()) / var, 4)}

    result = {"device": str(dev), "torch": torch.__version__, "workers": a.workers,
              "imfe": cfg.imfe.model_dump(), "test_chunks": len(te_x), "render_and_tvl1_s": round(render_s, 1),
              "teacher": scores(t_te, feats_of(teacher.features, tr_f), tr_y),
              "planned": [{"clips_per_class": n, "epochs": ep} for n, ep in plan], "complete": False, "runs": []}
    print(json.dumps({"teacher": result["teacher"], "test_chunks": len(te_x)}), flush=True)
    for n, ep in plan:
        icfg = cfg.imfe.model_copy(update={"epochs": ep})
        m = n * k * (len(tr_x) // (max(a.clips_per_class) * k))      # chunks of the first n * k clips
        t1 = time.perf_counter()
        net, hist = I.distill(tr_x[:m], tr_f[:m], teacher.features, icfg, H, W, cfg.seed, val=(te_x, te_f),
                              device=dev)
        sec = time.perf_counter() - t1
        f_te, f_tr = I.imfe_features(net, te_x), I.imfe_features(net, tr_x[:m])
        run = {"clips_per_class": n, "chunks": m, "epochs": ep, "steps": icfg.epochs * -(-m // icfg.batch_size),
               "seconds": round(sec, 1), **scores(f_te, f_tr, tr_y[:m]),
               "train_mse": [round(v, 4) for v in hist["train_mse"]],
               "val_mse": [round(v, 4) for v in hist["val_mse"]]}
        result["runs"].append(run)
        result["complete"] = len(result["runs"]) == len(plan)
        print(json.dumps(run), flush=True)
        if a.out:
            with atomic_file(a.out) as fh:   # whole or not at all; 'complete' says whether every size is in
                fh.write(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
