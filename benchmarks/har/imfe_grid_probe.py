"""Diagnostic probe: does IMFE learn the TV-L1 teacher's feature at a finer correlation grid?

Distils IMFE exactly as the ``har_imfe`` stage does (``components.har.imfe.distill``, the committed
``params.yaml`` settings, the committed ``data/har`` and teacher) with the encoder stride 4 (the
default) or 2 (a 24x24 correlation grid at 48 px: 4x the cells, 16x the correlation volume), for a
given number of epochs, and prints one JSON line: train/val MSE per epoch, held-out R2 of the feature
(1 - MSE / target variance) and the nearest-centroid chunk accuracy of the IMFE features and of the
teacher's own features on the test split (8 classes: chance 12.5 %).

    .venv/bin/python benchmarks/har/imfe_grid_probe.py 4 5    # downsample 4, 5 epochs (150 steps)
    .venv/bin/python benchmarks/har/imfe_grid_probe.py 2 5    # downsample 2 (not a config option)
    .venv/bin/python benchmarks/har/imfe_grid_probe.py 2 5 4  # ... with 4 torch threads (default 1)

Needs the outputs of ``dvc repro har_imfe`` (data/har, models/har/teacher, results/har/teacher).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks._cli import fail, positive_int  # noqa: E402


def downsample(text: str) -> int:
    """argparse type: the encoder stride, 2 or 4."""
    if text not in ("2", "4"):
        raise argparse.ArgumentTypeError(f"got {text!r}; expected 2 or 4 (the encoder stride)")
    return int(text)


def inputs(root: Path) -> dict[str, tuple[Path, str]]:
    """The files the probe reads, each with the stage that writes it."""
    return {"data": (root / "data" / "har" / "manifest.json", "dvc repro har_data"),
            "teacher": (root / "models" / "har" / "teacher" / "tvl1.pt", "dvc repro har_teacher"),
            "flows": (root / "results" / "har" / "teacher" / "flows_tvl1.npz", "dvc repro har_teacher")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("downsample", type=downsample, help="encoder stride: 4 (the default of the config) or 2")
    ap.add_argument("epochs", type=positive_int, help="distillation epochs (>= 1)")
    ap.add_argument("threads", type=positive_int, nargs="?", default=1, help="torch CPU threads (default 1)")
    a = ap.parse_args(argv)

    from components.base import ConfigError, InputError
    from components.har.config import HarConfig
    from tasks.params import load_config

    root = ROOT
    try:
        cfg = load_config(HarConfig, params_path=root / "params.yaml")
        for path, stage in inputs(root).values():   # named before the (slow) clip decoding
            if not path.is_file():
                raise InputError(f"{path}: missing; expected the output of `{stage}` (the probe reads "
                                 f"data/har, models/har/teacher/tvl1.pt and results/har/teacher/flows_tvl1.npz)")
        return _probe(root, cfg, a.downsample, a.epochs, a.threads)
    except (ConfigError, InputError) as err:
        return fail(err)


def _probe(root: Path, cfg, ds: int, epochs: int, threads: int) -> int:
    import numpy as np
    import torch

    from components.har import imfe as I
    from components.har.experiment import _imfe_inputs, load_flows, load_splits, load_stream_net

    torch.set_num_threads(threads)
    paths = inputs(root)
    manifest, splits = load_splits(paths["data"][0].parent, cfg.opticalflow.clip_len)
    teacher = load_stream_net(paths["teacher"][0])
    for p in teacher.parameters():
        p.requires_grad_(False)
    flows = paths["flows"][0]
    tr = _imfe_inputs(splits["train"], load_flows(flows, splits["train"].ids))
    te = _imfe_inputs(splits["test"], load_flows(flows, splits["test"].ids))

    def chunk_labels(sp):
        return np.concatenate([np.full(len(c), l) for c, l in zip(sp.chunks, sp.labels)])

    ytr, yte = chunk_labels(splits["train"]), chunk_labels(splits["test"])
    icfg = cfg.imfe.model_copy(update={"epochs": epochs})
    orig = I.ImfeNet.__init__
    if ds == 2:
        def init(self, height, width, num_frames, feature_dim, c):
            c2 = c.model_copy(update={"downsample": 4})
            orig(self, height, width, num_frames, feature_dim, c2)
            self.h, self.w = height // 2, width // 2
            enc = c.encoder_widths
            self.encoder = I.FeatureEncoder(enc, (2, 1, 1, 1))
            self.compress = torch.nn.Conv2d(self.h * self.w, c.compress_dim, 3, padding=1)
        I.ImfeNet.__init__ = init
    t0 = time.time()
    net, hist = I.distill(tr[0], tr[1], teacher.features, icfg, manifest["height"], manifest["width"], 0, val=te)
    sec = time.time() - t0
    with torch.no_grad():
        tt = teacher.features(te[1]); ttr = teacher.features(tr[1])
        pte = I.imfe_features(net, te[0]); ptr = I.imfe_features(net, tr[0])
    var = float(((tt - tt.mean(0)) ** 2).mean())
    r2 = 1 - float(((pte - tt) ** 2).mean()) / var

    def ncc(ftr, fte):
        cents = torch.stack([ftr[torch.as_tensor(ytr == k)].mean(0) for k in range(8)])
        return float((torch.cdist(fte, cents).argmin(1).numpy() == yte).mean())

    print(json.dumps({"ds": ds, "epochs": epochs, "sec": round(sec, 1), "train_mse": [round(x, 4) for x in hist["train_mse"]],
                      "val_mse": [round(x, 4) for x in hist["val_mse"]], "r2": round(r2, 3),
                      "ncc_imfe": round(ncc(ptr, pte), 3), "ncc_teacher": round(ncc(ttr, tt), 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
