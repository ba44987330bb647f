"""Discrete-event simulator of four-phase pipeline schedules.

It runs the *same* per-device action lists the runtime executes: every device works through its
list in order; an action starts when the device is free and its one input (the previous action of
the micro-batch's chain) has arrived, i.e. ``start = max(device free, end(pred) + comm)`` with
``comm = latency + bytes / bandwidth`` for a cross-device message and 0 on the same device.

Inputs are measured (see :mod:`components.januspipe.profiler`): per-block and per-stage compute time
of each phase, saved-activation bytes of the energy forward (A1, held until that stage's P4 ends)
and of the create_graph force backward (A2, held until that stage's P3 ends), message sizes and the
point-to-point latency/bandwidth. Outputs: makespan, bubble ratio, peak activation memory per
device, and the timeline (for the schedule pictures).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Sequence

from components.januspipe.schedules import (Action, Placement, Priority, Schedule, ScheduleError, build_schedule,
                                            depth_first, family_grid, janus_sweeps, linear, list_schedule,
                                            phase_major, predecessor, successor, vfold, wave)
from components.mlip.model import split_blocks


@dataclass(frozen=True)
class CostModel:
    """Measured costs of one micro-batch, per interaction block and per stage (seconds, bytes)."""

    block_s: tuple[float, float, float, float]          # one block, phases P1..P4
    stage_overhead_s: tuple[float, float, float, float]  # per stage: geometry recomputation, dispatch
    first_extra_s: tuple[float, float, float, float]     # embedding (first stage) incl. force loss
    last_extra_s: tuple[float, float, float, float]      # energy head (last stage) incl. energy loss
    block_act_forward_bytes: float                      # A1 per block
    block_act_force_bytes: float                        # A2 per block
    stage_act_forward_bytes: float = 0.0                # A1 per stage (geometry)
    stage_act_force_bytes: float = 0.0                  # A2 per stage
    state_bytes: float = 0.0                            # activation message between stages
    geo_bytes: float = 0.0                              # partial force / its cotangent (P2, P3)
    latency_s: float = 0.0
    bandwidth_Bps: float = 1e12
    structures_per_microbatch: int = 1

    def scaled(self, compute: float = 1.0) -> "CostModel":
        """Compute times multiplied by ``compute`` (e.g. oversubscription of shared cores)."""
        f = lambda t: tuple(x * compute for x in t)  # noqa: E731
        return CostModel(**{**asdict(self), "block_s": f(self.block_s),
                            "stage_overhead_s": f(self.stage_overhead_s),
                            "first_extra_s": f(self.first_extra_s), "last_extra_s": f(self.last_extra_s)})

    def message_s(self, phase: int) -> float:
        nbytes = self.state_bytes + (self.geo_bytes if phase in (2, 3) else 0.0)
        return self.latency_s + nbytes / self.bandwidth_Bps

    def stage_costs(self, num_stages: int, num_blocks: int) -> list[tuple[float, float, float, float]]:
        """Compute time of each phase on each of ``num_stages`` stages of a ``num_blocks`` model."""
        out = []
        ranges = split_blocks(num_blocks, num_stages)
        for v, (a, b) in enumerate(ranges):
            c = [self.stage_overhead_s[p] + (b - a) * self.block_s[p] for p in range(4)]
            if v == 0:
                c = [x + y for x, y in zip(c, self.first_extra_s)]
            if v == num_stages - 1:
                c = [x + y for x, y in zip(c, self.last_extra_s)]
            out.append(tuple(c))
        return out

    def stage_memory(self, num_stages: int, num_blocks: int) -> list[tuple[float, float]]:
        """(A1, A2) bytes of each stage."""
        return [(self.stage_act_forward_bytes + (b - a) * self.block_act_forward_bytes,
                 self.stage_act_force_bytes + (b - a) * self.block_act_force_bytes)
                for a, b in split_blocks(num_blocks, num_stages)]


@dataclass
class SimResult:
    schedule: str
    label: str
    num_devices: int
    num_microbatches: int
    makespan_s: float
    bubble_ratio: float
    peak_memory_bytes: list[float]
    busy_s: list[float]
    params: dict[str, Any] = field(default_factory=dict)
    timeline: list[tuple[int, Action, float, float]] | None = None
    release_times: list[float] = field(default_factory=list)  # ends of P3/P4 (memory released)

    @property
    def peak_memory_max_bytes(self) -> float:
        return max(self.peak_memory_bytes)

    def throughput(self, structures_per_microbatch: int = 1) -> float:
        return self.num_microbatches * structures_per_microbatch / self.makespan_s

    def row(self, structures_per_microbatch: int = 1) -> dict[str, Any]:
        return {"schedule": self.schedule, "params": self.label, "devices": self.num_devices,
                "microbatches": self.num_microbatches, "makespan_s": self.makespan_s,
                "throughput_structures_per_s": self.throughput(structures_per_microbatch),
                "bubble_ratio": self.bubble_ratio,
                "peak_activation_MiB": self.peak_memory_max_bytes / 2**20}


def simulate(schedule: Schedule, costs: CostModel, num_blocks: int, keep_timeline: bool = False,
             stage_costs: Sequence[Sequence[float]] | None = None, cores: int | None = None,
             external_load: float = 0.0) -> SimResult:
    """Time ``schedule`` under ``costs`` for a model of ``num_blocks`` blocks (see module doc).

    ``stage_costs[v][p-1]`` overrides the compute times (e.g. CPU times measured inside a real run).
    ``cores``: when the devices plus ``external_load`` (CPU-bound tasks of other jobs on the same
    machine, measured by :mod:`components.januspipe.loadmeter`) exceed the cores (an oversubscribed
    or shared CPU run), the busy devices share the cores with the other jobs (processor sharing:
    each busy device runs at ``min(1, cores / (busy devices + external_load))`` of full speed)."""
    V, D = schedule.num_stages, schedule.num_devices
    compute = [tuple(c) for c in stage_costs] if stage_costs is not None else costs.stage_costs(V, num_blocks)
    if len(compute) != V:
        raise ValueError(f"stage_costs has {len(compute)} stages; the schedule has {V}")
    if external_load < 0:
        raise ValueError(f"external_load={external_load}: expected >= 0")
    if cores is not None and cores < D + external_load:
        return _simulate_shared(schedule, costs, num_blocks, compute, cores, keep_timeline, external_load)
    memory = costs.stage_memory(V, num_blocks)
    dev = schedule.placement.stage_device
    msg = [0.0] + [costs.message_s(p) for p in (1, 2, 3, 4)]
    M, L = schedule.num_microbatches, 4 * V
    # chain position k -> (phase, stage); the predecessor of k is k-1 (same micro-batch)
    pos = [((k // V) + 1, (k % V) if (k // V) % 2 == 0 else V - 1 - (k % V)) for k in range(L)]
    k_dev = [dev[st] for _, st in pos]
    k_cost = [compute[st][ph - 1] for ph, st in pos]
    k_comm = [0.0] + [0.0 if k_dev[k] == k_dev[k - 1] else msg[pos[k - 1][0]] for k in range(1, L)]
    k_mem = [(memory[st][0] if ph == 1 else memory[st][1] if ph == 2 else -memory[st][1] if ph == 3
              else -memory[st][0]) for ph, st in pos]
    lists = schedule.index_lists or [[a.microbatch * L + (a.phase - 1) * V + (a.stage if a.phase in (1, 3)
                                                                             else V - 1 - a.stage)
                                       for a in acts] for acts in schedule.actions]
    end = [-1.0] * (M * L)
    ptr = [0] * D
    free = [0.0] * D
    busy = [0.0] * D
    mem_events: list[list[tuple[float, int, float]]] = [[] for _ in range(D)]
    timeline: list[tuple[int, Action, float, float]] = []
    releases: list[float] = []
    stack = list(range(D))
    while stack:
        d = stack.pop()
        acts = lists[d]
        n = len(acts)
        i = ptr[d]
        f = free[d]
        while i < n:
            idx = acts[i]
            k = idx % L
            if k:
                pe = end[idx - 1]
                if pe < 0:
                    break
                arrive = pe + k_comm[k]
                start = f if f > arrive else arrive
            else:
                start = f
            c = k_cost[k]
            f = start + c
            end[idx] = f
            busy[d] += c
            delta = k_mem[k]
            if delta >= 0:
                mem_events[d].append((start, 1, delta))
            else:
                mem_events[d].append((f, 0, delta))
                releases.append(f)
            if keep_timeline:
                ph, st = pos[k]
                timeline.append((d, Action(ph, idx // L, st), start, f))
            i += 1
            if k + 1 < L and k_dev[k + 1] != d:
                stack.append(k_dev[k + 1])
        ptr[d], free[d] = i, f
    if any(ptr[d] < len(lists[d]) for d in range(D)):
        blocked = [str(schedule.actions[d][ptr[d]]) for d in range(D) if ptr[d] < len(lists[d])]
        raise ScheduleError(f"{schedule.label}: deadlock; devices wait on {', '.join(blocked[:6])}")
    makespan = max(free)
    res = SimResult(schedule.name, schedule.label, D, M, makespan, 1.0 - sum(busy) / (D * makespan),
                    _memory_peaks(mem_events), busy, dict(schedule.params), timeline if keep_timeline else None)
    res.release_times = releases
    return res


def _memory_peaks(events: list[list[tuple[float, int, float]]]) -> list[float]:
    peaks = []
    for ev in events:
        cur = peak = 0.0
        for _, _, delta in sorted(ev, key=lambda e: (e[0], e[1])):  # releases before allocations at equal t
            cur += delta
            peak = max(peak, cur)
        peaks.append(peak)
    return peaks


def _simulate_shared(schedule: Schedule, costs: CostModel, num_blocks: int, compute, cores: int,
                     keep_timeline: bool, external_load: float = 0.0) -> SimResult:
    """Event-driven variant of :func:`simulate` where the busy devices share ``cores`` processors
    (with ``external_load`` CPU-bound tasks of other jobs)."""
    V, D, M = schedule.num_stages, schedule.num_devices, schedule.num_microbatches
    memory = costs.stage_memory(V, num_blocks)
    dev = schedule.placement.stage_device
    msg = [0.0] + [costs.message_s(p) for p in (1, 2, 3, 4)]
    arrival: dict[Action, float] = {}
    ptr = [0] * D
    running: dict[int, list] = {}  # device -> [action, remaining work, start]
    t = 0.0
    busy = [0.0] * D
    mem_events: list[list[tuple[float, int, float]]] = [[] for _ in range(D)]
    timeline = []
    end_time = [0.0] * D
    left = sum(len(a) for a in schedule.actions)
    while left:
        for d in range(D):  # start every device whose next input has arrived
            if d in running or ptr[d] >= len(schedule.actions[d]):
                continue
            a = schedule.actions[d][ptr[d]]
            at = 0.0 if predecessor(a, V) is None else arrival.get(a)
            if at is not None and at <= t + 1e-15:
                arrival.pop(a, None)
                running[d] = [a, compute[a.stage][a.phase - 1], t]
                a1, a2 = memory[a.stage]
                if a.phase == 1:
                    mem_events[d].append((t, 1, a1))
                elif a.phase == 2:
                    mem_events[d].append((t, 1, a2))
        rate = min(1.0, cores / (len(running) + external_load)) if running else 0.0
        pending = [v for a, v in arrival.items() if v > t + 1e-15]
        candidates = [t + rem / rate for _, rem, _ in running.values()] + pending
        if not candidates:
            blocked = [str(schedule.actions[d][ptr[d]]) for d in range(D) if ptr[d] < len(schedule.actions[d])]
            raise ScheduleError(f"{schedule.label}: deadlock; devices wait on {', '.join(blocked[:6])}")
        t_next = min(candidates)
        dt = t_next - t
        for d in list(running):
            a, rem, start = running[d]
            rem -= dt * rate
            if rem <= 1e-12:
                del running[d]
                cost = compute[a.stage][a.phase - 1]
                busy[d] += cost
                end_time[d] = t_next
                a1, a2 = memory[a.stage]
                if a.phase == 3:
                    mem_events[d].append((t_next, 0, -a2))
                elif a.phase == 4:
                    mem_events[d].append((t_next, 0, -a1))
                if keep_timeline:
                    timeline.append((d, a, start, t_next))
                ptr[d] += 1
                left -= 1
                nxt = successor(a, V)
                if nxt is not None:
                    arrival[nxt] = t_next + (0.0 if dev[nxt.stage] == d else msg[a.phase])
            else:
                running[d][1] = rem
        t = t_next
    makespan = max(end_time)
    return SimResult(schedule.name, schedule.label, D, M, makespan, 1.0 - sum(busy) / (D * makespan),
                     _memory_peaks(mem_events), busy, dict(schedule.params), timeline if keep_timeline else None)


@dataclass
class Tuned:
    best: SimResult | None
    candidates: list[SimResult]
    schedule: Schedule | None


def fits_budget(result: SimResult, memory_budget_bytes: float | None) -> bool:
    """Whether a simulated schedule's peak activation memory stays within the budget on every
    device (``None``: no budget); the one memory test of :func:`budget_admission` and :func:`tune`."""
    return memory_budget_bytes is None or result.peak_memory_max_bytes <= memory_budget_bytes * (1 + 1e-9)


def budget_admission(name: str, placement: Placement, num_microbatches: int, costs: CostModel, num_blocks: int,
                     priority: Priority, memory_budget_bytes: float, wave_size: int = 1,
                     params: dict[str, Any] | None = None) -> Schedule:
    """List schedule whose micro-batches enter as early as the memory budget allows.

    Micro-batches are admitted a wave (``wave_size`` of them) at a time: a wave enters at the earliest
    time (the previous wave's entry, or a later P3/P4 completion, when memory is released) at which
    the simulated schedule of all admitted micro-batches stays within ``memory_budget_bytes`` on
    every device. Each check simulates the whole remaining schedule, so the final schedule provably
    stays within the budget (the timeline up to the next admission is the one that was checked).
    Raises :class:`ScheduleError` if a wave alone does not fit.
    """
    M = num_microbatches
    stage_costs = costs.stage_costs(placement.num_stages, num_blocks)
    comm = costs.message_s(1)
    entry: list[float] = []

    def trial(times: list[float], keep: bool = False):
        sched = list_schedule(name, placement, len(times), stage_costs, priority, len(times),
                              wave_size=wave_size, comm_s=comm, entry_times=times, validate=False)
        return sched, simulate(sched, costs, num_blocks, keep_timeline=keep)

    previous = None
    for m0 in range(0, M, wave_size):
        m = m0
        size = min(wave_size, M - m0)
        lo = entry[-1] if entry else 0.0
        candidates = [lo]
        if previous is not None:
            candidates += sorted({e for e in previous.release_times if e > lo})
        results: dict[int, Any] = {}

        def fits(i: int) -> bool:
            if i not in results:
                results[i] = trial(entry + [candidates[i]] * size)[1]
            return fits_budget(results[i], memory_budget_bytes)

        # earliest fitting candidate: gallop over 1, 2, 4, ... and finally the last candidate, then
        # bisection between the last failing and the first fitting index (memory falls as entry is
        # delayed); if the found index is not preceded by a failing one in the non-monotone case the
        # result still fits (every accepted index was simulated and checked)
        i = 0
        n_c = len(candidates)
        if not fits(0):
            step, hi, lo_i = 1, None, 0
            while True:
                j = min(step, n_c - 1)
                if j > lo_i and fits(j):
                    hi = j
                    break
                lo_i = max(lo_i, j)
                if j >= n_c - 1:
                    break
                step *= 2
            if hi is None:  # no gallop point fits: scan the skipped candidates linearly
                hi = next((j for j in range(1, n_c) if fits(j)), None)
                lo_i = 0 if hi is None else hi - 1
            if hi is None:
                raise ScheduleError(f"{name}: micro-batch {m} never fits the memory budget "
                                    f"{memory_budget_bytes / 2**20:.1f} MiB")
            while hi - lo_i > 1:
                mid = (lo_i + hi) // 2
                if fits(mid):
                    hi = mid
                else:
                    lo_i = mid
            i = hi
        entry.extend([candidates[i]] * size)
        previous = results[i]
    final = list_schedule(name, placement, M, stage_costs, priority, M, wave_size=wave_size, comm_s=comm,
                          entry_times=entry, params={**(params or {}), "admission": "budget"})
    return final


#: device order of the WaveK reconstruction inside the admitted window: ``sweeps`` interleaves wave w's
#: P3/P4 sweeps with wave w+1's P1/P2 sweeps (:func:`janus_sweeps`); ``phase`` runs the lowest phase
#: first (:func:`phase_major`). The tuner picks the faster on the measured phase costs.
WAVEK_ORDERS: dict[str, Priority] = {"sweeps": janus_sweeps, "phase": phase_major}


#: the fixed-cap families that are also built with the byte-level budget admission (``admission=budget``
#: in :func:`components.januspipe.schedules.family_grid`): placement and the family's own priority rule
BUDGET_FAMILIES: dict[str, tuple[Callable[[int, dict], Placement], Priority]] = {
    "1f1b4": (lambda D, p: linear(D), depth_first),
    "hanayo4": (lambda D, p: wave(D, p["waves"]), depth_first),
    "symfold": (lambda D, p: vfold(D), phase_major),
}


def build(name: str, num_devices: int, num_microbatches: int, costs: CostModel, num_blocks: int,
          memory_budget_bytes: float | None = None, **params: Any) -> Schedule:
    """Any named schedule with ``params``; ``wavek`` uses the memory-budget admission (all
    micro-batches at once when no budget is given)."""
    if params.get("admission") == "budget" and name in BUDGET_FAMILIES:
        placement_of, prio = BUDGET_FAMILIES[name]
        pl = placement_of(num_devices, params)
        rest = {k: v for k, v in params.items() if k != "admission"}
        if memory_budget_bytes is None:  # no budget: every micro-batch admitted at once (as wavek)
            return list_schedule(name, pl, num_microbatches, costs.stage_costs(pl.num_stages, num_blocks), prio,
                                 num_microbatches, comm_s=costs.message_s(1), params={**rest, "admission": "all"},
                                 entry_times=[0.0] * num_microbatches)
        return budget_admission(name, pl, num_microbatches, costs, num_blocks, prio, memory_budget_bytes,
                                params=rest)
    if name == "wavek":
        K = params["K"]
        order = params.get("order", "sweeps")
        if order not in WAVEK_ORDERS:
            raise ScheduleError(f"wavek order={order!r}: expected one of {sorted(WAVEK_ORDERS)}")
        prio = WAVEK_ORDERS[order]
        extra = {"order": order} if "order" in params else {}
        if memory_budget_bytes is None:
            return list_schedule(name, vfold(num_devices), num_microbatches,
                                 costs.stage_costs(2 * num_devices, num_blocks), prio, num_microbatches,
                                 wave_size=K, comm_s=costs.message_s(1),
                                 params={"K": K, "admission": "all", **extra},
                                 entry_times=[0.0] * num_microbatches)
        return budget_admission(name, vfold(num_devices), num_microbatches, costs, num_blocks, prio,
                                memory_budget_bytes, wave_size=K, params={"K": K, **extra})
    return build_schedule(name, num_devices, num_microbatches, lambda V: costs.stage_costs(V, num_blocks),
                          comm_s=costs.message_s(1), **params)


#: memo of :func:`candidate` results: ``{candidate_key(...): (schedule, result) or None}``
CandidateCache = dict


def candidate_key(name: str, num_devices: int, num_microbatches: int, costs: CostModel, num_blocks: int,
                  memory_budget_bytes: float | None, params: dict[str, Any]) -> tuple:
    """Everything :func:`build` + :func:`simulate` depend on (the budget only matters to the
    budget-admitted candidates, ``wavek`` and ``admission=budget``; the fixed-cap candidates build the
    same lists with or without it)."""
    uses_budget = name == "wavek" or params.get("admission") == "budget"
    return (name, num_devices, num_microbatches, costs, num_blocks,
            memory_budget_bytes if uses_budget else None, tuple(sorted(params.items())))


def candidate(name: str, num_devices: int, num_microbatches: int, costs: CostModel, num_blocks: int,
              memory_budget_bytes: float | None, params: dict[str, Any]) -> tuple[Schedule, SimResult] | None:
    """One tuning candidate: the schedule built with ``params`` and its simulation (None if it cannot
    be built, e.g. a wave that never fits the budget). A pure function of its arguments."""
    try:
        sched = build(name, num_devices, num_microbatches, costs, num_blocks, memory_budget_bytes, **params)
    except ScheduleError:
        return None
    return sched, simulate(sched, costs, num_blocks)


def candidate_job(job: tuple) -> tuple[tuple, tuple[Schedule, SimResult] | None]:
    """``(key, result)`` of one job from :func:`candidate_jobs` (picklable, for a process pool)."""
    return candidate_key(*job), candidate(*job)


def candidate_jobs(jobs: Sequence[tuple[str, int, int, float | None]], costs: CostModel, num_blocks: int,
                   cache: CandidateCache | None = None) -> list[tuple]:
    """The parameter-grid candidates (what :func:`tune` sweeps first) of every ``(name, devices,
    microbatches, budget)`` job that ``cache`` lacks, as :func:`candidate` argument tuples; the
    most expensive first (WaveK's budget admission: small waves, many devices) for a balanced pool."""
    todo, seen = [], set(cache or ())
    for name, D, M, budget in jobs:
        for params in family_grid(name, D, M, max_stages=num_blocks):
            key = candidate_key(name, D, M, costs, num_blocks, budget, params)
            if key not in seen:
                seen.add(key)
                todo.append((name, D, M, costs, num_blocks, budget, params))
    todo.sort(key=lambda j: (j[0] != "wavek", -j[1], j[6].get("K", 0), j[6].get("order") != "phase"))
    return todo


def simulate_candidates(jobs: Sequence[tuple[str, int, int, float | None]], costs: CostModel, num_blocks: int,
                        map_fn=map) -> Iterable[tuple[tuple, tuple[Schedule, SimResult] | None]]:
    """Build and simulate the grid candidates of ``jobs`` (:func:`candidate_jobs`) through ``map_fn``
    (e.g. a process pool's ``map``: the candidates are independent pure functions). Returns what
    ``map_fn`` returns, ``(key, result)`` pairs: ``dict(...)`` of them is the memo :func:`tune` takes as
    ``cache``, holding the same results :func:`tune` would compute itself."""
    return map_fn(candidate_job, candidate_jobs(jobs, costs, num_blocks))


def tune(name: str, num_devices: int, num_microbatches: int, costs: CostModel, num_blocks: int,
         memory_budget_bytes: float | None = None, cache: CandidateCache | None = None) -> Tuned:
    """Sweep schedule ``name``'s small parameter grid on the simulator; return the fastest candidate
    whose peak activation memory fits ``memory_budget_bytes`` (all candidates if None).

    ``cache`` (see :func:`simulate_candidates`) memoizes the built and simulated candidates; the
    result is the same with or without it."""
    candidates, schedules = [], []
    seen: set[tuple] = set()
    cache = {} if cache is None else cache

    def cached(budget: float | None, params: dict[str, Any]) -> tuple[Schedule, SimResult] | None:
        key = candidate_key(name, num_devices, num_microbatches, costs, num_blocks, budget, params)
        if key not in cache:
            cache[key] = candidate(name, num_devices, num_microbatches, costs, num_blocks, budget, params)
        return cache[key]

    def run(params: dict[str, Any]) -> SimResult | None:
        key = tuple(sorted(params.items()))
        if key in seen:
            return None
        seen.add(key)
        got = cached(memory_budget_bytes, params)
        if got is None:
            return None
        sched, res = got
        candidates.append(res)
        schedules.append(sched)
        return res

    grid = family_grid(name, num_devices, num_microbatches, max_stages=num_blocks)
    for params in grid:
        run(params)
    if memory_budget_bytes is not None:
        # the grid's caps are coarse: also give every capped variant the largest cap that fits the
        # budget (bisection over integer caps, memory grows with the cap) and its neighbour below
        def fits(base: tuple, c: int) -> bool:
            got = cached(None, {**dict(base), "cap": c})
            return got is not None and fits_budget(got[1], memory_budget_bytes)

        # sorted: a set's order follows PYTHONHASHSEED, and the first of equally fast candidates wins below
        for base in sorted({tuple((k, v) for k, v in p.items() if k != "cap") for p in grid if "cap" in p},
                           key=repr):
            lo, hi = 1, min(2 * num_devices, num_microbatches)
            if not fits(base, lo):
                continue
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if fits(base, mid) else (lo, mid)
            best_cap = hi if fits(base, hi) else lo
            for c in (best_cap, best_cap - 1):
                if c >= 1:
                    run({**dict(base), "cap": c})
    fitting = [(r, s) for r, s in zip(candidates, schedules) if fits_budget(r, memory_budget_bytes)]
    if not fitting:
        return Tuned(None, candidates, None)
    r, s = min(fitting, key=lambda rs: rs[0].makespan_s)
    return Tuned(r, candidates, s)


def canonical_1f1b_budget(num_devices: int, num_microbatches: int, costs: CostModel, num_blocks: int) -> float:
    """Peak activation memory of 1F1B-4 with 1F1B's in-flight count (``cap = D``): the memory budget
    every schedule is held to in the throughput comparison."""
    sched = build("1f1b4", num_devices, num_microbatches, costs, num_blocks, cap=min(num_devices, num_microbatches))
    return simulate(sched, costs, num_blocks).peak_memory_max_bytes


def ideal_makespan(num_devices: int, num_microbatches: int, costs: CostModel, num_blocks: int) -> float:
    """Lower bound: the busiest device's work (no bubbles)."""
    per_mb = sum(sum(c) for c in costs.stage_costs(num_devices, num_blocks)) / num_devices
    return per_mb * num_microbatches
