"""Real multi-process execution of schedules: DeepSpeed ZeRO-2 over gloo with DACP context parallelism.

The ranks form ``dp`` data-parallel replicas of ``cp``-rank context-parallel groups (rank =
dp_rank·cp + cp_rank). A step executes one global batch under a :class:`Schedule`: every DP rank runs
its own micro-batches (their number may differ per rank — DeepSpeed's
``managed_gradient_accumulation: false`` makes ``engine.step()`` the only accumulation boundary),
every CP rank its :class:`RankLayout` of each micro-batch.

Loss semantics are those of the global batch: the summed token cross-entropy divided by the number
of label tokens in the *global* batch, so any schedule of the same batch yields the same loss and
gradient up to floating-point reordering (Skrull App. A). DeepSpeed averages gradients over its
data-parallel world (all ranks, since it does not know about CP), hence the factor ``world_size``.

The functions named ``*_worker`` run under :func:`tasks.launch.spawn` (process group already up).
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from components.base import ConfigError
from components.skrull.schedule import Schedule


def make_groups(rank: int, world_size: int, dp: int, cp: int):
    """(CP process group of this rank, dp_rank, cp_rank). Every rank creates every group."""
    import torch.distributed as dist

    if dp * cp != world_size:
        raise ConfigError(f"parallel degrees dp={dp} × cp={cp} = {dp * cp}; expected the number of processes "
                          f"({world_size})")
    mine = None
    for d in range(dp):
        ranks = list(range(d * cp, (d + 1) * cp))
        g = dist.group.WORLD if dp == 1 else dist.new_group(ranks=ranks)
        if rank in ranks:
            mine = g
    return mine, rank // cp, rank % cp


def label_count(tokens: Sequence[np.ndarray]) -> int:
    return int(sum(max(len(t) - 1, 0) for t in tokens))


def _layouts(schedule: Schedule, tokens, dp_rank: int, cp_rank: int, exchange):
    from components.skrull.context_parallel import build_layout

    return [build_layout(mb.seqs, mb.placement, tokens, cp_rank, schedule.cp, exchange)
            for mb in schedule.ranks[dp_rank]]


def _flat_grads(model):
    import torch

    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                      for p in model.parameters()])


def equivalence_worker(rank: int, world_size: int, spec: dict[str, Any]) -> dict[str, Any]:
    """Loss and full gradient of one global batch under every schedule of ``spec["schedules"]``
    (each with its own dp × cp layout; plain torch.distributed, float64). The property test compares
    them with each other and with a single process."""
    import torch
    import torch.distributed as dist

    from components.skrull.context_parallel import DistExchange, microbatch_loss
    from components.skrull.model import build_model

    model = build_model(spec["model"], spec["vocab_size"], spec["max_positions"], spec["seed"], dtype=torch.float64)
    tokens = spec["tokens"]
    total = label_count(tokens)
    out = {}
    for sched in spec["schedules"]:
        group, dp_rank, cp_rank = make_groups(rank, world_size, sched.dp, sched.cp)
        model.zero_grad(set_to_none=True)
        loss = torch.zeros((), dtype=torch.float64)
        for lay in _layouts(sched, tokens, dp_rank, cp_rank, DistExchange(group, sched.cp)):
            if lay.num_tokens == 0:
                continue
            mb_loss = microbatch_loss(model, lay) / total
            mb_loss.backward()
            loss += mb_loss.detach()
        grads = _flat_grads(model)
        dist.all_reduce(grads)
        dist.all_reduce(loss)
        out[sched.name] = {"loss": float(loss), "grad": grads.numpy().copy()}
    if spec.get("deepspeed"):
        # The same through DeepSpeed ZeRO-2 (float32): one SGD step with lr = 1 moves the weights by
        # exactly minus the accumulated, reduced gradient the engine applies.
        deepspeed = _init_deepspeed()
        for sched in spec["schedules"]:
            if sched.dp * sched.cp != world_size:
                continue
            group, dp_rank, cp_rank = make_groups(rank, world_size, sched.dp, sched.cp)
            model = build_model(spec["model"], spec["vocab_size"], spec["max_positions"], spec["seed"])
            w0 = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])
            cfg = {**deepspeed_config(world_size, 1.0, 0.0, 0.0), "zero_allow_untested_optimizer": True,
                   "optimizer": {"type": "SGD", "params": {"lr": 1.0}}}
            engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=cfg)
            run_step(engine, sched, tokens, dp_rank, cp_rank, DistExchange(group, sched.cp), world_size)
            w1 = torch.cat([p.detach().reshape(-1).clone() for p in engine.module.parameters()])
            out[sched.name]["deepspeed_update"] = (w0 - w1).numpy().copy()
    return out


def reference_loss_and_grad(spec: dict[str, Any]) -> tuple[float, np.ndarray]:
    """Single-process reference: every sequence of the global batch on its own, float64."""
    import torch

    from components.skrull.context_parallel import build_layout, microbatch_loss
    from components.skrull.model import build_model

    model = build_model(spec["model"], spec["vocab_size"], spec["max_positions"], spec["seed"], dtype=torch.float64)
    tokens = spec["tokens"]
    total = label_count(tokens)
    loss = 0.0
    for k in range(len(tokens)):
        lay = build_layout([k], [0], tokens, 0, 1)
        mb_loss = microbatch_loss(model, lay) / total
        mb_loss.backward()
        loss += mb_loss.item()
    return loss, _flat_grads(model).numpy().copy()


def deepspeed_config(world_size: int, lr: float, weight_decay: float, grad_clip: float) -> dict[str, Any]:
    """ZeRO-2 + AdamW; the nominal batch fields are required by DeepSpeed but unused: the caller
    owns accumulation (``managed_gradient_accumulation: false``)."""
    return {
        "train_batch_size": world_size, "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
        "managed_gradient_accumulation": False,
        "zero_optimization": {"stage": 2, "overlap_comm": False, "contiguous_gradients": True},
        "optimizer": {"type": "AdamW", "params": {"lr": lr, "weight_decay": weight_decay, "torch_adam": True}},
        "gradient_clipping": grad_clip, "steps_per_print": 10**9, "wall_clock_breakdown": False,
    }


def _init_deepspeed():
    import deepspeed
    import deepspeed.comm.torch as ds_comm_torch

    # DeepSpeed's CPU backend builds a shared-memory all-reduce op with ninja on first use (tens of
    # seconds to minutes). Only its inference all-reduce uses it; ZeRO-2 training over gloo does not.
    ds_comm_torch.build_shm_op = lambda: None
    deepspeed.init_distributed(dist_backend="gloo")
    return deepspeed


def run_step(engine, sched: Schedule, tokens, dp_rank: int, cp_rank: int, exchange, world_size: int,
             layouts=None, step: bool = True, saved_bytes: list[int] | None = None) -> tuple[float, int]:
    """Forward + backward of every micro-batch of this rank (then ``engine.step()`` if ``step``).

    ZeRO-2 reduce-scatters gradients inside every backward, so every rank of the DP world runs the
    same number of backwards — the most micro-batches of any DP rank; a rank with nothing to do in a
    micro-batch runs a zero-gradient backward. Returns (this rank's scaled loss sum, backwards).

    ``saved_bytes``: if a list, the bytes of the tensors autograd saves for the backward in each of
    this rank's micro-batches (parameters excluded; the profile's activation-memory measure, through
    :func:`components.skrull.profiling._saved_bytes_counter`) are appended to it."""
    from components.skrull.context_parallel import microbatch_loss
    from components.skrull.profiling import _saved_bytes_counter

    if layouts is None:
        layouts = _layouts(sched, tokens, dp_rank, cp_rank, exchange)
    scale = world_size / label_count(tokens)
    n_backward = max(len(r) for r in sched.ranks)
    loss_sum = 0.0
    for j in range(n_backward):
        lay = layouts[j] if j < len(layouts) else None
        if lay is not None and lay.num_tokens > 0:
            if saved_bytes is None:
                loss = microbatch_loss(engine, lay) * scale
            else:
                hooks, seen = _saved_bytes_counter(engine.module)
                with hooks:
                    loss = microbatch_loss(engine, lay) * scale
                saved_bytes.append(int(sum(seen.values())))
            loss_sum += float(loss.detach())
        else:
            loss = sum(p.sum() for p in engine.module.parameters()) * 0.0
        engine.backward(loss, scale_wrt_gas=False)
    if step:
        engine.step()
    return loss_sum, n_backward


def train_worker(rank: int, world_size: int, spec: dict[str, Any]) -> dict[str, Any]:
    """Train one DeepSpeed engine per schedule variant from the same initial weights on the same
    global batches; time every step (barrier to barrier). Variants alternate which goes first."""
    import torch
    import torch.distributed as dist

    from components.skrull.context_parallel import DistExchange
    from components.skrull.model import build_model

    deepspeed = _init_deepspeed()
    dp, cp = spec["dp"], spec["cp"]
    group, dp_rank, cp_rank = make_groups(rank, world_size, dp, cp)
    variants = list(spec["variants"])
    engines = {}
    for name in variants:
        model = build_model(spec["model"], spec["vocab_size"], spec["max_positions"], spec["seed"])
        engines[name], *_ = deepspeed.initialize(
            model=model, model_parameters=model.parameters(),
            config=deepspeed_config(world_size, spec["lr"], spec["weight_decay"], spec["grad_clip"]))
    exchange = DistExchange(group, cp)
    records = []
    for step, batch in enumerate(spec["steps"]):
        tokens = batch["tokens"]
        order = variants if step % 2 == 0 else variants[::-1]
        for name in order:
            engine, sched = engines[name], batch["schedules"][name]
            layouts = _layouts(sched, tokens, dp_rank, cp_rank, exchange)     # the data loader's job
            saved: list[int] = []     # saved-activation bytes per micro-batch: counted by a pack hook inside
            dist.barrier()              # the timed step (a few Python calls per saved tensor; below the noise)
            t0, c0 = time.perf_counter(), time.thread_time()
            loss_sum, n_backward = run_step(engine, sched, tokens, dp_rank, cp_rank, exchange, world_size,
                                            layouts=layouts, step=False, saved_bytes=saved)
            t_compute = time.perf_counter() - t0
            cpu_compute = time.thread_time() - c0       # CPU time of the compute thread (waits excluded)
            engine.step()
            dist.barrier()
            t_step = time.perf_counter() - t0
            stats = torch.tensor([loss_sum, t_compute, cpu_compute], dtype=torch.float64)
            gathered = [torch.zeros(3, dtype=stats.dtype) for _ in range(world_size)]
            dist.all_gather(gathered, stats)
            records.append({
                "step": step, "variant": name, "step_s": t_step,
                "loss": float(sum(g[0] for g in gathered)) / world_size,
                "compute_s_per_rank": [float(g[1]) for g in gathered],
                "cpu_s_per_rank": [float(g[2]) for g in gathered],
                "microbatches": len(layouts), "backwards": n_backward,
                "tokens_per_microbatch": [lay.num_tokens for lay in layouts],
                "saved_bytes_per_microbatch": saved,
            })
    return {"rank": rank, "records": records}


# ---------------------------------------------------------------------------------------------------
# The real-run experiment around the workers: batches, schedules, summary
# ---------------------------------------------------------------------------------------------------
def training_pool(lengths: np.ndarray, length_scale: int, cp: int, max_len: int) -> np.ndarray:
    """Corpus documents usable in the real run: scaled length ≥ 2·cp (zigzag-shardable, has labels)."""
    from components.skrull.lengths import scale_lengths

    scaled = np.minimum(scale_lengths(lengths, length_scale), max_len)
    return np.flatnonzero(scaled >= 2 * cp)


def plan_training(corpus, cost, dp: int, cp: int, global_batch: int, steps: int, length_scale: int,
                  seed: int, variants: Sequence[str] = ("deepspeed", "skrull")) -> dict[str, Any]:
    """Global batches of corpus documents (first ceil(n/scale) tokens) and each variant's schedule of
    each batch: ``deepspeed`` (DeepSpeed-style, the best fixed micro-batch size for these batches),
    ``packed`` (all sharded, micro-batches packed to the token budget) and ``skrull``."""
    from components.base import InputError
    from components.skrull.baselines import best_fixed_micro_batch, deepspeed_schedule, packed_schedule
    from components.skrull.gds import skrull_schedule
    from components.skrull.lengths import scale_lengths
    from components.skrull.schedule import validate
    from components.skrull.simulate import max_group_length

    max_len = max_group_length(cp, cost.bucket_size)
    pool = training_pool(corpus.lengths, length_scale, cp, max_len)
    if len(pool) < global_batch:
        raise InputError(f"corpus: {len(pool)} documents of at least {2 * cp} tokens after scaling by {length_scale}; "
                         f"expected >= train.global_batch={global_batch}")
    rng = np.random.default_rng(seed)
    docs = [rng.choice(pool, size=global_batch, replace=False) for _ in range(steps)]
    keep = lambda i: int(min(scale_lengths(np.array([corpus.lengths[i]]), length_scale)[0], max_len))  # noqa: E731
    batches = [[corpus.document(int(i), keep(int(i))) for i in d] for d in docs]
    lengths = [np.array([len(t) for t in b], dtype=np.int64) for b in batches]
    choice = best_fixed_micro_batch(lengths, dp, cp, cost, lambda l, b: deepspeed_schedule(l, dp, cp, cost, b))
    builders = {"deepspeed": lambda ls: deepspeed_schedule(ls, dp, cp, cost, choice.micro_batch_size),
                "packed": lambda ls: packed_schedule(ls, dp, cp, cost),
                "skrull": lambda ls: skrull_schedule(ls, dp, cp, cost)}
    sched_ms, steps_out = [], []
    for toks, ls in zip(batches, lengths):
        schedules = {}
        for name in variants:
            c0 = time.thread_time()
            schedules[name] = builders[name](ls)
            if name == "skrull":
                sched_ms.append((time.thread_time() - c0) * 1e3)
            validate(schedules[name], ls, cost.bucket_size)
        steps_out.append({"tokens": toks, "lengths": ls, "schedules": schedules})
    return {"steps": steps_out, "micro_batch_size": choice.micro_batch_size, "sched_ms": sched_ms,
            "max_len": max_len, "documents": [d.tolist() for d in docs], "variants": list(variants)}


def activation_summary(results: Sequence[dict[str, Any]], budget_bytes: float,
                       variants: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per variant, over every rank, step and micro-batch of the real run (``results``: what every
    :func:`train_worker` returned): the largest measured saved-activation bytes of a micro-batch, and
    how many micro-batches exceeded ``budget_bytes`` — the activation memory per rank from which the
    profile derived the bucket size C. Unlike the tokens per rank, which every schedule is validated
    against before the run, this is measured inside the real step."""
    out = {}
    for name in variants:
        sizes = [b for r in results for rec in r["records"] if rec["variant"] == name
                 for b in rec["saved_bytes_per_microbatch"]]
        out[name] = {"activation_bytes_max": int(max(sizes, default=0)),
                     "activation_budget_violations": int(sum(b > budget_bytes for b in sizes)),
                     "microbatches_measured": len(sizes)}
    return out


def summarize_training(records: Sequence[dict[str, Any]], warmup: int, cost, plan: dict[str, Any],
                       cp: int) -> dict[str, Any]:
    """Median step time per variant over the timed steps, speed-up, loss agreement, token budget."""
    from components.skrull.schedule import price

    timed = [r for r in records if r["step"] >= warmup]
    names = list(plan["variants"])
    out: dict[str, Any] = {"variants": {}}
    for name in names:
        rs = [r for r in timed if r["variant"] == name]
        cpu = np.array([r["cpu_s_per_rank"] for r in rs])
        out["variants"][name] = {
            "step_s_median": float(np.median([r["step_s"] for r in rs])),
            "step_s_mean": float(np.mean([r["step_s"] for r in rs])),
            "cpu_s_per_step": float(np.median(cpu.sum(1))),             # work, insensitive to sharing
            "cpu_imbalance": float(np.mean(cpu.max(1) / np.maximum(cpu.mean(1), 1e-12))),
            "microbatches": float(np.mean([r["microbatches"] for r in rs])),
            "predicted_step_s": float(np.mean([price(s["schedules"][name], s["lengths"], cost).iteration_s
                                               for s in plan["steps"][warmup:]])),
        }
    v = out["variants"]
    step = {(r["step"], r["variant"]): r["step_s"] for r in timed}
    for base in (n for n in names if n != "skrull"):
        # Paired per-step ratios (the variants run the same batch back to back) cancel slow drifts of
        # the machine's background load; their median is the headline.
        paired = [step[(s, base)] / step[(s, "skrull")] for s in sorted({r["step"] for r in timed})]
        out[f"speedup_vs_{base}"] = float(np.median(paired))
        out[f"speedup_vs_{base}_paired"] = [float(x) for x in paired]
        out[f"speedup_vs_{base}_of_medians"] = v[base]["step_s_median"] / v["skrull"]["step_s_median"]
        out[f"cpu_speedup_vs_{base}"] = v[base]["cpu_s_per_step"] / v["skrull"]["cpu_s_per_step"]
        out[f"predicted_speedup_vs_{base}"] = v[base]["predicted_step_s"] / v["skrull"]["predicted_step_s"]
    losses = {(r["step"], r["variant"]): r["loss"] for r in records}
    diffs = [abs(losses[(s, n)] - losses[(s, "skrull")]) / abs(losses[(s, "skrull")])
             for s in sorted({r["step"] for r in records}) for n in names]
    out["loss_rel_diff_max"] = float(max(diffs))
    out["loss_first"] = float(losses[(0, "skrull")])
    out["loss_last"] = float(losses[(max(s for s, _ in losses), "skrull")])
    out["micro_batch_size_deepspeed"] = int(plan["micro_batch_size"])
    out["sched_ms_max"] = float(max(plan["sched_ms"]))
    return out
