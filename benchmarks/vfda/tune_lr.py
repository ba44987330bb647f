"""The learning-rate choice of the quick profile: base FedAvg only, in-process (no Flower, same client
code: ``train_local`` / ``evaluate_dice`` and weighted averaging of every state-dict entry), on the
data stage's output. Prints held-in / held-out Dice per seed and mean ± std. Held-in Dice is scored on
each training institute's ``validation`` split, its local test split: the same volumes the reported
held-in Dice uses (there is no separate validation split), so a choice made here is made on the
reported split (components/vfda/README.md, "Tuning budget").

    .venv/bin/python benchmarks/vfda/tune_lr.py --lr 2e-3 4e-3 --schedule constant
    .venv/bin/python benchmarks/vfda/tune_lr.py --lr 3e-3 4e-3 --schedule cosine
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks._cli import dataset_dir, fail, non_negative_int, positive_float  # noqa: E402

#: argparse type of ``--data``: a folder with the vfda data stage's manifest
VFDA_DATA = dataset_dir("institutes.json", "a VFDA dataset folder with institutes.json (python -m flows vfda data)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=VFDA_DATA, default=str(ROOT / "data" / "vfda"))  # a str: argparse checks it
    p.add_argument("--lr", type=positive_float, nargs="+", default=[2e-3, 4e-3])
    p.add_argument("--schedule", choices=["constant", "cosine"], default="cosine")
    p.add_argument("--seeds", type=non_negative_int, nargs="+", default=[0, 1, 2])
    args = p.parse_args(argv)

    from components.base import ConfigError, InputError

    try:
        return _tune(args)
    except (ConfigError, InputError) as err:
        return fail(err)


def _tune(args: argparse.Namespace) -> int:
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
    k = cfg.data.num_classes
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
            held_in = np.mean([evaluate_dice(net, te, k)["dice"] for _, te in train.values()])
            held_out = np.mean([evaluate_dice(net, h, k)["dice"] for h in heldout])
            res.append((held_in, held_out))
            print(f"lr {lr:g} {args.schedule} seed {seed}: held-in {held_in:.3f} held-out {held_out:.3f}", flush=True)
        r = np.array(res)
        print(f"== lr {lr:g} {args.schedule}: held-in {r[:, 0].mean():.3f} ± {r[:, 0].std():.3f}, "
              f"held-out {r[:, 1].mean():.3f} ± {r[:, 1].std():.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
