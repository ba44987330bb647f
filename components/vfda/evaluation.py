"""Evaluation of trained federations: Dice per institute, held-in and held-out, and the paper table.

Held-in institutes are evaluated on their local test split ("validation" in the datalist) with the
model each institute would use: the global model (FedAvg, FedProx) or the global model with the
institute's own normalisation layers (FedBN). The held-out institute never trained and is evaluated
with the global model (for FedBN: with the server-side average of the norm layers).
Aggregates: per seed, held-in Dice = macro mean over institutes; then mean +- std over seeds, where
std is the population standard deviation (``np.std``, ddof=0) of the per-seed values.

Each gain over the base strategy also gets a 90 % interval (:func:`gain_bootstrap`): a paired
bootstrap that resamples the training seeds and, independently, each institute's test volumes (the
same volumes for every seed and for both arms), and recomputes the seed-mean gain; the claims read
its low end.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from components.base import InputError
from components.vfda.config import VfdaConfig
from components.vfda.federation import effective_rule


def evaluate_federation(model_dir: Path, history: dict[str, Any], data_dir: Path, cfg: VfdaConfig) -> dict[str, Any]:
    """Dice of one trained federation on every institute."""
    import torch

    from components.vfda.data import held_out_institutes, load_split, read_manifest, training_institutes
    from components.vfda.model import build_model
    from components.vfda.training import evaluate_dice

    global_pt = model_dir / "global.pt"
    if not global_pt.is_file():
        raise InputError(f"{global_pt}: trained model not found; run the vfda federate stage first")
    state = torch.load(global_pt, map_location="cpu", weights_only=True)
    norms_pt = model_dir / "local_norms.pt"
    local_norms = torch.load(norms_pt, map_location="cpu", weights_only=True) if norms_pt.is_file() else {}
    manifest = read_manifest(data_dir)
    k = cfg.data.num_classes
    out: dict[str, Any] = {"held_in": {}, "held_out": {}}
    for entry in training_institutes(manifest):
        net = build_model(cfg.model, k, cfg.vfda)
        net.load_state_dict(state)
        if history["strategy"] == "fedbn":
            if entry["name"] not in local_norms:
                raise InputError(f"{norms_pt}: no local norm layers for institute {entry['name']}")
            net.load_state_dict(local_norms[entry["name"]], strict=False)
        out["held_in"][entry["name"]] = evaluate_dice(net, load_split(data_dir / entry["datalist"], "validation", cfg.data), k,
                                                      per_volume=True)
    net = build_model(cfg.model, k, cfg.vfda)
    net.load_state_dict(state)
    for entry in held_out_institutes(manifest):
        out["held_out"][entry["name"]] = evaluate_dice(net, load_split(data_dir / entry["datalist"], "validation", cfg.data), k,
                                                       per_volume=True)
    out["held_in_mean"] = float(np.mean([v["dice"] for v in out["held_in"].values()]))
    out["held_out_mean"] = float(np.mean([v["dice"] for v in out["held_out"].values()])) if out["held_out"] else 0.0
    return out


def _mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and *population* standard deviation (ddof=0) over seeds; the committed figures use it."""
    arr = np.asarray(list(values), dtype=float)
    return (float(arr.mean()), float(arr.std())) if arr.size else (0.0, 0.0)


GAIN_RESAMPLES = 1000
GAIN_BOOTSTRAP_SEED = 1
GAIN_LEVEL = 0.90


def _dice_rows(per_volume: list[list[float | None]]) -> np.ndarray:
    """``evaluate_dice(per_volume=True)``'s rows as a (volumes, classes) float array, NaN = class absent."""
    return np.array([[np.nan if v is None else float(v) for v in row] for row in per_volume], dtype=float).reshape(
        len(per_volume), -1)


def _dice_resampled(rows: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The institute Dice ``evaluate_dice`` reports (per class: mean over the volumes that contain the
    class; then the mean over classes present in any volume; 0 when none is) for each row of volume
    indices ``idx`` (resamples, volumes) -> (resamples,)."""
    sub = rows[idx]                                             # (resamples, volumes, classes)
    present = ~np.isnan(sub)
    counts = present.sum(1)
    sums = np.where(present, sub, 0.0).sum(1)
    per_class = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
    n_classes = (counts > 0).sum(1)
    return np.divide(per_class.sum(1), n_classes, out=np.zeros(len(idx)), where=n_classes > 0)


def gain_bootstrap(pairs: list[tuple[dict[str, Any], dict[str, Any]]], split: str,
                   resamples: int = GAIN_RESAMPLES, seed: int = GAIN_BOOTSTRAP_SEED,
                   level: float = GAIN_LEVEL) -> list[float] | None:
    """90 % percentile interval of the seed-mean Dice gain on ``split`` ("held_in" or "held_out").

    ``pairs``: (variant, base) results of :func:`evaluate_federation` with the same seed. Each resample
    draws the seeds with replacement and, independently, every institute's test volumes with
    replacement (the same volume draw for every seed and both arms: the test set is one sample, shared
    by all federations), recomputes each institute's Dice as ``evaluate_dice`` does, the split's macro
    mean over institutes, and the mean over the drawn seeds of variant minus base. So the interval
    covers both sources of noise the committed figure has: which seeds trained and which volumes were
    tested. The draws depend only on ``seed``, the number of seeds, the institutes' names and their
    volume counts, so every (strategy, variant) is resampled with the same draws.
    None when a result has no ``per_volume`` Dice or the institutes differ between results."""
    if not pairs:
        return None
    pairs = sorted(pairs, key=lambda p: p[0].get("seed", 0))
    insts = sorted(pairs[0][0][split])
    if not insts:
        return None
    rows: list[dict[str, tuple[np.ndarray, np.ndarray]]] = []
    n_vols: dict[str, int] = {}
    for var, base in pairs:
        if sorted(var[split]) != insts or sorted(base[split]) != insts:
            return None
        per_inst = {}
        for inst in insts:
            a, b = var[split][inst], base[split][inst]
            if "per_volume" not in a or "per_volume" not in b:
                return None
            ra, rb = _dice_rows(a["per_volume"]), _dice_rows(b["per_volume"])
            if ra.shape != rb.shape or n_vols.setdefault(inst, len(ra)) != len(ra):
                return None
            per_inst[inst] = (ra, rb)
        rows.append(per_inst)
    n_seeds = len(pairs)
    seed_draw = np.random.default_rng([seed, n_seeds]).integers(0, n_seeds, size=(resamples, n_seeds))
    gain_per_seed = np.zeros((resamples, n_seeds))                # resample b, with b's volume draw
    for inst in insts:
        n_vol = n_vols[inst]
        if n_vol == 0:
            return None
        draw_seq = np.random.SeedSequence([seed, n_vol, *inst.encode()])
        idx = np.random.default_rng(draw_seq).integers(0, n_vol, size=(resamples, n_vol))
        for s, per_inst in enumerate(rows):
            ra, rb = per_inst[inst]
            gain_per_seed[:, s] += (_dice_resampled(ra, idx) - _dice_resampled(rb, idx)) / len(insts)
    gains = np.take_along_axis(gain_per_seed, seed_draw, axis=1).mean(1)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(gains, [tail, 100 - tail])
    return [float(lo), float(hi)]


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """``results``: one dict per federation with strategy, variant, seed, vfda_rule and
    :func:`evaluate_federation`'s output. Returns the ``dice`` and ``gain`` sections of the metrics;
    a gain has ``held_in_ci90`` / ``held_out_ci90`` (and their ``_low`` ends) when the results carry
    per-volume Dice (:func:`gain_bootstrap`)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        groups[(r["strategy"], r["variant"])].append(r)
    dice: dict[str, dict[str, Any]] = defaultdict(dict)
    for (strategy, variant), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        hi_m, hi_s = _mean_std(r["held_in_mean"] for r in rs)
        ho_m, ho_s = _mean_std(r["held_out_mean"] for r in rs)
        per_inst = {}
        for inst in rs[0]["held_in"]:
            per_inst[inst] = _mean_std(r["held_in"][inst]["dice"] for r in rs)[0]
        for inst in rs[0]["held_out"]:
            per_inst[inst] = _mean_std(r["held_out"][inst]["dice"] for r in rs)[0]
        dice[strategy][variant] = {"held_in": hi_m, "held_in_std": hi_s, "held_out": ho_m, "held_out_std": ho_s,
                                   "per_institute": per_inst, "seeds": len(rs)}
    gain: dict[str, dict[str, Any]] = defaultdict(dict)
    for (strategy, variant), rs in groups.items():
        base = {r["seed"]: r for r in groups.get((strategy, "base"), [])}
        paired = [(r, base[r["seed"]]) for r in rs if r["seed"] in base]
        if variant == "base" or not paired:
            continue
        d_in = [r["held_in_mean"] - b["held_in_mean"] for r, b in paired]
        d_out = [r["held_out_mean"] - b["held_out_mean"] for r, b in paired]
        gain[strategy][variant] = {"held_in": _mean_std(d_in)[0], "held_in_std": _mean_std(d_in)[1],
                                   "held_out": _mean_std(d_out)[0], "held_out_std": _mean_std(d_out)[1],
                                   "held_in_seeds_improved": int(sum(d > 0 for d in d_in)),
                                   "held_out_seeds_improved": int(sum(d > 0 for d in d_out)),
                                   "seeds": len(paired)}
        for split in ("held_in", "held_out"):
            ci = gain_bootstrap(paired, split)
            if ci is not None:
                gain[strategy][variant].update({f"{split}_ci90": ci, f"{split}_ci90_low": ci[0]})
    return {"dice": dict(dice), "gain": dict(gain)}


_NAMES = {"fedavg": "FedAvg", "fedprox": "FedProx", "fedbn": "FedBN"}


def variant_label(strategy: str, variant: str, rule: str) -> str:
    """Table label; ``rule`` is the configured ``vfda.rule``, which the ``vfda-product`` and
    ``vfda-fedfa`` ablation variants override (:func:`~components.vfda.federation.effective_rule`)."""
    name = _NAMES.get(strategy, strategy)
    rule = effective_rule(variant, rule)
    if variant == "base":
        return name
    if variant == "mixup":
        return f"{name} + MixUp"
    if variant == "vfda-local":
        return f"{name} + VFDA (local only, {rule})"
    return f"{name} + VFDA ({rule})"


def paper_table(summary: dict[str, Any], rules: dict[tuple[str, str], str]) -> list[dict[str, Any]]:
    """Rows like the paper's table: per-institute Dice, held-in mean +- std, held-out +- std (in %)."""
    rows = []
    for strategy, variants in summary["dice"].items():
        order = sorted(variants, key=lambda v: (["base", "mixup"].index(v) if v in ("base", "mixup") else 2, v))
        for variant in order:
            d = variants[variant]
            row: dict[str, Any] = {"method": variant_label(strategy, variant, rules.get((strategy, variant), "-"))}
            for inst, v in d["per_institute"].items():
                row[inst] = round(100 * v, 2)
            row["held-in (mean ± std)"] = f"{100 * d['held_in']:.2f} ± {100 * d['held_in_std']:.2f}"
            row["held-out (mean ± std)"] = f"{100 * d['held_out']:.2f} ± {100 * d['held_out_std']:.2f}"
            rows.append(row)
    return rows


def load_history(results_dir: Path, fed_id: str) -> dict[str, Any]:
    path = results_dir / "federations" / fed_id / "history.json"
    if not path.is_file():
        raise InputError(f"{path}: federation record not found; run the vfda federate stage first")
    try:
        hist = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: not valid JSON ({err}); expected the federation record the vfda federate "
                         f"stage writes") from None
    if not isinstance(hist, dict) or not isinstance(hist.get("rounds"), list) or not hist["rounds"]:
        raise InputError(f"{path}: expected a JSON object with a non-empty 'rounds' list (the vfda federate "
                         f"stage's federation record)")
    return hist
