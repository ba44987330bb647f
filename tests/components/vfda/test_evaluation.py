"""The evaluate stage's statistics: per-volume Dice and the paired bootstrap interval of a gain."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from components.vfda.evaluation import _dice_resampled, _dice_rows, gain_bootstrap, summarize
from components.vfda.training import evaluate_dice


class _Fixed(nn.Module):
    """Returns given logits whatever the input (one parameter, which evaluate_dice reads the device of)."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.logits = logits
        self.i = 0

    def forward(self, x):
        out = self.logits[self.i:self.i + len(x)]
        self.i += len(x)
        return out


def test_per_volume_dice_gives_back_the_reported_figures():
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (6, 1, 6, 6, 6), generator=gen)
    labels[2][labels[2] == 2] = 0                          # class 2 absent from volume 2
    logits = torch.randn(6, 3, 6, 6, 6, generator=gen)
    data = [(torch.zeros(1, 6, 6, 6), labels[i]) for i in range(6)]
    plain = evaluate_dice(_Fixed(logits), data, 3)
    out = evaluate_dice(_Fixed(logits), data, 3, per_volume=True)
    assert {k: v for k, v in out.items() if k != "per_volume"} == plain and "per_volume" not in plain
    assert len(out["per_volume"]) == 6 and all(len(row) == 2 for row in out["per_volume"])
    assert out["per_volume"][2][1] is None and all(v is not None for i, r in enumerate(out["per_volume"]) if i != 2
                                                   for v in r)
    # the bootstrap's Dice of the whole test set (every volume once) is the reported Dice
    rows = _dice_rows(out["per_volume"])
    assert _dice_resampled(rows, np.arange(6)[None])[0] == pytest.approx(out["dice"], abs=1e-6)
    assert np.nanmean(rows[:, 1]) == pytest.approx(out["dice_class2"], abs=1e-6)


def test_a_class_absent_from_every_drawn_volume_is_left_out_and_no_class_gives_zero():
    rows = _dice_rows([[0.8, None], [0.6, 0.4]])
    assert _dice_resampled(rows, np.array([[0, 0], [1, 1], [0, 1]])).tolist() == pytest.approx([0.8, 0.5, 0.55])
    assert _dice_resampled(_dice_rows([[None, None]]), np.array([[0]])).tolist() == [0.0]


def _result(seed: int, variant: str, dice: dict[str, list[list[float | None]]], held_out=("E",)) -> dict:
    out = {"strategy": "fedavg", "variant": variant, "seed": seed, "held_in": {}, "held_out": {}}
    for inst, pv in dice.items():
        d = float(_dice_resampled(_dice_rows(pv), np.arange(len(pv))[None])[0])
        out["held_out" if inst in held_out else "held_in"][inst] = {"dice": d, "per_volume": pv}
    out["held_in_mean"] = float(np.mean([v["dice"] for v in out["held_in"].values()]))
    out["held_out_mean"] = float(np.mean([v["dice"] for v in out["held_out"].values()]))
    return out


def _noisy(seed: int, shift_per_volume, n: int = 8) -> dict[str, list[list[float]]]:
    rng = np.random.default_rng(seed)
    out = {}
    for j, inst in enumerate(("A", "B", "E")):
        base = 0.7 + 0.1 * rng.standard_normal((n, 2))
        out[inst] = [[float(v + shift_per_volume(j, i)) for v in base[i]] for i in range(n)]
    return out


def _pairs(shift_by_seed):
    """3 seeds; the variant's per-volume Dice is the base's plus shift_by_seed(seed)(institute, volume)."""
    pairs = []
    for seed in range(3):
        base = _result(seed, "base", _noisy(seed, lambda j, i: 0.0))
        var = _result(seed, "vfda", _noisy(seed, shift_by_seed(seed)))
        pairs.append((var, base))
    return pairs


def test_a_consistent_gain_has_an_interval_above_zero_and_a_noise_gain_one_across_zero():
    steady = _pairs(lambda s: (lambda j, i: 0.02 + 0.005 * ((i % 3) - 1)))
    lo, hi = gain_bootstrap(steady, "held_in")
    assert 0.0 < lo < 0.02 < hi
    # per volume +-0.05 of either sign: the point estimate is small, the interval straddles zero
    noise = _pairs(lambda s: (lambda j, i: 0.05 * (1 if (i + j + s) % 2 else -1) + 0.003))
    lo, hi = gain_bootstrap(noise, "held_in")
    assert lo < 0.0 < hi
    # seeds that disagree widen the interval even when each seed's gain is the same on every volume
    split = _pairs(lambda s: (lambda j, i: [0.03, -0.01, 0.01][s]))
    lo, hi = gain_bootstrap(split, "held_in")
    # seed means of 3 draws from {0.03, -0.01, 0.01}: all three = -0.01 has mass 1/27 (under 5 %), two of
    # -0.01 and one 0.01 another 3/27, so the 5th percentile is -0.01/3; symmetrically the 95th 0.07/3
    assert lo == pytest.approx(-0.01 / 3, abs=1e-9) and hi == pytest.approx(0.07 / 3, abs=1e-9)


def test_the_interval_is_deterministic_and_order_free_and_covers_the_point_estimate():
    pairs = _pairs(lambda s: (lambda j, i: 0.01 * np.sin(3 * i + j + s)))
    a, b = gain_bootstrap(pairs, "held_out"), gain_bootstrap(list(reversed(pairs)), "held_out")
    assert a == b
    estimate = np.mean([v["held_out_mean"] - w["held_out_mean"] for v, w in pairs])
    assert a[0] <= estimate <= a[1]
    assert gain_bootstrap(pairs, "held_out", seed=2) != a                 # the draws do depend on the seed


def test_summarize_adds_the_intervals_only_when_per_volume_dice_is_there():
    pairs = _pairs(lambda s: (lambda j, i: 0.02))
    results = [r for p in pairs for r in p]
    gain = summarize(results)["gain"]["fedavg"]["vfda"]
    assert gain["held_in_ci90_low"] == gain["held_in_ci90"][0] == pytest.approx(0.02)
    assert gain["held_out_ci90"] == pytest.approx([0.02, 0.02]) and gain["held_in"] == pytest.approx(0.02)
    for r in results:                                                    # records of before the interval
        for split in ("held_in", "held_out"):
            for v in r[split].values():
                v.pop("per_volume")
    gain = summarize(results)["gain"]["fedavg"]["vfda"]
    assert "held_in_ci90" not in gain and gain["held_in"] == pytest.approx(0.02)
    assert gain_bootstrap([], "held_in") is None
