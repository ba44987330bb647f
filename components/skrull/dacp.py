"""DACP — Distributed-aware Context Parallelism (Skrull Alg. 1 + RollBack, Alg. 3).

Inside one micro-batch, decide per sequence whether it is **sharded** across the N ranks of the CP
group or kept **whole** on one CP rank, such that no rank holds more than BucketSize C tokens
(Eq. 7) and the compute load is balanced (Eqs. 1–4). Design principles (paper §4): (i) avoid
sharding — place sequences locally first, shortest first; (ii) compute balance before memory
balance — try the least-loaded rank, then the rank with the most free memory; (iii) when even
sharding does not fit, **roll back**: shard the first (= shortest) local sequence on the binding rank
to free memory there, and retry. With ``rollback=False`` (the paper's ablation) a sequence that
fits nowhere is placed on the least-loaded rank anyway — the schedule then exceeds C ("OOM").

:func:`round_robin_place` is Alg. 4, the case-study baseline: input order, most-free bucket first.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from components.skrull.cost_model import SHARDED, CostModel, shard_sizes
from components.skrull.schedule import check_degree


class DACPInfeasible(Exception):
    """The micro-batch cannot be placed within the bucket (GDS then uses more micro-batches)."""


class _Buckets:
    """Remaining bucket RB_j and compute load L_j of the N CP ranks while placing (Alg. 1 state)."""

    def __init__(self, lengths: Sequence[int], cp: int, bucket: int, cost: CostModel):
        self.lengths, self.cp, self.cost = [int(s) for s in lengths], cp, cost
        self.rb = [int(bucket)] * cp      # remaining bucket (tokens)
        self.load = [0.0] * cp            # compute load L_j (seconds): local + sharded work on rank j
        self.local = [0.0] * cp           # T_comp(Local_j)
        self.dist = 0.0                   # T_comp(Dist), the same on every rank
        self.volume = 0.0                 # V of the sharded sequences
        self.ret: dict[int, int] = {}     # sequence -> CP rank or SHARDED, in placement order

    def t_dacp(self, local: Sequence[float] | None = None, dist: float | None = None,
               volume: float | None = None) -> float:
        """Eqs. 1–2 on the current (or a hypothetical) partial placement."""
        local = self.local if local is None else local
        hidden, exposed = self.cost.comm_split(self.volume if volume is None else volume)
        d = self.dist if dist is None else dist
        return max(self.cost.rank_time(x, hidden, d, exposed) for x in local)

    def sharding_is_faster(self, k: int, t: int) -> bool:
        """Balance guard [R]: is sharding ``k`` better for T_DACP than keeping it whole on rank t?"""
        s = self.lengths[k]
        if not self.can_shard(k):
            return False
        local = list(self.local)
        local[t] += self.cost.t_comp(s)
        as_local = self.t_dacp(local=local)
        as_shard = self.t_dacp(dist=self.dist + self.cost.t_comp_shard(s, self.cp),
                               volume=self.volume + self.cost.volume(s))
        return as_shard < as_local

    def place_local(self, k: int, t: int) -> None:
        self.rb[t] -= self.lengths[k]
        self.load[t] += self.cost.t_comp(self.lengths[k])
        self.local[t] += self.cost.t_comp(self.lengths[k])
        self.ret[k] = t

    def can_shard(self, k: int) -> bool:
        return all(rb >= sh for rb, sh in zip(self.rb, shard_sizes(self.lengths[k], self.cp)))

    def shard(self, k: int) -> None:
        s = self.lengths[k]
        for r, sh in enumerate(shard_sizes(s, self.cp)):
            self.rb[r] -= sh
            self.load[r] += self.cost.t_comp_shard(s, self.cp)
        self.dist += self.cost.t_comp_shard(s, self.cp)
        self.volume += self.cost.volume(s)
        self.ret[k] = SHARDED

    def unshard(self, k: int, t: int) -> None:
        """Keep the sharded sequence ``k`` whole on rank ``t`` instead."""
        s = self.lengths[k]
        for r, sh in enumerate(shard_sizes(s, self.cp)):
            self.rb[r] += sh
            self.load[r] -= self.cost.t_comp_shard(s, self.cp)
        del self.ret[k]
        self.dist, self.volume = self._sharded_totals()
        self.place_local(k, t)

    def _sharded_totals(self) -> tuple[float, float]:
        """T_comp(Dist) and V of the sharded sequences, summed afresh (no drift from repeated updates)."""
        ks = [k for k, p in self.ret.items() if p == SHARDED]
        return (sum(self.cost.t_comp_shard(self.lengths[k], self.cp) for k in ks),
                sum(self.cost.volume(self.lengths[k]) for k in ks))

    def unshard_where_faster(self) -> int:
        """Balance-guard refinement [R]: while some sharded sequence fits whole on a rank and keeping it
        there lowers T_DACP (Eqs. 1–2), apply the best such move (ties: the lowest sequence index). The guard decides shortest first, before it sees the longer sequences that
        will need the other ranks, so it can shard a sequence that a later placement makes better kept
        whole. Returns the number of moves.

        A candidate is priced without re-evaluating every rank: with ``k`` whole on rank ``t`` only rank
        t's local compute grows, so T_DACP = max(T_hidden, the largest other local, local_t + T_comp(s))
        + T_exposed + dist (Eq. 2 with :meth:`CostModel.comm_split`; equal to :meth:`t_dacp` of that
        placement, a test checks it)."""
        cost, cp, moves = self.cost, self.cp, 0
        inv = {k: (self.lengths[k], shard_sizes(self.lengths[k], cp), cost.t_comp_shard(self.lengths[k], cp),
                   cost.volume(self.lengths[k]), cost.t_comp(self.lengths[k]))
               for k, p in self.ret.items() if p == SHARDED}
        while True:
            sharded = sorted(k for k, p in self.ret.items() if p == SHARDED)
            if not sharded:
                return moves
            current, best = self.t_dacp(), None
            dist_all, volume_all = self._sharded_totals()
            top = max(range(cp), key=lambda r: (self.local[r], -r))          # the most loaded rank
            for k in sharded:
                s, shares, dist_k, volume_k, grown = inv[k]
                # the best rank for k: the least loaded one where it fits (only that rank's local
                # grows, and a less loaded one never gives a larger max); ties: the lowest rank
                fits = [t for t in range(cp) if self.rb[t] + shares[t] >= s]
                if not fits:
                    continue
                t = min(fits, key=lambda r: (self.local[r], r))
                if len(sharded) == 1:                    # none left sharded: exactly no comm, no dist
                    dist, volume = 0.0, 0.0
                else:
                    dist, volume = dist_all - dist_k, volume_all - volume_k
                hidden, exposed = cost.comm_split(volume)
                other = max((self.local[r] for r in range(cp) if r != t), default=0.0) if t == top else self.local[top]
                time_ = max(hidden, other, self.local[t] + grown) + exposed + dist
                if time_ < current * (1 - 1e-9) and (best is None or time_ < best[0]):
                    best = (time_, k, t)
            if best is None:
                return moves
            self.last_move = best                        # (predicted T_DACP, sequence, rank)
            self.unshard(best[1], best[2])
            moves += 1

    def binding_rank(self, k: int) -> int:
        """The rank with the least room for ``k``'s shard (argmin RB in the paper)."""
        shares = shard_sizes(self.lengths[k], self.cp)
        return min(range(self.cp), key=lambda r: (self.rb[r] - shares[r], r))

    def roll_back(self, t: int) -> bool:
        """RollBack(t): shard the first local sequence on rank t whose sharding frees memory there
        and fits on the other ranks [R: the printed pseudo-code updates only rank t's bucket]."""
        for j, p in self.ret.items():
            if p != t:
                continue
            s, shares = self.lengths[j], shard_sizes(self.lengths[j], self.cp)
            if s - shares[t] <= 0:
                continue
            if any(self.rb[r] < shares[r] for r in range(self.cp) if r != t):
                continue
            self.rb[t] += s
            self.load[t] -= self.cost.t_comp(s)
            self.local[t] -= self.cost.t_comp(s)
            del self.ret[j]
            self.shard(j)
            return True
        return False

    def placement(self, n: int) -> tuple[int, ...]:
        return tuple(self.ret[k] for k in range(n))


def dacp_place(lengths: Sequence[int], cp: int, bucket: int, cost: CostModel,
               rollback: bool = True, balance_guard: bool = True, refine: bool = True) -> tuple[int, ...]:
    """Alg. 1: placement (CP rank or SHARDED) of every sequence of one micro-batch.

    ``balance_guard`` [R]: before keeping a sequence whole on a rank, compare T_DACP (Eqs. 1–2) of
    that choice with sharding it, and shard when that is faster. The printed algorithm shards only
    under memory pressure; with an under-full bucket it then keeps long sequences whole and
    unbalances compute badly (see the component README). ``refine`` [R], with the guard: afterwards
    keep whole every sharded sequence whose sharding no longer pays (:meth:`_Buckets.unshard_where_faster`).
    ``balance_guard=False`` is the literal pseudo-code.
    """
    cp = check_degree("parallel degree cp", cp)
    bucket = check_degree("bucket size C", bucket, "expected an integer >= 1 tokens")
    b = _Buckets(lengths, cp, bucket, cost)
    order = sorted(range(len(b.lengths)), key=lambda k: (b.lengths[k], k))   # shortest first
    i = 0
    while i < len(order):
        k = order[i]
        s = b.lengths[k]
        t = min(range(cp), key=lambda r: (b.load[r], r))                    # least-loaded rank
        if b.rb[t] < s:
            t = max(range(cp), key=lambda r: (b.rb[r], -r))                   # most free memory
        if b.rb[t] >= s:
            if balance_guard and b.sharding_is_faster(k, t):
                b.shard(k)
            else:
                b.place_local(k, t)
        else:
            if b.can_shard(k):
                b.shard(k)
            elif not rollback:
                b.place_local(k, min(range(cp), key=lambda r: (b.load[r], r)))  # no guard: may exceed C
            elif b.roll_back(b.binding_rank(k)):
                continue                                                     # retry the same sequence
            else:
                return _shard_all_or_raise(lengths, cp, bucket, k, b)
        i += 1
    if balance_guard and refine:
        b.unshard_where_faster()
    return b.placement(len(b.lengths))


def _shard_all_or_raise(lengths: Sequence[int], cp: int, bucket: int, k: int, b: _Buckets) -> tuple[int, ...]:
    """Where RollBack gives up, shard every sequence if that fits, else the micro-batch is infeasible.

    [R] RollBack tries the binding rank only, so it can give up on a micro-batch that fits with every
    sequence sharded (about 1 in 400 random feasible micro-batches in a fuzz test; at paper scale
    DACP as printed reaches it on the ChatQA2 corpora, Skrull does not). The
    paper does not say what happens then; sharding everything is always a valid placement when it
    fits, so a placer with roll-back never fails where DeepSpeed-style CP would not.
    """
    try:
        return all_sharded(lengths, cp, bucket)
    except DACPInfeasible:
        raise DACPInfeasible(f"sequence {k} ({b.lengths[k]} tokens) does not fit the CP group's buckets "
                             f"{b.rb}, and neither does sharding every sequence of the micro-batch") from None


def dacp_literal_place(lengths: Sequence[int], cp: int, bucket: int, cost: CostModel,
                       rollback: bool = True) -> tuple[int, ...]:
    """Alg. 1 exactly as printed (no balance guard)."""
    return dacp_place(lengths, cp, bucket, cost, rollback, balance_guard=False)


def dacp_guard_only_place(lengths: Sequence[int], cp: int, bucket: int, cost: CostModel,
                          rollback: bool = True) -> tuple[int, ...]:
    """Alg. 1 with the balance guard but without its refinement (the ablation of ``refine``)."""
    return dacp_place(lengths, cp, bucket, cost, rollback, refine=False)


def round_robin_place(lengths: Sequence[int], cp: int, bucket: int, cost: CostModel,
                      rollback: bool = True) -> tuple[int, ...]:
    """Alg. 4: input order; the bucket with the most free capacity, else shard, else roll back."""
    b = _Buckets(lengths, cp, bucket, cost)
    i = 0
    while i < len(b.lengths):
        s = b.lengths[i]
        t = max(range(cp), key=lambda r: (b.rb[r], -r))
        if b.rb[t] >= s:
            b.place_local(i, t)
        elif b.can_shard(i):
            b.shard(i)
        elif not rollback:
            b.place_local(i, t)                                              # no guard: may exceed C
        elif b.roll_back(b.binding_rank(i)):
            continue
        else:
            return _shard_all_or_raise(lengths, cp, bucket, i, b)
        i += 1
    return b.placement(len(b.lengths))


def all_sharded(lengths: Sequence[int], cp: int, bucket: int, cost: CostModel | None = None,
                rollback: bool = True) -> tuple[int, ...]:
    """DeepSpeed-style context parallelism: every sequence sharded over the whole CP group."""
    ls = np.asarray(lengths, dtype=np.int64)
    if ls.size:
        base, extra = np.divmod(ls, 2 * cp)
        ranks = np.arange(cp)
        tokens = (2 * base[:, None] + (ranks[None, :] < extra[:, None])
                  + ((2 * cp - 1 - ranks)[None, :] < extra[:, None])).sum(0)   # shard_sizes, vectorised
        if tokens.max() > bucket:
            raise DACPInfeasible(f"all-sharded micro-batch needs {int(tokens.max())} tokens on a rank > C={bucket}")
    return (SHARDED,) * len(ls)


PLACERS = {"dacp": dacp_place, "dacp_literal": dacp_literal_place, "dacp_guard_only": dacp_guard_only_place, "round_robin": round_robin_place, "all_sharded": all_sharded}
