"""Schedules as first-class objects: a global batch → per-DP-rank micro-batches → per-sequence placement.

A :class:`Schedule` holds, for every DP rank, its micro-batches; a :class:`MicroBatch` lists the
sequences (indices into the global batch) and, per sequence, the CP rank that processes it whole or
:data:`SHARDED`. Every scheduler (Skrull, the baselines, the ILP) returns one, the simulator prices
it with a :class:`CostModel` and the trainer executes it — so they can be listed, tested and timed
on the same footing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from components.base import ConfigError, InputError
from components.skrull.cost_model import SHARDED, CostModel, shard_sizes


@dataclass(frozen=True)
class MicroBatch:
    seqs: tuple[int, ...]          # indices into the global batch
    placement: tuple[int, ...]     # per sequence: CP rank holding it whole, or SHARDED

    def rank_tokens(self, lengths: Sequence[int], cp: int) -> list[int]:
        """Tokens each CP rank holds (the memory side of Eq. 7)."""
        tokens = [0] * cp
        for k, p in zip(self.seqs, self.placement):
            if p == SHARDED:
                for r, t in enumerate(shard_sizes(lengths[k], cp)):
                    tokens[r] += t
            else:
                tokens[p] += int(lengths[k])
        return tokens

    def num_sharded(self) -> int:
        return sum(1 for p in self.placement if p == SHARDED)


@dataclass(frozen=True)
class Schedule:
    name: str
    dp: int
    cp: int
    ranks: tuple[tuple[MicroBatch, ...], ...]   # per DP rank

    def microbatches(self):
        for i, mbs in enumerate(self.ranks):
            for j, mb in enumerate(mbs):
                yield i, j, mb

    def num_microbatches(self) -> list[int]:
        return [len(m) for m in self.ranks]


def check_degree(name: str, value, what: str = "expected an integer >= 1") -> int:
    """``value`` as an int if it is an integer >= 1 (not a bool, not a float), else :class:`ConfigError`."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name}={value!r}: {what}")
    return int(value)


def check_batch(lengths: Sequence[int], dp: int, cp: int, bucket: int) -> np.ndarray:
    """Validate a global batch against the parallel setting; return the lengths as int64.

    Raises :class:`ConfigError` for parallel degrees that are not integers >= 1 or a data-parallel
    degree above the number of sequences (a DP rank without a sequence has nothing to train on), and
    :class:`InputError` for a batch that is not a non-empty 1-D sequence of positive whole numbers
    (bools, NaN, fractional lengths and strings are refused, not truncated) or holds a sequence that
    cannot fit even when sharded over the whole CP group.
    """
    dp = check_degree("parallel degree dp", dp)
    cp = check_degree("parallel degree cp", cp)
    bucket = check_degree("bucket size C", bucket, "expected an integer >= 1 tokens")
    try:
        raw = np.asarray(lengths)
    except ValueError as err:                      # ragged nesting
        raise InputError(f"global batch: {err}; expected a 1-D sequence of sequence lengths") from None
    if raw.ndim != 1:
        raise InputError(f"global batch: an array of shape {raw.shape}; expected a 1-D sequence of sequence lengths")
    if raw.size == 0:
        raise InputError("global batch: empty (got 0 sequences); expected at least one sequence")
    if raw.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(raw) | (raw != np.floor(raw)))
        if bad.size:
            k = int(bad[0])
            raise InputError(f"global batch: sequence {k} has length {raw[k].item()!r}; expected a positive "
                             f"integer (lengths are token counts; fractional and non-finite ones are refused)")
    mixed_bool = not isinstance(lengths, np.ndarray) and any(isinstance(x, (bool, np.bool_)) for x in lengths)
    if raw.dtype.kind not in "iuf" or mixed_bool:
        k, x = next(((k, x) for k, x in enumerate(raw.tolist() if raw.dtype.kind not in "iuf" else lengths)
                     if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, float, np.integer, np.floating))),
                    (None, None))
        if k is not None:
            raise InputError(f"global batch: sequence {k} has length {x!r} ({type(x).__name__}); "
                             f"expected a positive integer")
    try:
        arr = raw.astype(np.int64)
    except (TypeError, ValueError, OverflowError) as err:
        raise InputError(f"global batch: lengths not representable as int64 ({err}); expected positive integers "
                         f"below 2**63") from None
    if np.any(arr < 1):
        raise InputError(f"global batch: sequence lengths {arr[arr < 1][:5].tolist()} < 1; expected positive lengths")
    if dp > arr.size:
        raise ConfigError(f"parallel degree dp={dp} > the {arr.size} sequences of the global batch; expected "
                          f"at least one sequence per DP rank (dp <= {arr.size})")
    worst = max(shard_sizes(int(arr.max()), cp))
    if worst > bucket:
        k = int(arr.argmax())
        raise InputError(f"global batch: sequence {k} has {int(arr[k])} tokens; even sharded over the CP group "
                         f"(cp={cp}) a rank must hold {worst} > C={bucket} tokens — the longest sequence a group "
                         f"can train is about C×cp={bucket * cp}; truncate the data or raise cp / the budget")
    return arr


def validate(schedule: Schedule, lengths: Sequence[int], bucket: int) -> None:
    """Raise ``AssertionError`` unless every sequence is scheduled exactly once (Eqs. 6, 9) and no
    CP rank of any micro-batch holds more than ``bucket`` tokens (Eqs. 7, 10)."""
    seen = np.zeros(len(lengths), dtype=np.int64)
    assert len(schedule.ranks) == schedule.dp, f"{schedule.name}: {len(schedule.ranks)} DP ranks, expected {schedule.dp}"
    for i, j, mb in schedule.microbatches():
        assert len(mb.seqs) == len(mb.placement)
        for k, p in zip(mb.seqs, mb.placement):
            seen[k] += 1
            assert p == SHARDED or 0 <= p < schedule.cp, f"{schedule.name}: bad placement {p}"
        tokens = mb.rank_tokens(lengths, schedule.cp)
        assert max(tokens, default=0) <= bucket, (
            f"{schedule.name}: DP rank {i} micro-batch {j} puts {max(tokens)} tokens on a CP rank > C={bucket}")
    assert np.all(seen == 1), f"{schedule.name}: sequences scheduled {seen.tolist()} times, expected once each"


@dataclass(frozen=True)
class Priced:
    """A schedule priced by a cost model (Eq. 8): the iteration time is the slowest DP rank's."""

    iteration_s: float
    dp_rank_s: tuple[float, ...]
    microbatches: tuple[int, ...]
    sharded_fraction: float            # of the batch's tokens
    peak_tokens: tuple[int, int]       # (min, max) over all dp×cp ranks of a rank's peak tokens (Table 4)


def price(schedule: Schedule, lengths: Sequence[int], cost: CostModel) -> Priced:
    """Simulated iteration time of ``schedule`` under ``cost`` (Eqs. 1–2, 8, 11)."""
    cp = schedule.cp
    lengths = np.asarray(lengths, dtype=np.int64)
    ranks = np.arange(cp)
    per_dp, sharded, peaks = [], 0, []
    for mbs in schedule.ranks:
        total, peak = 0.0, np.zeros(cp, dtype=np.int64)
        for mb in mbs:
            ls = lengths[list(mb.seqs)]
            if mb.num_sharded() == len(ls):          # all sharded: every rank does the same (vectorised)
                base, extra = np.divmod(ls, 2 * cp)
                tokens = (2 * base[:, None] + (ranks[None, :] < extra[:, None])
                          + ((2 * cp - 1 - ranks)[None, :] < extra[:, None])).sum(0)
                work = float(np.sum(cost.c_tok * ls + cost.c_quad * ls.astype(float) ** 2))
                total += (cost.c_mb + cost.t_comm(float(ls.sum()) * cost.kv_bytes_per_token)
                          + len(ls) * cost.c_seq_shard + work / cp)
                sharded += int(ls.sum())
            else:
                total += cost.microbatch_time(ls.tolist(), mb.placement, cp)
                sharded += int(sum(s for s, p in zip(ls, mb.placement) if p == SHARDED))
                tokens = np.asarray(mb.rank_tokens(lengths, cp))
            peak = np.maximum(peak, tokens)
        per_dp.append(total)
        peaks += peak.tolist()
    tokens = int(np.sum(lengths))
    return Priced(iteration_s=max(per_dp), dp_rank_s=tuple(per_dp),
                  microbatches=tuple(schedule.num_microbatches()),
                  sharded_fraction=sharded / tokens if tokens else 0.0,
                  peak_tokens=(min(peaks), max(peaks)))
