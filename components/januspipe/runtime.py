"""The four-phase pipeline runtime over ``torch.distributed`` (gloo on CPU).

Multi-rank ``nccl`` is refused (:func:`check_backend`): every receive of a step is posted before
the first send, which gloo (matching by source and tag) serves, but NCCL matches each pair's
messages in posting order on one stream and its sends rendezvous with the receiver, so a rank
blocked in a receive posted ahead of its own sends can deadlock; this was never run on a GPU here.

Process grid ``world = DP x PP x GP`` (GP fastest): rank ``(dp * PP + pp) * GP + gp``. The PP ranks
of one pipeline run the per-device action lists of a :class:`Schedule`; every GP rank of a stage
runs the same list on its share of the atoms; DP replicas run the same schedule on different
micro-batches. One training step:

1. post a receive for every remote input of this rank's action list (so messages land as soon as
   they are sent), then run the list in order: take the input (local mailbox if the neighbouring
   stage is on this device, else the posted receive), run the phase on :class:`FourPhaseStage`,
   send the output (``isend``) or put it in the mailbox;
2. all-reduce the parameter gradients over the ``DP x GP`` ranks of the same pipeline device
   (an explicit sum: DDP does not support double backward, notes §1.3);
3. Adam step.

Each action's start/end and waiting time are recorded, so a run reports its measured makespan and
per-phase costs next to what the simulator predicts. A step run under
:class:`SavedTensorMeter` also reports the peak bytes of saved activations per rank.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from components.base import ConfigError
from components.januspipe.schedules import Action, Schedule, predecessor, receive_order, successor
from components.januspipe.stage import FourPhaseStage
from components.mlip.config import MlipModelConfig
from components.mlip.data import Structure
from components.mlip.graph import AtomGraph, GraphDataset
from components.mlip.model import MatrisLikeMLIP, ModelStage, split_blocks
from components.mlip.train import LossWeights, prepare_model


@dataclass
class RunSpec:
    """Everything a rank needs (picklable: it travels to spawned processes)."""

    schedule: Schedule
    model: MlipModelConfig
    structures: list[Structure]          # DP x M x structures_per_microbatch structures
    weights: LossWeights = LossWeights()
    structures_per_microbatch: int = 1
    dp: int = 1
    gp: int = 1
    steps: int = 3                       # timed steps (after the warm-up step)
    warmup: int = 1
    lr: float = 1e-3
    dtype: str = "float32"
    seed: int = 0
    measure_memory: bool = True          # run the warm-up step under SavedTensorMeter
    return_grads: bool = False           # gradients of the first step (before the optimiser)
    optimizer_step: bool = True
    device: str = "cpu"                  # "cuda": one GPU per rank (launch with backend="nccl")

    @property
    def world_size(self) -> int:
        return self.dp * self.schedule.num_devices * self.gp


class SavedTensorMeter:
    """Live bytes of tensors saved for backward (activations), and their peak.

    ``saved_tensors_hooks`` wrap every saved tensor in a holder; a holder is freed with the autograd
    graph that owns it. Storage is counted once however many views are saved; parameters are not
    activations and are skipped."""

    def __init__(self, exclude: Sequence[torch.Tensor] = ()):
        self.exclude = {t.untyped_storage().data_ptr() for t in exclude}
        self.refs: dict[int, int] = {}
        self.sizes: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    class _Held:
        __slots__ = ("tensor", "meter", "key")

        def __del__(self):
            if self.key is not None:
                self.meter._release(self.key)

    def _pack(self, t: torch.Tensor):
        held = SavedTensorMeter._Held()
        # detached: the same storage without its grad_fn (autograd restores the graph link on
        # unpack); holding ``t`` itself made a cycle graph -> saved variable -> holder -> t -> graph
        # that retain_graph=True kept alive, so every micro-batch leaked and inflated the peak
        held.tensor, held.meter, held.key = t.detach(), self, None
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key and key not in self.exclude:
            held.key = key
            if self.refs.get(key, 0) == 0:
                self.sizes[key] = storage.nbytes()
                self.current += storage.nbytes()
                self.peak = max(self.peak, self.current)
            self.refs[key] = self.refs.get(key, 0) + 1
        return held

    @staticmethod
    def _unpack(held):
        return held.tensor

    def _release(self, key: int) -> None:
        self.refs[key] -= 1
        if self.refs[key] == 0:
            del self.refs[key]
            self.current -= self.sizes.pop(key)

    def __enter__(self):
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


def message_shapes(phase: int, graph: AtomGraph, hidden: int, with_strain: bool) -> list[tuple[int, ...]]:
    """Tensors of the message a stage *receives* in ``phase``: the state (h, e) for P1/P4; the
    state plus the position(/strain) gradient for P2 (a, G) and P3 (ā, v)."""
    state = [(graph.num_local_atoms, hidden), (int(graph.edge_center.shape[0]), hidden)]
    geo = [(graph.num_atoms_total, 3)] + ([(graph.num_structures, 3, 3)] if with_strain else [])
    return state + (geo if phase in (2, 3) else [])


def _flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors]) if tensors else torch.zeros(0)


def _unflatten(buf: torch.Tensor, shapes: Sequence[tuple[int, ...]]) -> tuple[torch.Tensor, ...]:
    out, k = [], 0
    for s in shapes:
        n = 1
        for x in s:
            n *= x
        out.append(buf[k:k + n].view(s))
        k += n
    return tuple(out)


@dataclass
class _Grid:
    pp: int
    dp: int
    gp: int
    pp_i: int
    dp_i: int
    gp_i: int

    def rank(self, dp_i: int, pp_i: int, gp_i: int) -> int:
        return (dp_i * self.pp + pp_i) * self.gp + gp_i


def _make_groups(grid: _Grid, member: bool = True):
    """All ranks of the launch create every group in the same order (``new_group`` is collective);
    return (my GP group, my grad group), or Nones for a rank outside this run (``member=False``)."""
    import torch.distributed as dist

    gp_group = grad_group = None
    for d in range(grid.dp):
        for p in range(grid.pp):
            ranks = [grid.rank(d, p, g) for g in range(grid.gp)]
            grp = dist.new_group(ranks) if grid.gp > 1 else None
            if member and d == grid.dp_i and p == grid.pp_i:
                gp_group = grp
    for p in range(grid.pp):
        ranks = [grid.rank(d, p, g) for d in range(grid.dp) for g in range(grid.gp)]
        grp = dist.new_group(ranks) if len(ranks) > 1 else None
        if member and p == grid.pp_i:
            grad_group = grp
    return gp_group, grad_group


#: topologies built in this process, by structure content and cutoffs (the specs of one launch share
#: their structures; a topology is a pure function of them)
_TOPOLOGIES: dict[tuple, Any] = {}


def _topology_key(s: Structure, cutoff: float, three_body_cutoff: float) -> tuple:
    return (cutoff, three_body_cutoff, s.numbers.tobytes(), s.positions.tobytes(), s.cell.tobytes(),
            s.pbc.tobytes(), s.numbers.dtype.str, s.positions.dtype.str, s.cell.dtype.str)


def dataset(structures: Sequence[Structure], cutoff: float, three_body_cutoff: float) -> GraphDataset:
    """``GraphDataset(structures, cutoff, three_body_cutoff)`` reusing the topologies this process
    already built for the same structures and cutoffs."""
    from components.mlip.graph import build_topology

    tops = []
    for s in structures:
        key = _topology_key(s, cutoff, three_body_cutoff)
        if key not in _TOPOLOGIES:
            _TOPOLOGIES[key] = build_topology(s, cutoff, three_body_cutoff)
        tops.append(_TOPOLOGIES[key])
    return GraphDataset(structures, cutoff, three_body_cutoff, topologies=tops)


def pipeline_worker(rank: int, world_size: int, spec: RunSpec) -> dict[str, Any]:
    """``tasks.launch.spawn`` target: run ``spec`` on this rank, return its measurements."""
    import torch.distributed as dist

    from components.mlip.parallel import DistributedGraphParallel, GraphParallel

    sched = spec.schedule
    pp = sched.num_devices
    if world_size < spec.world_size:
        raise ValueError(f"world_size={world_size}; the spec needs DP x PP x GP = {spec.dp} x {pp} x {spec.gp}")
    member = rank < spec.world_size
    grid = _Grid(pp, spec.dp, spec.gp, (rank // spec.gp) % pp, rank // (spec.gp * pp), rank % spec.gp)
    gp_group, grad_group = _make_groups(grid, member)
    run_group = dist.new_group(list(range(spec.world_size))) if spec.world_size < world_size else None
    if not member:  # a launch larger than this run: the extra ranks only took part in group creation
        return {"rank": rank, "member": False}
    gp = DistributedGraphParallel(gp_group) if spec.gp > 1 else GraphParallel()
    dtype = getattr(torch, spec.dtype)
    M, V = sched.num_microbatches, sched.num_stages
    device = torch.device("cpu")
    if spec.device == "cuda":
        device = torch.device("cuda", rank % torch.cuda.device_count())
        torch.cuda.set_device(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    torch.manual_seed(spec.seed)
    model = MatrisLikeMLIP(spec.model).to(dtype)
    prepare_model(model, spec.structures)
    model.to(device)
    names = {id(p): n for n, p in model.named_parameters()}
    ranges = split_blocks(len(model.blocks), V)
    my_stages = sched.placement.stages_of(grid.pp_i)
    scale = 1.0 / (M * spec.dp)
    stages = {v: FourPhaseStage(ModelStage(model, *ranges[v]), spec.weights, scale, gp) for v in my_stages}
    params = [p for v in my_stages for p in stages[v].params]
    opt = torch.optim.Adam(params, lr=spec.lr) if spec.optimizer_step else None

    # micro-batches of this DP replica (GP: this rank's part of each)
    ds = dataset(spec.structures, spec.model.cutoff, spec.model.three_body_cutoff)
    spm = spec.structures_per_microbatch
    graphs = []
    for m in range(M):
        first = (grid.dp_i * M + m) * spm
        g = ds.batch(list(range(first, first + spm)), dtype=dtype)
        g = g.partition(grid.gp_i, spec.gp) if spec.gp > 1 else g
        graphs.append(g.to(device=device))
    hidden = spec.model.hidden_dim
    strain = spec.weights.needs_strain
    dev = sched.placement.stage_device
    actions = sched.actions[grid.pp_i]

    def peer(stage: int) -> int:
        return grid.rank(grid.dp_i, dev[stage], grid.gp_i)

    def tag(a: Action) -> int:
        return ((a.phase * M) + a.microbatch) * V + a.stage

    result: dict[str, Any] = {"rank": rank, "member": True, "pp": grid.pp_i, "dp": grid.dp_i, "gp": grid.gp_i,
                              "step_s": [], "pipeline_s": [], "sync_s": [], "actions": [], "losses": [],
                              "windows": []}
    total_steps = spec.warmup + spec.steps
    for step in range(total_steps):
        for p in params:
            p.grad = None
        # post every remote receive of this step, each pair's in the sender's send order (what a
        # backend that ignores tags, e.g. NCCL, matches them by; gloo matches by tag as well)
        recvs: dict[Action, tuple[torch.Tensor, Any, list]] = {}
        for a in receive_order(sched, grid.pp_i):
            pred = predecessor(a, V)
            if pred is not None and dev[pred.stage] != grid.pp_i:
                shapes = message_shapes(a.phase, graphs[a.microbatch], hidden, strain)
                buf = torch.empty(sum(_numel(s) for s in shapes), dtype=dtype, device=device)
                recvs[a] = (buf, dist.irecv(buf, src=peer(pred.stage), tag=tag(a)), shapes)
        mailbox: dict[Action, tuple] = {}
        sends = []
        log = []
        meter = SavedTensorMeter(exclude=list(model.parameters())) if (spec.measure_memory and step == 0) else None
        if meter is not None:
            meter.__enter__()
        dist.barrier(group=run_group)
        t0, epoch0 = time.perf_counter(), time.time()
        try:
            for a in actions:
                tw = time.perf_counter()
                pred = predecessor(a, V)
                if pred is None:
                    inputs: tuple = ()
                elif a in recvs:
                    buf, work, shapes = recvs.pop(a)
                    work.wait()
                    inputs = _unflatten(buf, shapes)
                else:
                    inputs = mailbox.pop(a, ())
                ts, cs = time.perf_counter(), time.thread_time()
                out = stages[a.stage].run(a.phase, a.microbatch, graphs[a.microbatch], inputs)
                sync()
                te, ce = time.perf_counter(), time.thread_time()
                nxt = successor(a, V)
                if nxt is not None and out:
                    if dev[nxt.stage] == grid.pp_i:
                        mailbox[nxt] = out
                    else:
                        buf = _flatten(out).contiguous()
                        sends.append((buf, dist.isend(buf, dst=peer(nxt.stage), tag=tag(nxt))))
                log.append((a.phase, a.microbatch, a.stage, ts - t0, te - t0, ts - tw, ce - cs))
            for _, w in sends:
                w.wait()
        finally:
            if meter is not None:
                meter.__exit__(None, None, None)
        t_pipe = time.perf_counter()
        # gradient sum over the DP x GP ranks of this pipeline device
        if grad_group is not None and params:
            flat = _flatten([p.grad if p.grad is not None else torch.zeros_like(p) for p in params])
            dist.all_reduce(flat, group=grad_group)
            for p, g in zip(params, _unflatten(flat, [tuple(p.shape) for p in params])):
                p.grad = g.clone()
        if step == 0 and spec.return_grads:
            result["grads"] = {names[id(p)]: (p.grad.detach().cpu().clone() if p.grad is not None  # picklable
                                              else torch.zeros_like(p, device="cpu")) for p in params}
        if opt is not None:
            opt.step()
        t_end = time.perf_counter()
        if meter is not None:
            result["peak_saved_bytes"] = meter.peak
        if step >= spec.warmup:
            result["pipeline_s"].append(t_pipe - t0)
            result["sync_s"].append(t_end - t_pipe)
            result["step_s"].append(t_end - t0)
            result["actions"].append(log)
            result["windows"].append((epoch0, epoch0 + (t_pipe - t0)))  # wall-clock window (epoch s)
        losses = {m: st.losses.pop(m) for st in stages.values() for m in list(st.losses)}
        result["losses"].append({str(k): v for k, v in losses.items()})
    return result


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for x in shape:
        n *= x
    return n


def summarize(results: list[dict[str, Any]], schedule: Schedule) -> dict[str, Any]:
    """Makespan (max over ranks, median over steps), per-stage per-phase median and mean action times
    (wall and CPU), the mean delay of the cross-device messages a rank waited for, peaks, and the
    wall-clock window (epoch s) of the timed steps."""
    import statistics

    results = [r for r in results if r.get("member", True)]
    steps = len(results[0]["pipeline_s"])
    makespans = [max(r["pipeline_s"][k] for r in results) for k in range(steps)]
    step_s = [max(r["step_s"][k] for r in results) for k in range(steps)]
    wall: dict[tuple[int, int], list[float]] = {}
    cpu: dict[tuple[int, int], list[float]] = {}
    for r in results:
        if r["gp"] != 0 or r["dp"] != 0:
            continue
        for log in r["actions"]:
            for phase, mb, stage, ts, te, _, c in log:
                wall.setdefault((stage, phase), []).append(te - ts)
                cpu.setdefault((stage, phase), []).append(c)
    V = schedule.num_stages

    def med(table):
        return [tuple(statistics.median(table.get((v, p), [0.0])) for p in (1, 2, 3, 4)) for v in range(V)]

    def mean(table):  # keeps each device's total busy time (time-slicing makes the times right-skewed)
        return [tuple(statistics.mean(table.get((v, p), [0.0])) for p in (1, 2, 3, 4)) for v in range(V)]

    # message delay measured in the run: for every cross-device input that was not there when the
    # receiver began waiting, (receiver starts the action) - (sender finished the predecessor), on
    # the machine's common clock; it includes the wake-up of a blocked rank on a shared machine
    from components.januspipe.schedules import Action, predecessor

    delays: list[float] = []
    dev = schedule.placement.stage_device
    for k in range(steps):
        ends: dict[Action, float] = {}
        starts: list[tuple[Action, float, float]] = []
        for r in results:
            if r["gp"] != 0 or r["dp"] != 0 or len(r.get("windows", [])) <= k:
                continue
            e0 = r["windows"][k][0]
            for phase, mb, stage, ts, te, wait, _ in r["actions"][k]:
                a = Action(phase, mb, stage)
                ends[a] = e0 + te
                starts.append((a, e0 + ts, wait))
        for a, start, wait in starts:
            pred = predecessor(a, V)
            if pred is not None and dev[pred.stage] != dev[a.stage] and pred in ends and ends[pred] > start - wait:
                delays.append(max(0.0, start - ends[pred]))  # the message was not there when it began waiting
    wins = [w for r in results for w in r.get("windows", [])]
    window = (min(w[0] for w in wins), max(w[1] for w in wins)) if wins else None
    return {"makespan_s": statistics.median(makespans), "step_s": statistics.median(step_s), "window": window,
            "makespans_s": makespans, "stage_costs_s": med(wall), "stage_cpu_s": med(cpu),
            "stage_wall_mean_s": mean(wall), "stage_cpu_mean_s": mean(cpu),
            "message_delay_s": statistics.mean(delays) if delays else None, "messages_waited": len(delays),
            "peak_saved_bytes": [r.get("peak_saved_bytes", 0) for r in results if r["gp"] == 0 and r["dp"] == 0]}


def run_many(rank: int, world_size: int, specs: Sequence[RunSpec]) -> list[dict[str, Any]]:
    """``tasks.launch.spawn`` target running several specs in one launch (process start-up is paid
    once; every spec must need ``world_size`` ranks)."""
    import torch.distributed as dist

    out = []
    for spec in specs:
        out.append(pipeline_worker(rank, world_size, spec))
        dist.barrier()
    return out


def exactness_error(results: Sequence[dict[str, Any]], reference: dict[str, torch.Tensor]) -> float:
    """Max over parameters of ``|g_pipeline - g_reference|_max / |g_reference|_max`` (relative to the
    largest reference gradient entry); every parameter must be covered by some rank."""
    got: dict[str, torch.Tensor] = {}
    for r in results:
        for name, g in r.get("grads", {}).items():
            if name in got and not torch.equal(got[name], g):  # DP/GP replicas must agree after the sum
                raise ValueError(f"ranks disagree on the gradient of {name}")
            got[name] = g
    missing = set(reference) - set(got)
    if missing:
        raise ValueError(f"pipeline returned no gradient for {sorted(missing)[:5]}")
    scale = max(float(g.abs().max()) for g in reference.values()) or 1.0
    return max(float((got[n] - reference[n]).abs().max()) for n in reference) / scale


# -- launch: ranks forked from a server that imported torch once --------------------------------------
#: what every rank imports (torch, its distributed and optimiser stacks: ``torch.optim.Adam`` imports
#: ``torch._dynamo``, ~2.5 s of CPU per process) - imported once by the fork server, not per rank
PRELOAD = ("torch", "torch.distributed", "torch._dynamo", "torch.optim", "components.januspipe.runtime",
           "components.januspipe.stage", "components.mlip.parallel", "tasks.launch")


def start_fork_server(preload: Sequence[str] = PRELOAD) -> None:
    """Start the fork server now (it imports ``preload`` in the background while the caller works)."""
    import multiprocessing as mp

    mpc = mp.get_context("forkserver")
    mpc.set_forkserver_preload(list(preload))
    from multiprocessing import forkserver

    forkserver.ensure_running()


def fork_server_cpu_seconds() -> float:
    """CPU seconds (user + system) the running fork server itself used (its preload imports): not a
    child this process waits for, so ``RUSAGE_CHILDREN`` misses it (0.0 if none or not Linux)."""
    import os
    from multiprocessing import forkserver

    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, TypeError):
        return 0.0


class _WithCPU:
    """``fn`` as a rank function that also returns this rank's CPU seconds (user + system, start-up
    included). A module-level class so that it pickles by reference to ``fn``."""

    def __init__(self, fn) -> None:
        self.fn = fn
        self.__qualname__ = getattr(fn, "__qualname__", repr(fn))   # named in launch errors

    def __call__(self, rank: int, world_size: int, *args: Any) -> tuple[Any, float]:
        import resource

        out = self.fn(rank, world_size, *args)
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return out, ru.ru_utime + ru.ru_stime


def check_backend(backend: str | None, world_size: int) -> None:
    """Refuse ``backend="nccl"`` with more than one rank (see the module doc): the step posts all its
    receives up front, which NCCL's in-order, rendezvous point-to-point matching can deadlock on."""
    if backend == "nccl" and world_size > 1:
        raise ConfigError(
            f"backend='nccl' with {world_size} ranks: not supported; the runtime posts every receive of a "
            f"step before its sends, which NCCL (per-pair in-order matching, rendezvous sends on one "
            f"stream) may deadlock on and which was never verified on GPUs; expected backend='gloo' "
            f"(CPU tensors) or a single rank")


def launch(fn, world_size: int, *args: Any, backend: str | None = "gloo", threads_per_rank: int = 1,
           timeout: float = 600.0) -> tuple[list[Any], float]:
    """:func:`tasks.launch.spawn` (same rank set-up: environment, one thread, process group, errors,
    time-out) with the ranks forked from the fork server (:func:`start_fork_server`) instead of
    fresh interpreters, which saves each rank's torch import. Returns the per-rank results and the
    ranks' CPU seconds (the ranks are the server's children, not ours: ``RUSAGE_CHILDREN`` misses them)."""
    from tasks.launch import spawn

    check_backend(backend, world_size)
    out = spawn(_WithCPU(fn), world_size, *args, backend=backend, threads_per_rank=threads_per_rank,
                timeout=timeout, start_method="forkserver")
    return [r for r, _ in out], sum(cpu for _, cpu in out)
