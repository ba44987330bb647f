"""The exact joint problem (Skrull Eqs. 1–11) as a mixed-integer linear program, for small instances.

Skrull formulates GDS + DACP as one min-max problem and notes that exact solvers are too slow
online. We solve it exactly (scipy's HiGHS ``milp``) on small global batches to measure the
heuristic's optimality gap. Variables, for sequence k, DP rank i, micro-batch j, CP rank r:

* ``x[k,i,j,r]`` ∈ {0,1} — k is kept whole on CP rank r of micro-batch (i, j)   (B·P of the paper)
* ``y[k,i,j]``   ∈ {0,1} — k is sharded in micro-batch (i, j)                   (B·D)
* ``z[i,j]``, ``u[i,j]`` ∈ {0,1} — micro-batch has a sharded sequence / is non-empty
* ``ag, rs, T`` ≥ 0 per micro-batch, ``Z`` ≥ 0 — collective times, micro-batch time, makespan

The piecewise cost model is exactly linearisable: ``max(latency, base + V/bw)`` becomes two lower
bounds (we minimise), and ``max(T_comm, Local_j) + Dist`` two more. So the optimum here is the
optimum of the simulator's own objective (:func:`components.skrull.schedule.price`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from components.base import ConfigError
from components.skrull.cost_model import SHARDED, CostModel, shard_sizes
from components.skrull.schedule import MicroBatch, Schedule, check_batch


@dataclass(frozen=True)
class ILPResult:
    schedule: Schedule | None
    objective_s: float | None       # optimal iteration time (None when not solved)
    bound_s: float | None           # solver's lower bound
    optimal: bool
    seconds: float
    status: str


def solve_exact(lengths: Sequence[int], dp: int, cp: int, cost: CostModel, *,
                max_microbatches: int | None = None, time_limit_s: float = 20.0) -> ILPResult:
    """Optimal schedule of a small global batch (Eqs. 1–11) under ``cost``."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import lil_matrix

    arr = check_batch(lengths, dp, cp, cost.bucket_size)
    K = len(arr)
    if K > 16:
        raise ConfigError(f"exact ILP: {K} sequences; expected <= 16 (the problem grows as K²·dp·cp)")
    M = int(max_microbatches or K)
    C, L = cost.bucket_size, cost.layers
    tc = [cost.t_comp(s) for s in arr]
    tsh = [cost.t_comp_shard(s, cp) for s in arr]
    vol = [cost.volume(s) for s in arr]
    shares = [shard_sizes(int(s), cp) for s in arr]

    # -- variable layout --------------------------------------------------------------------------
    n = 0

    def block(count: int) -> int:
        nonlocal n
        start, n = n, n + count
        return start

    X = block(K * dp * M * cp)
    Y = block(K * dp * M)
    Zs = block(dp * M)
    U = block(dp * M)
    AG = block(dp * M)
    RS = block(dp * M)
    T = block(dp * M)
    Zmax = block(1)
    x = lambda k, i, j, r: X + ((k * dp + i) * M + j) * cp + r   # noqa: E731
    y = lambda k, i, j: Y + (k * dp + i) * M + j                   # noqa: E731
    mb = lambda base, i, j: base + i * M + j                       # noqa: E731

    rows: list[tuple[dict[int, float], float, float]] = []         # (coefficients, lower, upper)
    inf = np.inf
    for k in range(K):                                             # Eqs. 6, 9: every sequence once
        coef = {x(k, i, j, r): 1.0 for i in range(dp) for j in range(M) for r in range(cp)}
        coef.update({y(k, i, j): 1.0 for i in range(dp) for j in range(M)})
        rows.append((coef, 1.0, 1.0))
    for i in range(dp):
        for j in range(M):
            for r in range(cp):                                    # Eq. 7: bucket of every rank
                coef = {x(k, i, j, r): float(arr[k]) for k in range(K)}
                for k in range(K):
                    coef[y(k, i, j)] = float(shares[k][r])
                rows.append((coef, -inf, float(C)))
            for k in range(K):                                     # z >= y
                rows.append(({y(k, i, j): 1.0, mb(Zs, i, j): -1.0}, -inf, 0.0))
            used = {y(k, i, j): 1.0 for k in range(K)}             # u >= any placement
            used.update({x(k, i, j, r): 1.0 for k in range(K) for r in range(cp)})
            used[mb(U, i, j)] = -float(K)
            rows.append((used, -inf, 0.0))
            for cm, base in ((cost.all_gather, AG), (cost.reduce_scatter, RS)):   # Eq. 16, linearised
                if cost.kv_bytes_per_token <= 0:                   # nothing to exchange: no collective runs
                    continue                                       # (CostModel.t_comm of volume 0 is 0)
                rows.append(({mb(Zs, i, j): L * cm.latency_s, mb(base, i, j): -1.0}, -inf, 0.0))
                coef = {y(k, i, j): L * vol[k] / cm.bandwidth_Bps for k in range(K)}
                coef[mb(Zs, i, j)] = L * cm.base_s
                coef[mb(base, i, j)] = -1.0
                rows.append((coef, -inf, 0.0))
            dist = {y(k, i, j): tsh[k] for k in range(K)}
            if cost.overlap:                                       # Eq. 2: max(comm, local) + dist
                coef = dict(dist)
                coef.update({mb(AG, i, j): float(cost.kv_gathers), mb(RS, i, j): 1.0, mb(U, i, j): cost.c_mb,
                             mb(T, i, j): -1.0})
                rows.append((coef, -inf, 0.0))
            for r in range(cp):
                coef = dict(dist)
                coef.update({x(k, i, j, r): tc[k] for k in range(K)})
                coef.update({mb(U, i, j): cost.c_mb, mb(T, i, j): -1.0})
                if not cost.overlap:                               # all comm adds to the local compute
                    coef.update({mb(AG, i, j): float(cost.kv_gathers), mb(RS, i, j): 1.0})
                elif cost.exposed_bwd_comm:                        # the backward's collectives add
                    coef.update({mb(AG, i, j): float(cost.kv_gathers - 1), mb(RS, i, j): 1.0})
                rows.append((coef, -inf, 0.0))
            if j + 1 < M:                                          # symmetry: fill micro-batches in order
                rows.append(({mb(U, i, j + 1): 1.0, mb(U, i, j): -1.0}, -inf, 0.0))
        coef = {mb(T, i, j): 1.0 for j in range(M)}                # Eq. 8: slowest DP rank
        coef[Zmax] = -1.0
        rows.append((coef, -inf, 0.0))
        if i + 1 < dp:                                             # symmetry: DP ranks in decreasing load
            coef = {mb(T, i, j): -1.0 for j in range(M)}
            coef.update({mb(T, i + 1, j): 1.0 for j in range(M)})
            rows.append((coef, -inf, 0.0))

    A = lil_matrix((len(rows), n))
    lo, hi = np.empty(len(rows)), np.empty(len(rows))
    for r_, (coef, a, b) in enumerate(rows):
        for c, v in coef.items():
            A[r_, c] = v
        lo[r_], hi[r_] = a, b
    integrality = np.zeros(n)
    integrality[X:AG] = 1
    upper = np.full(n, np.inf)
    upper[X:AG] = 1.0
    c = np.zeros(n)
    c[Zmax] = 1.0
    t0 = time.perf_counter()
    res = milp(c, constraints=LinearConstraint(A.tocsr(), lo, hi), integrality=integrality,
               bounds=Bounds(np.zeros(n), upper), options={"time_limit": float(time_limit_s), "disp": False})
    seconds = time.perf_counter() - t0
    if res.x is None:
        return ILPResult(None, None, None, False, seconds, str(res.message))
    sol = np.round(res.x[:AG]).astype(int)
    ranks = []
    for i in range(dp):
        mbs = []
        for j in range(M):
            seqs, place = [], []
            for k in range(K):
                if sol[y(k, i, j) - 0] == 1:
                    seqs.append(k)
                    place.append(SHARDED)
                for r in range(cp):
                    if sol[x(k, i, j, r)] == 1:
                        seqs.append(k)
                        place.append(r)
            if seqs:
                mbs.append(MicroBatch(tuple(seqs), tuple(place)))
        ranks.append(tuple(mbs))
    bound = getattr(res, "mip_dual_bound", None)
    return ILPResult(Schedule(name="ilp", dp=dp, cp=cp, ranks=tuple(ranks)), float(res.fun),
                     float(bound) if bound is not None and np.isfinite(bound) else None,
                     res.status == 0, seconds, str(res.message))
