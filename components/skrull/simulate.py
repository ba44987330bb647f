"""The cost-model simulator: every scheduler on the same global batches, priced by the same model.

:func:`compare` is the speed-up table (Skrull vs. each baseline), :func:`sensitivity` the paper's
batch-size / BucketSize study, :func:`ilp_study` the optimality gap on small instances. Global
batches are drawn from a length pool (a Table 1 sampler or the corpus) and truncated to the longest
sequence a CP group can hold (``max_len``), as a fine-tuning data loader truncates to its maximum
sequence length.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Sequence

import numpy as np

from components.skrull.baselines import (best_fixed_micro_batch, dacp_only_schedule, deepspeed_schedule,
                                         packed_schedule, round_robin_schedule, sorted_schedule)
from components.skrull.cost_model import CostModel, shard_sizes
from components.skrull.dacp import dacp_guard_only_place, dacp_literal_place, round_robin_place
from components.skrull.gds import skrull_schedule
from components.skrull.ilp import solve_exact
from components.skrull.schedule import Schedule, price, validate

#: every scheduler in the tables, in display order
VARIANTS = ("skrull", "gds_printed", "dacp_literal", "guard_only", "dacp_only", "round_robin", "sorted", "packed", "deepspeed",
            "deepspeed_b1")

Progress = Callable[..., None]


def max_group_length(cp: int, bucket: int) -> int:
    """The longest sequence a CP group holds: every zigzag share within C."""
    n = bucket * cp
    while max(shard_sizes(n, cp)) > bucket:
        n -= 1
    return n


def sample_batches(pool: np.ndarray, num_batches: int, batch: int, max_len: int,
                   rng: np.random.Generator) -> list[np.ndarray]:
    """``num_batches`` global batches of ``batch`` lengths drawn from ``pool`` (with replacement)."""
    pool = np.asarray(pool, dtype=np.int64)
    return [np.minimum(rng.choice(pool, size=batch, replace=True), max_len) for _ in range(num_batches)]


def _oom_count(build: Callable[[np.ndarray], Schedule], batches, bucket: int) -> int:
    bad = 0
    for b in batches:
        try:
            validate(build(b), b, bucket)
        except AssertionError:
            bad += 1
    return bad


def compare(batches: Sequence[np.ndarray], dp: int, cp: int, cost: CostModel, seed: int = 0) -> dict[str, Any]:
    """Simulated iteration time of every variant over ``batches``; speed-ups of Skrull."""
    C = cost.bucket_size
    rows: dict[str, dict[str, Any]] = {}

    def run(name: str, build: Callable[[np.ndarray], Schedule], extra: dict | None = None) -> None:
        priced = [price(build(b), b, cost) for b in batches]
        rows[name] = {
            "iteration_s": float(np.mean([p.iteration_s for p in priced])),
            "microbatches_per_dp_rank": float(np.mean([np.mean(p.microbatches) for p in priced])),
            "sharded_token_fraction": float(np.mean([p.sharded_fraction for p in priced])),
            "peak_tokens_min": int(min(p.peak_tokens[0] for p in priced)),
            "peak_tokens_max": int(max(p.peak_tokens[1] for p in priced)),
            **(extra or {}),
        }

    sched_ms, sched_wall_ms = [], []
    for b in batches:   # scheduling overhead of Skrull per global batch (DataLoader-side cost)
        t0, c0 = time.perf_counter(), time.thread_time()
        s = skrull_schedule(b, dp, cp, cost)
        sched_ms.append((time.thread_time() - c0) * 1e3)      # CPU time: robust to a shared machine
        sched_wall_ms.append((time.perf_counter() - t0) * 1e3)
        validate(s, b, C)
    run("skrull", lambda b: skrull_schedule(b, dp, cp, cost))
    run("gds_printed", lambda b: skrull_schedule(b, dp, cp, cost, isolate=False, name="gds_printed"))  # Alg. 2 as printed
    run("dacp_literal", lambda b: skrull_schedule(b, dp, cp, cost, placer=dacp_literal_place, name="dacp_literal"))
    run("guard_only", lambda b: skrull_schedule(b, dp, cp, cost, placer=dacp_guard_only_place, name="guard_only"))
    run("round_robin", lambda b: round_robin_schedule(b, dp, cp, cost))
    run("packed", lambda b: packed_schedule(b, dp, cp, cost))
    run("deepspeed_b1", lambda b: deepspeed_schedule(b, dp, cp, cost, 1))
    for name, builder in (("deepspeed", deepspeed_schedule),
                          ("sorted", lambda l, d, c, m, b: sorted_schedule(l, d, c, m, b, seed=seed))):
        choice = best_fixed_micro_batch(batches, dp, cp, cost, lambda l, b, f=builder: f(l, dp, cp, cost, b))
        run(name, lambda l, f=builder, b=choice.micro_batch_size: f(l, dp, cp, cost, b),
            {"micro_batch_size": choice.micro_batch_size,
             "sizes_tried": len(choice.tried), "sizes_fitting": sum(1 for _, t in choice.tried if t is not None)})
    b_ds = rows["deepspeed"]["micro_batch_size"]   # "DACP without GDS": DeepSpeed's micro-batches, DACP inside
    run("dacp_only", lambda l: dacp_only_schedule(l, dp, cp, cost, b_ds), {"micro_batch_size": b_ds})
    base = rows["skrull"]["iteration_s"]
    speedup = {f"speedup_vs_{n}": rows[n]["iteration_s"] / base for n in VARIANTS if n != "skrull"}
    oom = {"skrull_without_rollback": _oom_count(lambda b: skrull_schedule(b, dp, cp, cost, rollback=False), batches, C),
           "round_robin_without_rollback": _oom_count(
               lambda b: skrull_schedule(b, dp, cp, cost, placer=round_robin_place, rollback=False), batches, C),
           "batches": len(batches)}
    return {"variants": rows, **speedup, "oom": oom,
            "sched_ms_p50": statistics.median(sched_ms), "sched_ms_max": max(sched_ms),
            "sched_wall_ms_max": max(sched_wall_ms),
            "bucket_size": C, "dp": dp, "cp": cp, "batch": int(len(batches[0])),
            "mean_tokens_per_batch": float(np.mean([b.sum() for b in batches]))}


def sensitivity(pool: np.ndarray, cost: CostModel, cp: int, batch_sizes: Sequence[int],
                buckets: Sequence[int], num_batches: int, seed: int) -> list[dict[str, Any]]:
    """Speed-up vs. DeepSpeed (best fixed micro-batch) as BatchSize and BucketSize vary (DP = 1).

    Every row draws its batches with the same seed and truncates them at one length for the whole
    study, the longest sequence the *smallest* swept C (or ``cost``'s, if smaller) can hold, so a
    row differs from another only in what it varies: the bucket rows run on identical batches, and
    the bucket row at ``cost``'s C equals the batch-size row at the largest batch size. (Truncating
    per C changed the data with C; truncating at the largest C would leave sequences that the
    smaller buckets cannot hold even sharded over the whole group.)"""
    max_len = max_group_length(cp, min([cost.bucket_size, *(int(v) for v in buckets)]))
    rows = []
    for kind, values in (("batch_size", batch_sizes), ("bucket_tokens", buckets)):
        for v in values:
            bs = int(v) if kind == "batch_size" else int(max(batch_sizes))
            c = cost if kind == "batch_size" else cost.with_bucket(int(v))
            rng = np.random.default_rng(seed)
            batches = sample_batches(pool, num_batches, bs, max_len, rng)
            res = compare(batches, 1, cp, c, seed)
            rows.append({"vary": kind, "value": int(v), "batch_size": bs, "bucket_tokens": c.bucket_size,
                         "max_len": max_len,
                         "speedup_vs_deepspeed": res["speedup_vs_deepspeed"],
                         "speedup_vs_deepspeed_b1": res["speedup_vs_deepspeed_b1"]})
    return rows


def ilp_study(pools: dict[str, np.ndarray], cost: CostModel, dp: int, cp: int, sequences: int, instances: int,
              time_limit_s: float, seed: int, progress: Progress | None = None) -> list[dict[str, Any]]:
    """Heuristic vs. exact optimum on small global batches, cycling through the length pools."""
    say = progress or (lambda *a: None)
    rng = np.random.default_rng(seed)
    names = sorted(pools)
    max_len = max_group_length(cp, cost.bucket_size)
    rows = []
    for n in range(instances):
        name = names[n % len(names)]
        lengths = sample_batches(pools[name], 1, sequences, max_len, rng)[0]
        c0 = time.thread_time()
        heur = skrull_schedule(lengths, dp, cp, cost)
        heur_ms = (time.thread_time() - c0) * 1e3
        h = price(heur, lengths, cost).iteration_s
        lit = price(skrull_schedule(lengths, dp, cp, cost, placer=dacp_literal_place), lengths, cost).iteration_s
        res = solve_exact(lengths, dp, cp, cost, time_limit_s=time_limit_s)
        if res.schedule is None:
            rows.append({"instance": n, "dataset": name, "status": res.status, "solved": False})
            continue
        validate(res.schedule, lengths, cost.bucket_size)
        incumbent = price(res.schedule, lengths, cost).iteration_s
        # Proven optimum, or else the solver's lower bound: the gap is then an upper bound on the true gap.
        lower = incumbent if res.optimal else (res.bound_s if res.bound_s is not None else 0.0)
        best = min(incumbent, h)
        known = lower > 0
        row = {"instance": n, "dataset": name, "sequences": sequences, "solved": True,
               "optimal": res.optimal, "heuristic_s": h, "ilp_incumbent_s": incumbent, "ilp_lower_s": lower,
               # no positive lower bound (time limit hit before HiGHS reported one): the gap is unknown,
               # not infinite — None (JSON null), left out of the maxima and means of the report
               "gap": h / lower - 1.0 if known else None,
               "gap_vs_best_known": h / best - 1.0,
               "gap_dacp_literal": lit / lower - 1.0 if known else None,
               "heuristic_ms": heur_ms, "ilp_solve_s": res.seconds}
        if not known:
            row["gap_note"] = (f"no positive lower bound from the solver (status {res.status!r}, bound "
                               f"{res.bound_s}); gap unknown, gap_vs_best_known compares with its incumbent")
        rows.append(row)
        say("ILP %d/%d (%s, K=%d): heuristic %.4g s, %s %.4g s, gap %s (%.1f s)", n + 1, instances,
            name, sequences, h, "optimum" if res.optimal else "lower bound", lower,
            f"<= {100 * row['gap']:.2f} %" if known else "unknown", res.seconds)
    return rows
