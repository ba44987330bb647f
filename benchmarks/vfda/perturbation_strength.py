"""How strongly does a VFDA layer perturb the features, in round 1 and from round 2 on?

The variance of VFDA's Gaussian prototype (Eq. 5) combines the server's inter-institute variance
(Eq. 4) with the local one. In round 1 (and always in ``vfda-local``) the global variance is 1; from
round 2 on it is the server's Eq. 4 value. With the ``product`` rule (``Σ̂² = Σ²_global · Σ²_local``)
a global variance far below 1 shrinks the sampled spread by ``sqrt(Σ²_global)``. This script
measures that, with the component's own code:

1. round 1 of ``fedavg-vfda-s<seed>`` in-process: the seeded initial model, each training institute
   runs ``federation.local_steps`` local steps with VFDA on (the client's seed, lr and batch size),
   then the server's Eq. 4 variance over the four institutes' momentum statistics;
2. per institute, the features ``Z`` entering each VFDA layer for one training batch (the trained
   model in training mode, VFDA switched off, on a copy so nothing is updated);
3. per layer, a fresh ``VicinalStatistics`` with ``p = 1`` applied ``--draws`` times to ``Z``: the
   relative perturbation ``||Ẑ - Z|| / ||Z - μ||`` (μ: per-sample channel means), for the global
   variance fixed at 1 (round 1 / ``vfda-local``) and set to the server's value (rounds >= 2), for
   both rules. Reported: the mean over draws and over the training institutes.

    .venv/bin/python benchmarks/vfda/perturbation_strength.py \
        --out benchmarks/results/vfda_perturbation_strength.json        # [--data data/vfda]

Without ``--data`` the quick-profile dataset (``VfdaConfig()`` defaults) is generated into a
temporary folder first. One torch thread; about a minute on a 2-core VM.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks._cli import dataset_dir, fail, output_file, positive_int  # noqa: E402

if TYPE_CHECKING:  # torch and the component are imported once the arguments are checked
    import torch

    from components.vfda.config import VfdaConfig

RULES = ("product", "fedfa")


def layer_inputs(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The feature map entering each VFDA layer for batch ``x`` (training mode, VFDA off, on a copy)."""
    import torch

    from components.vfda.vfda import configure_vfda, vfda_layers

    net = copy.deepcopy(model)
    configure_vfda(net, enabled=False)
    net.train()
    feats: dict[str, torch.Tensor] = {}
    hooks = [layer.register_forward_hook(lambda mod, inp, out, n=name: feats.__setitem__(n, inp[0].detach()))
             for name, layer in vfda_layers(net).items()]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    return feats


def relative_perturbation(z: torch.Tensor, rule: str, g_mu: torch.Tensor | None, g_sigma: torch.Tensor | None,
                          eps: float, draws: int, seed: int) -> float:
    """Mean over ``draws`` of ``||Ẑ - Z|| / ||Z - μ||`` for a VFDA layer with ``p = 1``; ``g_*`` None:
    the global variance stays 1 (round 1 / vfda-local)."""
    import torch

    from components.vfda.vfda import VicinalStatistics

    layer = VicinalStatistics(z.shape[1], p=1.0, eps=eps, rule=rule, enabled=True).train()  # type: ignore[arg-type]
    if g_mu is not None and g_sigma is not None:
        layer.global_var_mu.copy_(g_mu)
        layer.global_var_sigma.copy_(g_sigma)
    mu = z.mean(tuple(range(2, z.dim())), keepdim=True)
    torch.manual_seed(seed)
    with torch.no_grad():
        ratios = [float((layer(z) - z).norm() / (z - mu).norm()) for _ in range(draws)]
    return sum(ratios) / len(ratios)


def measure(data_dir: Path, cfg: VfdaConfig, draws: int) -> dict[str, Any]:
    import torch

    from components.vfda.client_app import client_seed
    from components.vfda.data import load_split, read_manifest, training_institutes
    from components.vfda.federation import Federation
    from components.vfda.model import build_model, weights
    from components.vfda.training import round_lr, train_local
    from components.vfda.vfda import configure_vfda, global_variance, local_statistics, vfda_layers

    fcfg = cfg.federation
    fed = Federation("fedavg", "vfda", cfg.seed + fcfg.seeds[0])
    entries = training_institutes(read_manifest(data_dir))
    institutes = [e["name"] for e in entries]
    data = {e["name"]: load_split(data_dir / e["datalist"], "training", cfg.data) for e in entries}
    torch.manual_seed(fed.seed)  # the ServerApp's _initial_model
    w0 = weights(build_model(cfg.model, cfg.data.num_classes, cfg.vfda))
    lr = round_lr(fcfg.lr, 1, fcfg.num_rounds, fcfg.lr_schedule, fcfg.lr_final_factor)
    models, stats = {}, []
    for name in institutes:  # round 1 on every client (global variance 1)
        model = build_model(cfg.model, cfg.data.num_classes, cfg.vfda)
        model.load_state_dict(w0)
        configure_vfda(model, enabled=True, rule=cfg.vfda.rule)
        train_local(model, data[name], steps=fcfg.local_steps, batch_size=fcfg.batch_size, lr=lr,
                    seed=client_seed(fed, 1, name))
        models[name] = model
        stats.append(local_statistics(model))
    gvar = global_variance(stats)  # Eq. 4: what the server sends with round 2
    feats = {name: layer_inputs(models[name], torch.stack([data[name][j][0] for j in range(fcfg.batch_size)]))
             for name in institutes}  # one forward pass per institute, every layer's input
    layers: dict[str, Any] = {}
    for lname in vfda_layers(models[institutes[0]]):
        g_mu, g_sigma = gvar[f"{lname}.global_var_mu"], gvar[f"{lname}.global_var_sigma"]
        entry: dict[str, Any] = {"global_var_mu_mean": float(g_mu.mean()),
                                 "global_var_sigma_mean": float(g_sigma.mean()),
                                 "sqrt_global_var_mu_mean": float(g_mu.sqrt().mean())}
        for rule in RULES:
            for cond, (gm, gs) in (("global_1", (None, None)), ("global_server", (g_mu, g_sigma))):
                vals = []
                for i, name in enumerate(institutes):
                    vals.append(relative_perturbation(feats[name][lname], rule, gm, gs, cfg.vfda.eps, draws, seed=i))
                entry[f"{rule}_{cond}"] = sum(vals) / len(vals)
        entry["product_ratio_server_over_1"] = entry["product_global_server"] / entry["product_global_1"]
        layers[lname] = entry
    return {"federation": fed.id, "round": 1, "institutes": institutes, "local_steps": fcfg.local_steps,
            "batch_size": fcfg.batch_size, "draws": draws, "p": 1.0, "layers": layers}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=dataset_dir("institutes.json", "a VFDA dataset folder with institutes.json "
                                                               "(python -m flows vfda data)"),
                    default=None, help="a vfda dataset folder (default: generate the quick one)")
    ap.add_argument("--out", type=output_file, default=None, help="write the results as JSON here")
    ap.add_argument("--draws", type=positive_int, default=50, help="VFDA samples per layer and batch")
    args = ap.parse_args(argv)

    import torch

    from components.base import ConfigError, InputError
    from components.vfda.config import VfdaConfig
    from components.vfda.data import generate_dataset

    torch.set_num_threads(1)
    cfg = VfdaConfig()
    t0 = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            data_dir = args.data
            if data_dir is None:
                data_dir = Path(tmp) / "data"
                generate_dataset(cfg.data, data_dir, seed=cfg.seed)
            res = measure(data_dir.resolve(), cfg, args.draws)
    except (ConfigError, InputError) as err:
        return fail(err)
    res["data"] = str(args.data) if args.data else "generated (VfdaConfig() defaults)"
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    print(f"relative feature perturbation ||Ẑ-Z|| / ||Z-μ|| at p=1, mean over {args.draws} draws and the "
          f"{len(res['institutes'])} training institutes; server variance after round 1 of {res['federation']}")
    print()
    print("| VFDA layer | mean Σ²_global (μ) | mean Σ²_global (σ) | product, global = 1 | product, server Σ²_global "
          "| ratio | fedfa, global = 1 | fedfa, server Σ²_global |")
    print("|---|---|---|---|---|---|---|---|")
    for lname, e in res["layers"].items():
        print(f"| `{lname}` | {e['global_var_mu_mean']:.1e} | {e['global_var_sigma_mean']:.1e} | "
              f"{e['product_global_1']:.3f} | {e['product_global_server']:.4f} | {e['product_ratio_server_over_1']:.3f} | "
              f"{e['fedfa_global_1']:.3f} | {e['fedfa_global_server']:.3f} |")
    print(f"\nwall {res['wall_s']} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = args.out.with_name(f".{args.out.name}.tmp")
        tmp_out.write_text(json.dumps(res, indent=2) + "\n")
        tmp_out.replace(args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
