"""Local training and evaluation on one institute (what a ClientApp runs each round).

Loss: MONAI ``DiceCELoss``; metric: MONAI ``DiceMetric`` (foreground classes, empty classes ignored).
Variants: ``base`` (random flips only), ``mixup`` (local MixUp of images; the loss mixes the two label
maps, as in FedFA's ``mixup_data``, and every volume is mixed with a *different* volume of its batch),
``vfda*`` (VFDA layers enabled). FedProx adds ``mu/2 ||w - w_global||^2`` to the loss.
Batches: each step draws ``batch_size`` distinct volumes; an epoch is a random permutation of the
institute's volumes, and a batch that straddles two epochs still never repeats a volume.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn


def round_lr(lr: float, server_round: int, num_rounds: int, schedule: str = "cosine",
             final_factor: float = 0.1) -> float:
    """Learning rate of ``server_round`` (1-based): constant, or cosine from ``lr`` (round 1) to
    ``final_factor * lr`` (last round)."""
    if schedule == "constant" or num_rounds <= 1:
        return lr
    t = (min(max(server_round, 1), num_rounds) - 1) / (num_rounds - 1)
    return lr * (final_factor + (1 - final_factor) * 0.5 * (1 + math.cos(math.pi * t)))


def _batch(data: Sequence[tuple[torch.Tensor, torch.Tensor]], idx: Sequence[int],
           rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack volumes ``idx`` with random axis flips (the spatial augmentation every variant shares)."""
    xs, ys = [], []
    for i in idx:
        x, y = data[i]
        flips = [d + 1 for d in range(3) if rng.random() < 0.5]
        if flips:
            x, y = torch.flip(x, flips), torch.flip(y, flips)
        xs.append(x)
        ys.append(y)
    return torch.stack(xs), torch.stack(ys)


def mixup_partners(batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """MixUp partner of each sample: a random cyclic shift by 1..B-1, so sample ``i`` is mixed with
    sample ``partner[i] != i`` (a plain permutation is the identity half the time at B=2, which mixes
    a volume with itself). With B=1 there is no partner: the sample is its own (no mixing)."""
    if batch_size < 2:
        return np.zeros(batch_size, dtype=np.int64)
    return (np.arange(batch_size) + int(rng.integers(1, batch_size))) % batch_size


def next_epoch(n: int, pending: Sequence[int], batch_size: int, rng: np.random.Generator) -> list[int]:
    """A random permutation of ``range(n)`` to append to the ``pending`` rest of the last epoch
    (fewer than ``batch_size`` indices) such that the batch made of the rest and the new epoch's
    first indices repeats no volume: the first ``batch_size - len(pending)`` positions are filled
    with the permutation's first indices that are not in the rest, everything else follows in the
    permutation's order (unchanged when nothing conflicts, so the draw and the RNG stream are the
    same as a plain permutation's). Needs ``n >= batch_size``; deterministic given ``rng``."""
    perm = [int(i) for i in rng.permutation(n)]
    need = batch_size - len(pending)
    if not pending or need <= 0 or n < batch_size:
        return perm
    held = set(int(i) for i in pending)
    head = [i for i in perm if i not in held][:need]  # n - len(pending) >= need candidates
    chosen = set(head)
    rest = [i for i in perm if i not in chosen]
    return head + rest


def train_local(model: nn.Module, data: Sequence[tuple[torch.Tensor, torch.Tensor]], *, steps: int,
                batch_size: int, lr: float, seed: int, mixup_alpha: float | None = None,
                proximal_mu: float = 0.0) -> dict[str, float]:
    """``steps`` Adam steps on ``data``; returns the mean training loss. ``mixup_alpha`` enables
    local MixUp (each volume mixed with another volume of its batch, :func:`mixup_partners`);
    ``proximal_mu > 0`` the FedProx term around the weights the model starts from. With fewer
    volumes than ``batch_size`` a batch holds repeats (every volume at least once)."""
    from monai.losses import DiceCELoss

    from components.vfda.vfda import seeded_draws

    if not data:
        raise ValueError("train_local: empty training set")
    # every random draw comes from generators seeded here (numpy: batches, flips, MixUp; torch: VFDA's
    # Eq. 6 via seeded_draws), never from torch's global RNG, which concurrent lanes would share
    rng = np.random.default_rng(seed)
    device = next(model.parameters()).device
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    global_params = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else None
    model.train()
    total, n = 0.0, len(data)
    order = [int(i) for i in rng.permutation(n)]
    with seeded_draws(model, seed, device):
        for _ in range(steps):
            while len(order) < batch_size:  # reshuffle every epoch; a batch never repeats a volume (n >= batch_size)
                order += next_epoch(n, order, batch_size, rng)
            idx, order = order[:batch_size], order[batch_size:]
            x, y = _batch(data, idx, rng)
            x, y = x.to(device), y.to(device)
            if mixup_alpha:
                lam = float(rng.beta(mixup_alpha, mixup_alpha))
                perm = torch.from_numpy(mixup_partners(x.shape[0], rng)).to(device)
                logits = model(lam * x + (1 - lam) * x[perm])
                loss = lam * loss_fn(logits, y) + (1 - lam) * loss_fn(logits, y[perm])
            else:
                loss = loss_fn(model(x), y)
            if global_params is not None:
                prox = sum(((p - g) ** 2).sum() for p, g in zip(model.parameters(), global_params))
                loss = loss + 0.5 * proximal_mu * prox
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
    return {"train_loss": total / max(steps, 1)}


@torch.no_grad()
def evaluate_dice(model: nn.Module, data: Sequence[tuple[torch.Tensor, torch.Tensor]], num_classes: int,
                  batch_size: int = 4, per_volume: bool = False) -> dict[str, Any]:
    """Mean Dice over foreground classes (each class averaged over the volumes that contain it),
    plus ``dice_class<k>``. With ``per_volume``, also ``per_volume``: one list per volume, in the
    order of ``data``, of its foreground classes' Dice (None where the class is absent from the
    volume's label, which the mean leaves out); the figures above are computed from it as before."""
    from monai.metrics import DiceMetric
    from monai.networks.utils import one_hot

    metric = DiceMetric(include_background=False, reduction="mean_batch", ignore_empty=True)
    model.eval()
    device = next(model.parameters()).device
    for i in range(0, len(data), batch_size):
        x = torch.stack([d[0] for d in data[i:i + batch_size]]).to(device)
        y = torch.stack([d[1] for d in data[i:i + batch_size]]).to(device)
        pred = model(x).argmax(1, keepdim=True)
        metric(one_hot(pred, num_classes), one_hot(y, num_classes))
    per_class = metric.aggregate().tolist()
    volumes = metric.get_buffer().tolist() if per_volume else None
    metric.reset()
    out: dict[str, Any] = {f"dice_class{k + 1}": (0.0 if math.isnan(v) else float(v)) for k, v in enumerate(per_class)}
    valid = [v for v in per_class if not math.isnan(v)]
    out["dice"] = float(np.mean(valid)) if valid else 0.0
    if volumes is not None:
        out["per_volume"] = [[None if math.isnan(v) else float(v) for v in row] for row in volumes]
    return out
