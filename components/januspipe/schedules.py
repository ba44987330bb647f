"""Pipeline schedules for the four-phase (double-backward) training step, as per-device action lists.

One micro-batch's step is a single chain of ``4V`` actions over ``V`` (virtual) stages
(notes §1.2; each arrow is one point-to-point message when the stages sit on different devices):

    P1 energy forward         stage 0 → V-1
    P2 force backward         stage V-1 → 0   (create_graph; no parameter gradients)
    P3 second-order sweep     stage 0 → V-1
    P4 backward               stage V-1 → 0

A :class:`Schedule` is a :class:`Placement` (virtual stage → device) plus, for every device, the
order in which it runs its actions. The runtime executes exactly these lists; the simulator times
exactly these lists. Schedules:

=========== ======================= ===================================================================
name        placement               order
=========== ======================= ===================================================================
gpipe4      linear (1 stage/device) phase-major: all P1, then all P2, P3, P4 (GPipe's flush, 4 phases)
1f1b4       linear                  1F1B adapted: finish the most advanced micro-batch first; at most
                                    ``cap`` micro-batches in flight (1F1B: ``cap = D``)
hanayo4     wave, ``W`` waves       Hanayo-style zig-zag stages (2W per device), 1F1B-style order, cap
symfold     V-fold (SymFold-like)   device d holds stages d and 2D-1-d; phase-major inside the window
                                    of ``cap`` in-flight micro-batches
wavek       V-fold + K-waves        WaveK-like: waves of K micro-batches; a wave's P3/P4 sweeps travel
                                    together with the next wave's P1/P2 sweeps (both directions busy;
                                    ``order=sweeps``) or lowest phase first (``order=phase``), whichever
                                    the simulator finds faster on the measured phase costs;
                                    micro-batches are admitted as soon as the simulator, fed with the
                                    measured phase costs and activation sizes, predicts that the peak
                                    activation memory stays within the budget (no fixed in-flight cap)
=========== ======================= ===================================================================

``symfold`` and ``wavek`` are **reconstructions**: the JanusPipe paper's SymFold and WaveK algorithms
are not public (only their one-line descriptions in the abstract). The list-scheduled families
(all but gpipe4) get their device order from one greedy list scheduler run on measured phase costs,
differing only in placement, priority rule and admission rule; see :func:`list_schedule`.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Callable, Sequence

from components.base import ConfigError

SCHEDULE_NAMES = ("gpipe4", "1f1b4", "hanayo4", "symfold", "wavek")


class ScheduleError(ValueError):
    """An action list is inconsistent (missing/duplicate action, wrong device, deadlock)."""


class Phase(IntEnum):
    P1 = 1  # energy forward            0 -> V-1
    P2 = 2  # force backward (create_graph) V-1 -> 0
    P3 = 3  # second-order sweep        0 -> V-1
    P4 = 4  # backward                  V-1 -> 0


@dataclass(frozen=True, order=True)
class Action:
    phase: int
    microbatch: int
    stage: int  # virtual stage

    def __str__(self) -> str:
        return f"P{self.phase}(mb{self.microbatch},s{self.stage})"


def chain(num_stages: int) -> list[tuple[int, int]]:
    """The ``4V`` (phase, stage) positions of one micro-batch's step, in dependency order."""
    v = range(num_stages)
    return ([(1, s) for s in v] + [(2, s) for s in reversed(v)] + [(3, s) for s in v]
            + [(4, s) for s in reversed(v)])


def chain_index(phase: int, stage: int, num_stages: int) -> int:
    base = (phase - 1) * num_stages
    return base + (stage if phase in (1, 3) else num_stages - 1 - stage)


def predecessor(a: Action, num_stages: int) -> Action | None:
    """The action whose output ``a`` consumes (None for P1 on stage 0)."""
    k = chain_index(a.phase, a.stage, num_stages)
    if k == 0:
        return None
    p, s = _chain_pos(k - 1, num_stages)
    return Action(p, a.microbatch, s)


def successor(a: Action, num_stages: int) -> Action | None:
    k = chain_index(a.phase, a.stage, num_stages)
    if k == 4 * num_stages - 1:
        return None
    p, s = _chain_pos(k + 1, num_stages)
    return Action(p, a.microbatch, s)


def _chain_pos(k: int, num_stages: int) -> tuple[int, int]:
    phase, r = divmod(k, num_stages)
    phase += 1
    return phase, (r if phase in (1, 3) else num_stages - 1 - r)


# -- placements --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Placement:
    """Which device runs each virtual stage."""

    name: str
    num_devices: int
    stage_device: tuple[int, ...]

    @property
    def num_stages(self) -> int:
        return len(self.stage_device)

    def stages_of(self, device: int) -> list[int]:
        return [s for s, d in enumerate(self.stage_device) if d == device]


def linear(num_devices: int) -> Placement:
    return Placement("linear", num_devices, tuple(range(num_devices)))


def wave(num_devices: int, waves: int) -> Placement:
    """Hanayo-style zig-zag: 2·waves chunks per device; chunk c runs down (even c) or up (odd c)."""
    D = num_devices
    return Placement(f"wave{waves}", D, tuple(
        (v % D) if (v // D) % 2 == 0 else D - 1 - (v % D) for v in range(2 * waves * D)))


def vfold(num_devices: int) -> Placement:
    """SymFold-like symmetric V: device d holds virtual stages d and 2D-1-d. A four-phase step keeps
    stage v's activations for about 4(V-1)-2v hops, so the pair's lifetimes sum to a constant and
    per-device memory is balanced; all three turnarounds (P1→P2, P2→P3, P3→P4) happen on device 0."""
    return Placement("vfold", num_devices, wave(num_devices, 1).stage_device)


# -- schedules ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Schedule:
    name: str
    placement: Placement
    num_microbatches: int
    actions: tuple[tuple[Action, ...], ...]  # per device, in execution order
    params: dict[str, Any] = field(default_factory=dict, compare=False)
    #: the same lists as chain indices ``m * 4V + k`` (filled by the list scheduler; speeds up simulate)
    index_lists: tuple[tuple[int, ...], ...] | None = field(default=None, compare=False, repr=False)

    @property
    def num_devices(self) -> int:
        return self.placement.num_devices

    @property
    def num_stages(self) -> int:
        return self.placement.num_stages

    @property
    def label(self) -> str:
        p = ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.name}({p})" if p else self.name

    def validate(self) -> "Schedule":
        """Every (phase, micro-batch, stage) exactly once, on the device that owns the stage."""
        V, M = self.num_stages, self.num_microbatches
        seen: set[Action] = set()
        if len(self.actions) != self.num_devices:
            raise ScheduleError(f"{self.label}: {len(self.actions)} action lists for {self.num_devices} devices")
        for d, acts in enumerate(self.actions):
            for a in acts:
                if not (1 <= a.phase <= 4 and 0 <= a.microbatch < M and 0 <= a.stage < V):
                    raise ScheduleError(f"{self.label}: device {d} has out-of-range action {a}")
                if self.placement.stage_device[a.stage] != d:
                    raise ScheduleError(f"{self.label}: {a} listed on device {d}, stage lives on "
                                        f"device {self.placement.stage_device[a.stage]}")
                if a in seen:
                    raise ScheduleError(f"{self.label}: {a} listed twice")
                seen.add(a)
        if len(seen) != 4 * V * M:
            raise ScheduleError(f"{self.label}: {len(seen)} actions; expected 4·V·M = {4 * V * M}")
        return self


def receive_order(schedule: Schedule, device: int) -> list[Action]:
    """The actions of ``device`` that take their input from another device, in the order their
    receives must be posted: grouped by sending device, each group in that sender's send order
    (its action list). NCCL (and any backend that ignores tags) matches the messages of one pair of
    ranks in posting order, so a receiver that posted in its own action order could read e.g. a P4
    cotangent into the buffer of a same-sized P1 activation."""
    V, dev = schedule.num_stages, schedule.placement.stage_device
    out: list[Action] = []
    for src in range(schedule.num_devices):
        if src == device:
            continue
        for a in schedule.actions[src]:
            nxt = successor(a, V)
            if nxt is not None and dev[nxt.stage] == device:
                out.append(nxt)
    return out


def check_stages(num_stages: int, num_blocks: int, what: str = "schedule") -> None:
    if num_stages > num_blocks:
        raise ConfigError(f"{what} needs {num_stages} pipeline stages but the model has only {num_blocks} "
                          f"interaction blocks; expected stages <= num_blocks (each stage needs >= 1 block)")


def gpipe4(num_devices: int, num_microbatches: int) -> Schedule:
    """Phase-major four-phase GPipe on the linear placement."""
    D, M = num_devices, num_microbatches
    acts = tuple(tuple(Action(p, m, d) for p in (1, 2, 3, 4) for m in range(M)) for d in range(D))
    return Schedule("gpipe4", linear(D), M, acts).validate()


# -- the greedy list scheduler shared by the other families ----------------------------------------
Priority = Callable[[int, int, int, int], tuple]  # (microbatch, chain index, phase, wave) -> key


def depth_first(m: int, k: int, phase: int, wave_: int) -> tuple:
    """1F1B's rule in four phases: the most advanced micro-batch first (frees memory soonest)."""
    return (-k, m)


def phase_major(m: int, k: int, phase: int, wave_: int) -> tuple:
    """GPipe-like inside the in-flight window: lowest phase first, then oldest micro-batch."""
    return (phase, m)


def janus_sweeps(m: int, k: int, phase: int, wave_: int) -> tuple:
    """WaveK-like: sweep ``2w + phase - 1`` of wave w, so wave w's P3 (→) shares a sweep with wave
    w+1's P1 (→) and wave w's P4 (←) with wave w+1's P2 (←); releasing work (P3/P4) first."""
    return (2 * wave_ + phase - 1, -phase, m)


def list_schedule(name: str, placement: Placement, num_microbatches: int, stage_costs: Sequence[Sequence[float]],
                  priority: Priority, cap: int, wave_size: int = 1, comm_s: float = 0.0,
                  params: dict[str, Any] | None = None, entry_times: Sequence[float] | None = None,
                  validate: bool = True) -> Schedule:
    """Greedy list scheduling of the ``M`` chains on measured costs.

    Whenever a device is free it runs, among the actions whose input has arrived, the one with the
    smallest ``priority``. A new micro-batch enters stage 0 only while fewer than ``cap`` are in flight
    (admitted whole waves of ``wave_size`` at a time) or, if ``entry_times`` is given, not before its
    entry time (the memory-budget admission of :func:`components.januspipe.simulator.budget_admission`).
    ``stage_costs[v][p-1]`` is the compute time of phase p on virtual stage v; ``comm_s`` the time of
    one cross-device message. The resulting per-device orders are the schedule (the simulator then
    times them exactly).
    """
    V, D, M = placement.num_stages, placement.num_devices, num_microbatches
    if entry_times is not None:
        if len(entry_times) != M:
            raise ConfigError(f"{name}: {len(entry_times)} entry times for {M} micro-batches")
        cap = M
    if cap < 1 or wave_size < 1 or wave_size > max(cap, 1) and entry_times is None:
        raise ConfigError(f"{name}: cap={cap}, wave_size={wave_size}; expected 1 <= wave_size <= cap")
    L = 4 * V
    pos_list = [_chain_pos(k, V) for k in range(L)]
    dev_k = [placement.stage_device[s] for _, s in pos_list]
    cost_k = [float(stage_costs[s][p - 1]) for p, s in pos_list]
    comm_k = [0.0 if k + 1 >= L or dev_k[k + 1] == dev_k[k] else comm_s for k in range(L)]
    prio_k = [[priority(m, k, pos_list[k][0], m // wave_size) for k in range(L)] for m in range(M)]
    pos = [0] * M
    free = [0.0] * D
    future: list[list[tuple[float, int]]] = [[] for _ in range(D)]  # (ready time, mb)
    avail: list[list[tuple[tuple, int]]] = [[] for _ in range(D)]   # (priority, mb)
    version = [0] * D
    events: list[tuple[float, int, int]] = []
    orders: list[list[int]] = [[] for _ in range(D)]  # m * L + k
    heappush, heappop = heapq.heappush, heapq.heappop
    in_flight, admitted = 0, 0

    def wake(d: int) -> None:
        if avail[d]:
            t = free[d]
        elif future[d]:
            t = future[d][0][0]
            if t < free[d]:
                t = free[d]
        else:
            return
        version[d] += 1
        heappush(events, (t, d, version[d]))

    def admit(t: float) -> None:
        nonlocal in_flight, admitted
        d0 = dev_k[0]
        if entry_times is not None:
            for m in range(M):
                heappush(future[d0], (float(entry_times[m]), m))
            admitted = in_flight = M
            wake(d0)
            return
        while admitted < M:
            size = min(wave_size, M - admitted) if admitted % wave_size == 0 else 1
            if in_flight + size > cap:
                break
            for _ in range(size):
                in_flight += 1
                heappush(future[d0], (t, admitted))
                admitted += 1
        wake(d0)

    admit(0.0)
    done, total = 0, M * L
    while done < total:
        if not events:
            raise ScheduleError(f"{name}: list scheduler stalled with {total - done} actions left")
        t, d, ver = heappop(events)
        if ver != version[d]:
            continue
        fut, av = future[d], avail[d]
        while fut and fut[0][0] <= t + 1e-15:
            _, m = heappop(fut)
            heappush(av, (prio_k[m][pos[m]], m))
        if not av:
            wake(d)
            continue
        _, m = heappop(av)
        k = pos[m]
        fin = (t if t > free[d] else free[d]) + cost_k[k]
        free[d] = fin
        orders[d].append(m * L + k)
        pos[m] = k + 1
        done += 1
        if k + 1 == L:
            in_flight -= 1
            if entry_times is None:
                admit(fin)
        else:
            nd = dev_k[k + 1]
            heappush(future[nd], (fin + comm_k[k], m))
            if nd != d:
                wake(nd)
        wake(d)

    table = _actions(V, M)
    index_lists = tuple(tuple(o) for o in orders)
    orders = [[table[i] for i in o] for o in orders]  # type: ignore[misc]
    sched = Schedule(name, placement, M, tuple(tuple(o) for o in orders), dict(params or {}), index_lists)
    return sched.validate() if validate else sched


_ACTIONS: dict[int, list[Action]] = {}


def _actions(num_stages: int, num_microbatches: int) -> list[Action]:
    """All actions of ``num_microbatches`` chains, indexed ``m * 4V + k`` (cached per V)."""
    L = 4 * num_stages
    table = _ACTIONS.setdefault(num_stages, [])
    for m in range(len(table) // L, num_microbatches):
        table.extend(Action(p, m, st) for p, st in (_chain_pos(k, num_stages) for k in range(L)))
    return table


# -- the named families and their parameter grids ------------------------------------------------
def cap_grid(num_devices: int, num_microbatches: int) -> list[int]:
    """In-flight caps swept for every list-scheduled family alike: {1/2, 3/4, 1, 5/4, 3/2, 2} x D."""
    D, M = num_devices, num_microbatches
    return sorted({min(M, max(1, math.ceil(f * D))) for f in (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)})


def family_grid(name: str, num_devices: int, num_microbatches: int, max_stages: int | None = None) -> list[dict]:
    """The small parameter sweep of schedule ``name`` (same in-flight caps for every family).

    Candidates whose placement needs more than ``max_stages`` virtual stages (Hanayo-4 with two waves:
    4 x D; the V-fold families: 2 x D) are left out; :func:`dropped_candidates` lists them. The config
    requires ``simulate.num_blocks`` to hold every candidate; the real runs record what they drop."""
    D, M = num_devices, num_microbatches
    caps = cap_grid(D, M)
    fits = (lambda V: max_stages is None or V <= max_stages)
    if name == "gpipe4":
        return [{}] if fits(D) else []
    # every list-scheduled family is also tried with the byte-level memory-budget admission that
    # WaveK uses (``admission=budget``; built only when a budget is given): the same admission rule
    # under the same budget for every family of the comparison
    if name == "1f1b4":
        return [{"cap": c} for c in caps] + [{"admission": "budget"}] if fits(D) else []
    if name == "hanayo4":
        return [p for w in (1, 2) if fits(2 * w * D)
                for p in [{"waves": w, "cap": c} for c in caps] + [{"waves": w, "admission": "budget"}]]
    if name == "symfold":
        return [{"cap": c} for c in caps] + [{"admission": "budget"}] if fits(2 * D) else []
    if name == "wavek":  # wave size K and the order inside the admitted window (sweep interleave or phase-major)
        return [{"K": k, "order": o} for o in ("sweeps", "phase")
                for k in sorted({max(1, D // 8), max(1, D // 4), max(1, D // 2)}) if k <= M] \
            if fits(2 * D) else []
    raise ConfigError(f"schedule {name!r}: expected one of {list(SCHEDULE_NAMES)}")


def dropped_candidates(name: str, num_devices: int, num_microbatches: int, max_stages: int) -> list[dict]:
    """The candidates of ``name``'s full grid that :func:`family_grid` leaves out under ``max_stages``
    (their placement needs more pipeline stages than the model has blocks)."""
    kept = family_grid(name, num_devices, num_microbatches, max_stages=max_stages)
    return [p for p in family_grid(name, num_devices, num_microbatches) if p not in kept]


def build_schedule(name: str, num_devices: int, num_microbatches: int, stage_costs_fn: Callable[[int], Sequence],
                   comm_s: float = 0.0, **params: Any) -> Schedule:
    """Schedule ``name`` with ``params`` (from :func:`family_grid`). ``stage_costs_fn(V)`` returns the
    per-virtual-stage phase costs for a ``V``-stage split (the list scheduler orders on them)."""
    D, M = num_devices, num_microbatches
    if D < 1 or M < 1:
        raise ConfigError(f"schedule {name}: devices={D}, microbatches={M}; expected both >= 1")
    if name == "gpipe4":
        return gpipe4(D, M)
    if name == "1f1b4":
        pl = linear(D)
        return list_schedule(name, pl, M, stage_costs_fn(pl.num_stages), depth_first, params["cap"],
                             comm_s=comm_s, params=params)
    if name == "hanayo4":
        pl = wave(D, params["waves"])
        return list_schedule(name, pl, M, stage_costs_fn(pl.num_stages), depth_first, params["cap"],
                             comm_s=comm_s, params=params)
    if name == "symfold":
        pl = vfold(D)
        return list_schedule(name, pl, M, stage_costs_fn(pl.num_stages), phase_major, params["cap"],
                             comm_s=comm_s, params=params)
    if name == "wavek":
        pl = vfold(D)
        if "entry_times" not in params:
            raise ConfigError("wavek needs entry_times from the memory-budget admission "
                              "(components.januspipe.simulator.budget_admission)")
        entry = params.pop("entry_times")
        return list_schedule(name, pl, M, stage_costs_fn(pl.num_stages), janus_sweeps, M,
                             wave_size=params["K"], comm_s=comm_s, params=params, entry_times=entry)
    raise ConfigError(f"schedule {name!r}: expected one of {list(SCHEDULE_NAMES)}")
