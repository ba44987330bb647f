"""The learning-rate choice of the quick profile: base FedAvg only, in-process (no Flower, same client
code: ``train_local`` / ``evaluate_dice`` and weighted averaging of every state-dict entry), on the
data stage's output. Prints held-in / held-out Dice per seed and mean ± std. Held-in Dice is scored on
each training institute's ``validation`` split, its local test split: the same volumes the reported
held-in Dice uses (the data stage writes no separate validation split), so a choice made on that
figure is made on the reported split (components/vfda/README.md, "Tuning budget").

``--validation-volumes N`` adds a real validation split: N fresh volumes per training institute,
synthesized with the institute's acquisition protocol from a random stream the data stage does not
use (``_derive_seed(seed, institute, VALIDATION_STREAM)``; the data stage's volumes come from
``_derive_seed(seed, institute, 7919)``), written as NIfTI with a datalist in a temporary folder and
read back through the same MONAI preprocessing. Held-in Dice is then also reported on them
(``held-in[val]``), so the choice can be re-made without looking at the reported split.

    .venv/bin/python benchmarks/vfda/tune_lr.py --lr 2e-3 4e-3 --schedule constant
    .venv/bin/python benchmarks/vfda/tune_lr.py --lr 3e-3 4e-3 --schedule cosine
    # the same choice re-made on a validation split (README, "Tuning budget"):
    .venv/bin/python benchmarks/vfda/tune_lr.py --lr 2e-3 4e-3 --schedule constant --validation-volumes 4 \
        --out benchmarks/results/vfda_tune_lr_constant.json
    .venv/bin/python benchmarks/vfda/tune_lr.py --lr 3e-3 4e-3 --schedule cosine --validation-volumes 4 \
        --out benchmarks/results/vfda_tune_lr_cosine.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks._cli import dataset_dir, fail, non_negative_int, output_file, positive_float  # noqa: E402

#: random-stream id of ``--validation-volumes`` (the data stage draws an institute's volumes with 7919)
VALIDATION_STREAM = 104729

#: argparse type of ``--data``: a folder with the vfda data stage's manifest
VFDA_DATA = dataset_dir("institutes.json", "a VFDA dataset folder with institutes.json (python -m flows vfda data)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=VFDA_DATA, default=str(ROOT / "data" / "vfda"))  # a str: argparse checks it
    p.add_argument("--lr", type=positive_float, nargs="+", default=[2e-3, 4e-3])
    p.add_argument("--schedule", choices=["constant", "cosine"], default="cosine")
    p.add_argument("--seeds", type=non_negative_int, nargs="+", default=[0, 1, 2])
    p.add_argument("--validation-volumes", type=non_negative_int, default=0,
                   help="fresh volumes per training institute for a validation split (0: none)")
    p.add_argument("--out", type=output_file, default=None, help="write the per-seed Dice as JSON here")
    args = p.parse_args(argv)

    from components.base import ConfigError, InputError

    try:
        return _tune(args)
    except (ConfigError, InputError) as err:
        return fail(err)


def validation_split(cfg, manifest: dict, n: int, folder: Path) -> dict[str, list]:
    """``n`` fresh volumes per training institute of ``manifest`` (its acquisition protocol from
    ``cfg.data.institutes``, random stream ``VALIDATION_STREAM``), written under ``folder`` as NIfTI with
    a datalist and read back with ``load_split``: institute name -> preprocessed (image, label) pairs.
    InputError when an institute of the dataset is not one of the config's (an imported dataset)."""
    import json

    from components.base import InputError
    from components.vfda.data import _derive_seed, _save_nifti, load_split, synthesize_volume, training_institutes

    protocols = {inst.name: (idx, inst) for idx, inst in enumerate(cfg.data.institutes)}
    out = {}
    for e in training_institutes(manifest):
        if e["name"] not in protocols:
            raise InputError(f"--validation-volumes {n}: institute {e['name']!r} of the dataset is not in "
                             f"vfda.data.institutes ({sorted(protocols)}); expected the synthetic dataset of the data "
                             f"stage, whose acquisition protocols the fresh volumes reuse")
        idx, inst = protocols[e["name"]]
        rng = np.random.RandomState(_derive_seed(cfg.seed, idx, VALIDATION_STREAM))
        (folder / inst.name).mkdir(parents=True)
        items = []
        for v in range(n):
            image, label, spacing = synthesize_volume(inst, cfg.data, rng)
            item = {"image": f"{inst.name}_val_{v:03d}_image.nii.gz", "label": f"{inst.name}_val_{v:03d}_label.nii.gz"}
            _save_nifti(image, spacing, folder / inst.name / item["image"])
            _save_nifti(label, spacing, folder / inst.name / item["label"])
            items.append(item)
        datalist = folder / inst.name / "datalist.json"
        datalist.write_text(json.dumps({"name": inst.name, "training": [], "validation": items}, indent=1))
        out[e["name"]] = load_split(datalist, "validation", cfg.data)
    return out


def _tune(args: argparse.Namespace) -> int:
    import tempfile

    import torch

    from components.vfda.config import VfdaConfig
    from components.vfda.data import held_out_institutes, load_split, read_manifest, training_institutes
    from components.vfda.model import build_model, weights
    from components.vfda.training import evaluate_dice, round_lr, train_local

    torch.set_num_threads(1)
    cfg = VfdaConfig()
    fed = cfg.federation
    data = Path(args.data)
    manifest = read_manifest(data)
    train = {e["name"]: (load_split(data / e["datalist"], "training", cfg.data),
                         load_split(data / e["datalist"], "validation", cfg.data)) for e in training_institutes(manifest)}
    heldout = [load_split(data / e["datalist"], "validation", cfg.data) for e in held_out_institutes(manifest)]
    val = {}
    if args.validation_volumes:
        with tempfile.TemporaryDirectory(prefix="vfda-validation-") as tmp:
            val = validation_split(cfg, manifest, args.validation_volumes, Path(tmp))
    k = cfg.data.num_classes
    record = {"schedule": args.schedule, "seeds": args.seeds, "validation_volumes_per_institute": args.validation_volumes,
              "validation_stream": VALIDATION_STREAM, "data": str(data),
              "held_in_volumes": {n: len(te) for n, (_, te) in train.items()},
              "held_in_validation_volumes": {n: len(v) for n, v in val.items()},
              "federation": {key: getattr(fed, key) for key in ("num_rounds", "local_steps", "batch_size",
                                                                 "lr_final_factor")}, "runs": []}
    for lr in args.lr:
        res = []
        for seed in args.seeds:
            torch.manual_seed(seed)
            global_w = weights(build_model(cfg.model, k, cfg.vfda))
            for r in range(1, fed.num_rounds + 1):
                states, sizes = [], []
                for i, (tr, _) in enumerate(train.values()):
                    net = build_model(cfg.model, k, cfg.vfda)
                    net.load_state_dict(global_w)
                    train_local(net, tr, steps=fed.local_steps, batch_size=fed.batch_size, seed=seed * 1000 + r * 10 + i,
                                lr=round_lr(lr, r, fed.num_rounds, args.schedule, fed.lr_final_factor))
                    states.append(weights(net))
                    sizes.append(len(tr))
                total = sum(sizes)
                global_w = {key: sum(s[key].double() * n / total for s, n in zip(states, sizes)).to(states[0][key].dtype)
                            for key in states[0]}
            net = build_model(cfg.model, k, cfg.vfda)
            net.load_state_dict(global_w)
            row = {"lr": lr, "seed": seed,
                   "held_in": float(np.mean([evaluate_dice(net, te, k)["dice"] for _, te in train.values()])),
                   "held_out": float(np.mean([evaluate_dice(net, h, k)["dice"] for h in heldout]))}
            if val:
                row["held_in_validation"] = float(np.mean([evaluate_dice(net, v, k)["dice"] for v in val.values()]))
            res.append(row)
            print(f"lr {lr:g} {args.schedule} seed {seed}: " + ", ".join(f"{_NAMES[m]} {row[m]:.3f}" for m in _NAMES
                                                                          if m in row), flush=True)
        summary = {m: (float(np.mean([x[m] for x in res])), float(np.std([x[m] for x in res]))) for m in _NAMES if m in res[0]}
        record["runs"].append({"lr": lr, "per_seed": res, **{f"{m}_mean": v[0] for m, v in summary.items()},
                               **{f"{m}_std": v[1] for m, v in summary.items()}})
        print(f"== lr {lr:g} {args.schedule}: " + ", ".join(f"{_NAMES[m]} {mu:.3f} ± {sd:.3f}"
                                                          for m, (mu, sd) in summary.items()), flush=True)
    if args.out:
        from tasks.io import write_json

        write_json(args.out, record)
    return 0


#: the figures per run: key -> printed name
_NAMES = {"held_in": "held-in", "held_out": "held-out", "held_in_validation": "held-in[val]"}


if __name__ == "__main__":
    sys.exit(main())
