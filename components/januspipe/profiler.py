"""Measured inputs of the simulator: per-block and per-stage phase costs, activation sizes, P2P cost.

:func:`measure_costs` times the four phases of real :class:`FourPhaseStage` objects in one process
(one thread, like each pipeline rank; **CPU time** of that thread, ``time.thread_time``, so the
costs are those of a dedicated core whatever else the machine runs at the time, the same clock the
runtime records per action): a model of 6 blocks cut into a first stage (embedding +
1 block), a 1-block and a 3-block middle stage and a last stage (1 block + energy head). Per phase,
``block = (t3 - t1) / 2``, ``stage overhead = t1 - block`` (geometry recomputation and dispatch),
``first/last extra = t_first/last - t1``; medians over repetitions and micro-batches. The same runs,
under :class:`~components.januspipe.runtime.SavedTensorMeter`, give the saved-activation bytes
added by P1 (A1) and by P2 (A2) per block and per stage.

:func:`pingpong_worker` measures gloo point-to-point latency and bandwidth between two processes.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Sequence

import torch

from components.base import InputError
from components.januspipe.runtime import SavedTensorMeter
from components.januspipe.simulator import CostModel
from components.januspipe.stage import FourPhaseStage
from components.mlip.config import MlipModelConfig
from components.mlip.data import Structure
from components.mlip.graph import GraphDataset
from components.mlip.model import MatrisLikeMLIP, ModelStage
from components.mlip.train import LossWeights, prepare_model

PROFILE_SPLIT = ((0, 1), (1, 2), (2, 5), (5, 6))  # first, mid-1, mid-3, last


#: how the timed repetitions of one (stage, phase) become its cost (``measure_costs(estimator=...)``; the
#: profile stage uses the median: ``benchmarks/januspipe/profile_estimators.py`` measured "min" worse)
ESTIMATORS = ("median", "min")


def phase_costs(times: dict[tuple[int, int, int], list[float]], estimator: str = "median") -> dict[tuple[int, int], float]:
    """Per (stage, phase) cost from the samples of each (stage, phase, micro-batch) over repetitions.

    ``"median"``: the median of all samples of the (stage, phase), micro-batches pooled. ``"min"``: for
    each micro-batch the fastest repetition, averaged over the micro-batches (a minimum over pooled
    micro-batches would pick the smallest one): the cost on the machine's fast state, since a slow
    spell of the CPU or another job's time-slice only ever adds to a sample."""
    if estimator not in ESTIMATORS:
        raise InputError(f"estimator={estimator!r}; expected one of {list(ESTIMATORS)}")
    keys = sorted({(s, p) for s, p, _ in times})
    if estimator == "median":
        return {(s, p): statistics.median([x for (s2, p2, _), v in sorted(times.items()) if (s2, p2) == (s, p)
                                           for x in v]) for s, p in keys}
    return {(s, p): statistics.mean([min(v) for (s2, p2, _), v in sorted(times.items()) if (s2, p2) == (s, p)])
            for s, p in keys}


def time_fields(costs: dict[tuple[int, int], float]) -> dict[str, list[float]]:
    """The cost model's time fields from the (stage, phase) costs of the profile's four stages
    (:data:`PROFILE_SPLIT`: first, 1-block middle, 3-block middle, last)."""
    first, mid1, mid3, last = range(4)
    block = [max(0.0, (costs[(mid3, p)] - costs[(mid1, p)]) / 2) for p in (1, 2, 3, 4)]
    return {"block_s": block,
            "stage_overhead_s": [max(0.0, costs[(mid1, p)] - block[p - 1]) for p in (1, 2, 3, 4)],
            "first_extra_s": [max(0.0, costs[(first, p)] - costs[(mid1, p)]) for p in (1, 2, 3, 4)],
            "last_extra_s": [max(0.0, costs[(last, p)] - costs[(mid1, p)]) for p in (1, 2, 3, 4)]}


def with_estimator(measured: dict[str, Any], estimator: str) -> dict[str, Any]:
    """``measured`` (a :func:`measure_costs` result) with its time fields re-derived from its samples by
    ``estimator`` (:func:`phase_costs`); memory fields unchanged."""
    times = {(int(k[5:k.index("_")]), int(k[k.index("_P") + 2:]), m): list(v)
             for k, per_mb in measured["samples_s"].items() for m, v in enumerate(per_mb)}
    return {**measured, "cost_model": {**measured["cost_model"], **time_fields(phase_costs(times, estimator))}}


def measure_costs(model_cfg: MlipModelConfig, structures: Sequence[Structure], weights: LossWeights,
                  structures_per_microbatch: int = 1, reps: int = 5, dtype: torch.dtype = torch.float32,
                  seed: int = 0, progress: Callable[..., None] | None = None,
                  estimator: str = "median") -> dict[str, Any]:
    """Return ``{"cost_model": CostModel fields (no comm), "raw": per-stage costs (:func:`phase_costs`
    with ``estimator``), "samples_s": every timed sample, ...}``."""
    torch.manual_seed(seed)
    cfg = model_cfg.model_copy(update={"num_blocks": 6})
    model = MatrisLikeMLIP(cfg).to(dtype)
    prepare_model(model, structures)
    ds = GraphDataset(structures, cfg.cutoff, cfg.three_body_cutoff)
    if structures_per_microbatch < 1 or len(structures) < structures_per_microbatch:
        raise InputError(f"pipeline.structures_per_microbatch={structures_per_microbatch}: the profile has "
                         f"{len(structures)} training structures; expected 1 <= structures_per_microbatch <= "
                         f"{len(structures)} (profiling.microbatches x structures_per_microbatch structures are timed)")
    n_mb = len(structures) // structures_per_microbatch
    graphs = [ds.batch(list(range(k * structures_per_microbatch, (k + 1) * structures_per_microbatch)), dtype)
              for k in range(n_mb)]
    stages = [FourPhaseStage(ModelStage(model, a, b), weights, 1.0 / n_mb) for a, b in PROFILE_SPLIT]
    S = len(stages)
    from components.januspipe.schedules import chain

    times: dict[tuple[int, int, int], list[float]] = {}  # (stage, phase, micro-batch) -> one per repetition
    mem: dict[tuple[int, int], list[float]] = {}
    for rep in range(reps + 1):
        meter = SavedTensorMeter(exclude=list(model.parameters()))
        with meter:
            for m, g in enumerate(graphs):
                mail: dict[tuple[int, int], tuple] = {}
                for p, s in chain(S):
                    before = meter.current
                    t0 = time.thread_time()
                    out = stages[s].run(p, m, g, mail.pop((p, s), ()))
                    dt = time.thread_time() - t0
                    if rep > 0:  # rep 0 warms up allocators and caches
                        times.setdefault((s, p, m), []).append(dt)
                        mem.setdefault((s, p), []).append(meter.current - before)
                    dst = s + 1 if p in (1, 3) else s - 1
                    if 0 <= dst < S and out:
                        mail[(p, dst)] = out
        for st in stages:
            for prm in st.params:
                prm.grad = None
        if progress and rep > 0:
            progress("profile repetition %d/%d done", rep, reps)
    med = phase_costs(times, estimator)
    a_med = {k: statistics.median(v) for k, v in mem.items()}
    first, mid1, mid3, last = range(4)
    a1_block = max(0.0, (a_med[(mid3, 1)] - a_med[(mid1, 1)]) / 2)
    a2_block = max(0.0, (a_med[(mid3, 2)] - a_med[(mid1, 2)]) / 2)
    g0 = graphs[0]
    el = torch.empty((), dtype=dtype).element_size()
    state_bytes = (g0.num_atoms_total + int(g0.edge_center.shape[0])) * cfg.hidden_dim * el
    geo_bytes = (g0.num_atoms_total * 3 + (9 * g0.num_structures if weights.needs_strain else 0)) * el
    cost = {
        **time_fields(med),
        "block_act_forward_bytes": a1_block, "block_act_force_bytes": a2_block,
        "stage_act_forward_bytes": max(0.0, a_med[(mid1, 1)] - a1_block),
        "stage_act_force_bytes": max(0.0, a_med[(mid1, 2)] - a2_block),
        "state_bytes": float(state_bytes), "geo_bytes": float(geo_bytes),
        "structures_per_microbatch": structures_per_microbatch,
    }
    raw = {f"stage{s}_P{p}_s": v for (s, p), v in sorted(med.items())}
    # every timed sample: stage{s}_P{p} -> one list per micro-batch, one entry per repetition
    samples = {f"stage{s}_P{p}": [times[(s, p, m)] for m in range(len(graphs))]
               for s, p in sorted({(s, p) for s, p, _ in times})}
    raw.update({f"stage{s}_P{p}_saved_bytes": v for (s, p), v in sorted(a_med.items())})
    return {"cost_model": cost, "raw": raw, "samples_s": samples, "edges_per_microbatch": int(g0.edge_center.shape[0]),
            "angles_per_microbatch": int(g0.angle_dst.shape[0]), "atoms_per_microbatch": g0.num_atoms_total}


def phase_ratios(cost: dict[str, Any]) -> list[float]:
    """Per-block phase costs relative to P1 (the four-phase imbalance, notes §1.2)."""
    b = cost["block_s"]
    return [x / b[0] if b[0] > 0 else 0.0 for x in b]


def pingpong_worker(rank: int, world_size: int, sizes_bytes: Sequence[int], reps: int = 20) -> dict[str, float]:
    """Half round-trip time of gloo send/recv for each message size (rank 0 reports): the minimum
    over ``reps`` (time-slicing by other jobs only ever adds to a sample)."""
    import torch.distributed as dist

    out = {}
    for size in sizes_bytes:
        buf = torch.zeros(max(1, size // 4), dtype=torch.float32)
        samples = []
        for k in range(reps + 2):
            dist.barrier()
            t0 = time.perf_counter()
            if rank == 0:
                dist.send(buf, 1)
                dist.recv(buf, 1)
            elif rank == 1:
                dist.recv(buf, 0)
                dist.send(buf, 0)
            if k >= 2:
                samples.append((time.perf_counter() - t0) / 2)
        out[str(size)] = min(samples)
    return out


def p2p_model(halftrip_s: dict[str, float]) -> tuple[float, float]:
    """(latency s, bandwidth B/s) from the smallest and largest measured message sizes. A largest
    message that was not slower than the smallest (noise) cannot give a bandwidth: the bandwidth is
    then bounded by that message size over the latency."""
    sizes = sorted(int(k) for k in halftrip_s)
    small, big = sizes[0], sizes[-1]
    lat = min(halftrip_s[str(small)], halftrip_s[str(big)])
    extra = halftrip_s[str(big)] - halftrip_s[str(small)]
    if extra <= 0:
        return lat, (big - small) / max(lat, 1e-9)
    return lat, (big - small) / extra


def cost_model(measured: dict[str, Any], latency_s: float, bandwidth_Bps: float) -> CostModel:
    c = measured["cost_model"]
    return CostModel(block_s=tuple(c["block_s"]), stage_overhead_s=tuple(c["stage_overhead_s"]),
                     first_extra_s=tuple(c["first_extra_s"]), last_extra_s=tuple(c["last_extra_s"]),
                     block_act_forward_bytes=c["block_act_forward_bytes"],
                     block_act_force_bytes=c["block_act_force_bytes"],
                     stage_act_forward_bytes=c["stage_act_forward_bytes"],
                     stage_act_force_bytes=c["stage_act_force_bytes"], state_bytes=c["state_bytes"],
                     geo_bytes=c["geo_bytes"], latency_s=latency_s, bandwidth_Bps=bandwidth_Bps,
                     structures_per_microbatch=c["structures_per_microbatch"])


def profile_machine(cfg, structures: Sequence[Structure], progress: Callable[..., None] | None = None) -> dict[str, Any]:
    """Everything the simulator needs from this machine, as the ``profile`` stage records it:
    :func:`measure_costs` on the first ``profiling.microbatches`` micro-batches of ``structures``
    (one thread) and the gloo point-to-point model from :func:`pingpong_worker` (2 processes).
    ``cfg``: a :class:`~components.januspipe.config.JanuspipeConfig`. Rebuild the simulator's cost
    model from the result with :func:`cost_model` (``latency_s``, ``bandwidth_Bps``)."""
    from components.mlip.train import LossWeights
    from tasks.launch import spawn

    say = progress or (lambda *a: None)
    torch.set_num_threads(1)
    spm = cfg.pipeline.structures_per_microbatch
    need = cfg.profiling.microbatches * spm
    if len(structures) < need:
        raise InputError(f"pipeline.structures_per_microbatch={spm}, profiling.microbatches="
                         f"{cfg.profiling.microbatches}: the profile needs {need} training structures "
                         f"(microbatches x structures_per_microbatch), the data has {len(structures)}; expected "
                         f"profiling.microbatches x pipeline.structures_per_microbatch <= {len(structures)}")
    measured = measure_costs(cfg.model, list(structures[: cfg.profiling.microbatches * spm]),
                             LossWeights.from_config(cfg.train), spm, reps=cfg.profiling.reps,
                             dtype=getattr(torch, cfg.pipeline.dtype), seed=cfg.seed, progress=progress)
    say("measuring gloo point-to-point latency and bandwidth (2 processes)")
    halftrip = spawn(pingpong_worker, 2, cfg.profiling.p2p_sizes_bytes, timeout=cfg.pipeline.timeout_s)[0]
    latency, bandwidth = p2p_model(halftrip)
    c = measured["cost_model"]
    return {**measured, "p2p_halftrip_s": halftrip, "latency_s": latency, "bandwidth_Bps": bandwidth,
            "phase_ratio_vs_P1": phase_ratios(c),
            "force_graph_over_forward_bytes": c["block_act_force_bytes"] / max(c["block_act_forward_bytes"], 1.0)}
