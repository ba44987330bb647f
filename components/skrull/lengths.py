"""Sequence-length distributions of long-context SFT data (Skrull, Table 1).

Skrull characterises its three datasets only by the cumulative share of sequences below
1K/4K/8K/32K/128K tokens and the longest sequence (Table 1, verified in the notes). We sample
lengths from a **piecewise log-uniform** distribution whose CDF passes exactly through those
points [R: the shape between the published quantiles and the shortest length are our choice].

``K`` is 1024 tokens here (the table does not say which K it means).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from components.base import ConfigError

K = 1024


@dataclass(frozen=True)
class LengthDistribution:
    """A long-context SFT length distribution given by published CDF points."""

    name: str
    source: str
    cdf: tuple[tuple[int, float], ...]   # (length, share of sequences shorter than length)
    longest: int
    shortest: int = 16                    # [R] lower end of the first bin

    def knots(self) -> tuple[np.ndarray, np.ndarray]:
        """Monotone (length, CDF) knots from ``shortest`` (CDF 0) to ``longest`` (CDF 1)."""
        xs, ps = [self.shortest], [0.0]
        for x, p in self.cdf:
            if x >= self.longest:
                continue
            if p > ps[-1] and x > xs[-1]:
                xs.append(x)
                ps.append(p)
        xs.append(self.longest)
        ps.append(1.0)
        return np.asarray(xs, dtype=np.float64), np.asarray(ps, dtype=np.float64)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` lengths (int64) by inverse-CDF sampling, log-uniform inside each bin."""
        if n < 0:
            raise ConfigError(f"number of lengths n={n}: expected >= 0")
        xs, ps = self.knots()
        u = rng.random(n)
        i = np.clip(np.searchsorted(ps, u, side="right") - 1, 0, len(xs) - 2)
        frac = (u - ps[i]) / (ps[i + 1] - ps[i])
        log_len = np.log(xs[i]) + frac * (np.log(xs[i + 1]) - np.log(xs[i]))
        return np.clip(np.floor(np.exp(log_len)), self.shortest, self.longest).astype(np.int64)


#: Skrull Table 1 [V]: cumulative share of sequences below 1K, 4K, 8K, 32K, 128K; longest sequence.
TABLE1: dict[str, LengthDistribution] = {
    "wikipedia": LengthDistribution(
        "wikipedia", "pleisto/wikipedia-cn-20230720-filtered",
        ((1 * K, 0.8788), (4 * K, 0.9934), (8 * K, 0.9992), (32 * K, 0.9999), (128 * K, 1.0)), 78 * K),
    "lmsyschat1m": LengthDistribution(
        "lmsyschat1m", "LMsysChat1M",
        ((1 * K, 0.8712), (4 * K, 0.9935), (8 * K, 0.9987), (32 * K, 0.9998), (128 * K, 0.9999)), 1643 * K),
    "chatqa2": LengthDistribution(
        "chatqa2", "nvidia ChatQA2-Long-SFT",
        ((1 * K, 0.2192), (4 * K, 0.3148), (8 * K, 0.4043), (32 * K, 0.9986), (128 * K, 1.0)), 99 * K),
}

#: thresholds of Table 1's columns
TABLE1_THRESHOLDS = (1 * K, 4 * K, 8 * K, 32 * K, 128 * K)


def distribution(name: str) -> LengthDistribution:
    if name not in TABLE1:
        raise ConfigError(f"length distribution {name!r}: expected one of {sorted(TABLE1)}")
    return TABLE1[name]


def cdf_table(lengths: np.ndarray, thresholds=TABLE1_THRESHOLDS) -> dict[str, float]:
    """Share of ``lengths`` below each threshold (Table 1's columns) and the longest length."""
    lengths = np.asarray(lengths)
    out = {f"lt_{t // K}k": float(np.mean(lengths < t)) if lengths.size else 0.0 for t in thresholds}
    out["longest"] = int(lengths.max()) if lengths.size else 0
    out["mean"] = float(lengths.mean()) if lengths.size else 0.0
    return out


def scale_lengths(lengths: np.ndarray, factor: int) -> np.ndarray:
    """CPU down-scaling rule (notes §6.4): divide every length by ``factor`` (at least 1 token)."""
    if factor < 1:
        raise ConfigError(f"length_scale={factor}: expected an integer >= 1")
    return np.maximum(1, -(-np.asarray(lengths, dtype=np.int64) // factor))
