"""FamilySeer's task scheduler on MetaSchedule's Python hooks, and the trial ledger every policy shares.

:class:`TrialLedger` is a MetaSchedule ``MeasureCallback``: it sees every measured candidate of every
policy (main rounds through MetaSchedule's own join, foresee rounds through :meth:`_foresee`), and
counts each one as one trial, failed builds and runs included — the same count MetaSchedule's loop
uses for ``max_trials_global``. It records the best-latency trajectory that the evaluation compares.

:class:`FamilySeerScheduler` is a ``PyTaskScheduler`` whose ``next_task_id`` is

1. MetaSchedule's gradient rule (``gradient_based.cc``, ported line by line), after a first
   round-robin pass over all tasks, and
2. FamilySeer's *foresee* step (artifact: ``TaskScheduler.tune`` / ``_tune_family_task``): when the
   round of task ``i`` is in, the live sibling of ``i`` with the best gradient gets one short round of
   ``foresee_trials`` candidates ranked by the just-updated family model (``foresee_random`` of them
   eps-greedy random picks). It counts toward the global budget but not toward the sibling's own
   round count (the artifact does not increment ``task_cts``), and it updates the sibling's best
   latency.

A foresee round searches with an evolutionary search of its own (Ansor's
``continue_search_one_round(foresee_num)`` in the artifact: a round of exactly that size on the
sibling's policy), not with a full round of the sibling's search: MetaSchedule's
``EvolutionarySearch`` marks every candidate it *proposes* as measured, so a full round of which only
``foresee_trials`` were measured would hide the rest from the sibling for good. The two searches share
what was measured through the :class:`TrialLedger` (``measured``: structural hashes per task): the
foresee search skips the sibling's measured candidates, and the sibling's main search
(:class:`ForeseeAwareSearch`, MetaSchedule's ``EvolutionarySearch`` behind a filter) skips the ones a
foresee round measured.

MetaSchedule's C++ loop (``TaskSchedulerNode::Tune``) does the main rounds, so main-round building,
running, database and cost-model updates are those of the baseline, and so is the search, but for
that filter.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

FAILED_MS = 1e9  # MetaSchedule's latency of a failed trial


@dataclass
class Trial:
    """One measured candidate."""

    index: int           # 1-based trial count after this trial
    task: int
    kind: str            # "main" or "foresee"
    latency_ms: float    # median run time; FAILED_MS if it failed
    error: str           # "", "build", "run"
    wall_s: float        # seconds since tuning started, when the result was recorded


def task_gradient(history: Sequence[float], best: float, weight: float, alpha: float, window: int) -> float:
    """MetaSchedule's GradientBased score of one task (``gradient_based.cc``; the largest is tuned next).

    g = alpha * (best[n-1-w] - best) / w + (1 - alpha) * best / n, times the task weight, where
    ``history`` holds the best latency after each of the task's n main rounds. -1e9 while the task has no
    valid measurement (skipped, as upstream).
    """
    n = len(history)
    if n == 0 or best >= FAILED_MS:
        return -1e9
    g1 = (history[n - 1 - window] - best) / window if n >= 1 + window else 0.0
    g2 = best / n
    return (alpha * g1 + (1 - alpha) * g2) * weight


def module_hash(mod: Any) -> int:
    """The structural hash MetaSchedule's default module equality ("structural") dedupes candidates by."""
    import tvm_ffi

    return int(tvm_ffi.structural_hash(mod))


def _median_ms(result: Any) -> float:
    secs = [float(s) for s in (result.run_secs or [])]
    return float(np.median(secs)) * 1e3 if secs else FAILED_MS


def _ledger_class():
    from components.familyseer.measure import lean_tensor_intrinsics

    lean_tensor_intrinsics()
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class TrialLedger(PyMeasureCallback):
        """Records every measured candidate (task, latency, error, wall time) in measurement order."""

        def __init__(self, num_tasks: int, progress: Any = None, every: int = 0,
                     task_names: Sequence[str] = ()) -> None:
            super().__init__()
            self.task_names = [str(t) for t in task_names] or [str(i) for i in range(num_tasks)]
            if len(set(self.task_names)) != num_tasks:
                raise ValueError(f"TrialLedger needs {num_tasks} distinct task names, got {self.task_names}")
            # task name -> structural hashes of every candidate measured for it (main and foresee)
            self.measured: dict[str, set[int]] = {name: set() for name in self.task_names}
            self.remeasured = 0
            self.progress = progress
            self.every = int(every)
            self.trials: list[Trial] = []
            self.best_ms = [FAILED_MS] * num_tasks
            self.errors: dict[int, dict[str, Any]] = {}  # task -> build/run failure counts, an example
            self.kind = "main"
            self.t0 = time.perf_counter()

        def start(self) -> None:
            self.t0 = time.perf_counter()

        def apply(self, task_scheduler: Any, task_id: int, measure_candidates: list,
                  builder_results: list, runner_results: list) -> None:
            now = time.perf_counter() - self.t0
            seen = self.measured[self.task_names[task_id]]
            for cand in measure_candidates:
                h = module_hash(cand.sch.mod)
                self.remeasured += h in seen  # a trial spent on a schedule measured before
                seen.add(h)
            for build, run in zip(builder_results, runner_results):
                if build.error_msg is not None:
                    err, ms = "build", FAILED_MS
                elif run.error_msg is not None:
                    err, ms = "run", FAILED_MS
                else:
                    err, ms = "", _median_ms(run)
                if err:
                    rec = self.errors.setdefault(int(task_id), {"build": 0, "run": 0, "example": ""})
                    rec[err] += 1
                    # the tail: a traceback's last lines name the exception
                    rec["example"] = rec["example"] or str(build.error_msg if err == "build" else run.error_msg)[-600:]
                self.best_ms[task_id] = min(self.best_ms[task_id], ms)
                self.trials.append(Trial(len(self.trials) + 1, int(task_id), self.kind, ms, err, now))
                if self.progress is not None and self.every and len(self.trials) % self.every == 0:
                    self.progress(len(self.trials), list(self.best_ms), now)

        @property
        def num_trials(self) -> int:
            return len(self.trials)

    return TrialLedger


def _search_class():
    from components.familyseer.measure import lean_tensor_intrinsics

    lean_tensor_intrinsics()
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.search_strategy import EvolutionarySearch, PySearchStrategy

    @derived_object
    class ForeseeAwareSearch(PySearchStrategy):
        """MetaSchedule's ``EvolutionarySearch`` for a task of a foresee policy, minus the candidates a
        foresee round already measured for the task (``measured``: the ledger's registry, by task name).

        Parameters
        ----------
        params : keyword arguments of ``EvolutionarySearch``
        measured : task name -> structural hashes of measured candidates (shared by every clone)
        """

        def __init__(self, params: dict[str, Any], measured: dict[str, set[int]]) -> None:
            super().__init__()
            self.params = dict(params)
            self.measured = measured
            self.inner = EvolutionarySearch(**self.params)
            self.task = ""

        def _initialize_with_tune_context(self, context: Any) -> None:
            self.task = str(context.task_name)
            self.inner._initialize_with_tune_context(context)

        def pre_tuning(self, max_trials: int, num_trials_per_iter: int, design_spaces: list,
                       database: Any = None, cost_model: Any = None) -> None:
            self.inner.pre_tuning(max_trials, num_trials_per_iter, design_spaces, database, cost_model)

        def post_tuning(self) -> None:
            self.inner.post_tuning()

        def generate_measure_candidates(self) -> list | None:
            candidates = self.inner.generate_measure_candidates()
            if candidates is None:
                return None
            seen = self.measured.get(self.task, set())
            return [c for c in candidates if module_hash(c.sch.mod) not in seen]

        def notify_runner_results(self, measure_candidates: list, results: list) -> None:
            self.inner.notify_runner_results(measure_candidates, results)

        def clone(self) -> Any:
            return ForeseeAwareSearch(self.params, self.measured)

    return ForeseeAwareSearch


def foresee_picks(candidates: Sequence[Any], seen: set[int], k: int, n_rand: int,
                  key: Any = None) -> list[Any]:
    """The ``k`` candidates a foresee round measures, from a search round laid out as MetaSchedule's
    ``PickWithEpsGreedy`` returns it (model-ranked bests first, ``n_rand`` random picks last): the best
    ``k - n_rand`` and the ``n_rand`` random ones not measured yet (``seen``, by ``key``, default
    :func:`module_hash` of the candidate's module), topped up in order from the rest when either part
    falls short. ``n_rand`` is clamped to ``k`` (a round of ``k`` picks has at most ``k`` random ones)."""
    key = key or (lambda c: module_hash(c.sch.mod))
    n_rand = min(n_rand, k)
    cut = len(candidates) - n_rand
    fresh = [(i, c) for i, c in enumerate(candidates) if key(c) not in seen]
    bests = [ic for ic in fresh if ic[0] < cut][:k - n_rand]
    rands = [ic for ic in fresh if ic[0] >= cut][:n_rand]
    picked = {i for i, _ in bests + rands}
    rest = [ic for ic in fresh if ic[0] not in picked]
    chosen = sorted(bests + rands + rest[:max(0, k - len(bests) - len(rands))], key=lambda ic: ic[0])
    return [c for _, c in chosen]


def foresee_eps_greedy(n_rand: int, size: int) -> float:
    """The ``eps_greedy`` of a foresee round's search of ``size`` candidates with ``n_rand`` random picks:
    MetaSchedule's ``PickWithEpsGreedy`` takes ``int(size x eps_greedy)`` random picks (truncated), so
    ``n_rand / size`` could round down to ``n_rand - 1``; half a pick more truncates to ``n_rand``. At most
    1: when every pick is random (``n_rand == size``) MetaSchedule refuses ``eps_greedy > 1``."""
    return min(1.0, (n_rand + 0.5) / size) if n_rand else 0.0


def cost_model_samples(builds: Sequence[Any], results: Sequence[Any]) -> list[int]:
    """Indices of the measured candidates a cost model learns from (MetaSchedule's
    ``update_cost_model.cc`` filter): built, and either failed to run or ran for a positive total time."""
    return [i for i, (b, r) in enumerate(zip(builds, results)) if b.error_msg is None and (
        r.error_msg is not None or (r.run_secs is not None and sum(float(s) for s in r.run_secs) > 0))]


def runner_device_type(target: Any) -> str:
    """The device-type string MetaSchedule's runners take ("cpu" for an llvm target), derived from
    the target's default device as MetaSchedule's own rounds do. Not the target kind's name: with
    TVM 0.27 ``LocalRunner`` fails every run of device type "llvm" ("Unknown device: llvm")."""
    import tvm

    return str(tvm.runtime.device(target.get_target_device_type(), 0)).split(":")[0]


def _scheduler_class():
    from components.familyseer.family import family_of
    from components.familyseer.measure import lean_tensor_intrinsics

    lean_tensor_intrinsics()
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule import _ffi_api
    from tvm.s_tir.meta_schedule.builder import BuilderInput
    from tvm.s_tir.meta_schedule.measure_callback import UpdateCostModel
    from tvm.s_tir.meta_schedule.runner import RunnerInput, RunnerResult
    from tvm.s_tir.meta_schedule.search_strategy import EvolutionarySearch
    from tvm.s_tir.meta_schedule.task_scheduler import PyTaskScheduler

    @derived_object
    class FamilySeerScheduler(PyTaskScheduler):
        """Gradient task selection + foresee rounds on family siblings (see module docstring).

        Parameters
        ----------
        families : family key -> task indices (``family.make_family_group``)
        ledger : the TrialLedger registered as a measure callback of the same tuning run
        builder, runner : the builder and runner passed to ``tune`` (foresee rounds use them too)
        max_trials_global : the budget, counted over main and foresee trials
        foresee_trials, foresee_random : size of a foresee round and its eps-greedy share
        search_params : keyword arguments of the tasks' ``EvolutionarySearch`` (a foresee round's
            search uses them, with its own eps-greedy share)
        design_spaces : per task, the design spaces its search starts from
        alpha, window_size : MetaSchedule's gradient parameters
        seed : random tie-breaking
        """

        def __init__(self, families: dict[str, list[int]], ledger: Any, builder: Any, runner: Any,
                     max_trials_global: int, foresee_trials: int, foresee_random: int,
                     search_params: dict[str, Any] | None = None, design_spaces: Sequence[list] = (),
                     alpha: float = 0.2, window_size: int = 3, seed: int = 0) -> None:
            super().__init__()
            self.search_params = dict(search_params or {})
            self.design_spaces = list(design_spaces)
            self.families = {k: list(v) for k, v in families.items()}
            self.family_index = family_of(self.families)
            self.ledger = ledger
            self.builder = builder
            self.runner = runner
            self.max_trials_global = int(max_trials_global)
            self.foresee_trials = int(foresee_trials)
            self.foresee_random = int(foresee_random)
            self.alpha = float(alpha)
            self.window_size = int(window_size)
            self.rng = np.random.default_rng(seed)
            self.round_robin_rounds = 0
            self.history: list[list[float]] = []   # best latency after each main round, per task
            self.last_main: int | None = None
            self.foresee_log: list[tuple[int, int, int]] = []  # (after task, sibling, trials)

        # -- helpers --------------------------------------------------------------------------
        def _sched(self) -> Any:
            return self._outer()

        def _alive(self, i: int) -> bool:
            return not bool(self._sched().tasks_[i].is_terminated)

        def _gradient(self, i: int) -> float:
            # best includes foresee trials (artifact: "update that member's best cost")
            return task_gradient(self.history[i], self.ledger.best_ms[i],
                                 float(self._sched().tasks_[i].task_weight), self.alpha, self.window_size)

        def _argmax(self, ids: Sequence[int], grads: Sequence[float]) -> int:
            if max(grads) == min(grads):
                return int(ids[int(self.rng.integers(len(ids)))])
            return int(ids[int(np.argmax(grads))])

        def _join(self, i: int, wait: bool) -> None:
            """Join task ``i``'s round in flight (database, cost model, ledger) and record its best latency
            in its history. ``wait``: block on its runner futures (``JoinRunningTask``), as
            ``gradient_based.cc`` does after the first pass and for the task it picks; otherwise join it
            only if every future is done (``TouchTask``). A task with no round in flight is left alone."""
            sched = self._sched()
            task = sched.tasks_[i]
            if task.is_terminated or task.runner_futures is None:
                return
            if wait:
                _ffi_api.TaskSchedulerJoinRunningTask(sched, i)
            else:
                _ffi_api.TaskSchedulerTouchTask(sched, i)
            if sched.tasks_[i].runner_futures is None:     # joined: the join clears the measure state
                # one history entry per joined round, as gradient_based.cc's JoinRunningTask pushes one on
                # every join, also for a round with no candidates (all measured by foresee rounds before)
                self.history[i].append(self.ledger.best_ms[i])

        def _join_finished(self) -> None:
            for i in range(len(self._sched().tasks_)):
                self._join(i, wait=False)

        # -- the foresee step -----------------------------------------------------------------
        def _foresee_candidates(self, j: int, k: int) -> list:
            """``k`` unmeasured candidates for sibling ``j`` from a search round of its own (module
            docstring), ranked by the current family model, ``foresee_random`` of them random."""
            sched = self._sched()
            ctx = sched.tasks_[j].ctx
            seen = self.ledger.measured[self.ledger.task_names[j]]
            n_rand = min(self.foresee_random, k)
            # room for the database's best records (init_measured_ratio of the population), which the
            # round may rank high again, and for children of the population that were measured before
            size = min(k + len(seen), max(k, self.search_params.get("population_size", 512)))
            params = dict(self.search_params, eps_greedy=foresee_eps_greedy(n_rand, size))
            search = EvolutionarySearch(**params)
            search._initialize_with_tune_context(ctx)
            search.pre_tuning(size, size, self.design_spaces[j], sched.database_, sched.cost_model_)
            try:
                candidates = search.generate_measure_candidates()
            finally:
                search.post_tuning()
            return foresee_picks(list(candidates or []), seen, k, n_rand)

        def _foresee(self, task_id: int) -> None:
            fam = self.family_index.get(task_id)
            siblings = [j for j in self.families.get(fam, []) if j != task_id and self._alive(j)
                        and self.history[j]]
            budget_left = self.max_trials_global - self.ledger.num_trials
            if not siblings or self.foresee_trials <= 0 or budget_left <= 0:
                return
            grads = [self._gradient(j) for j in siblings]
            j = self._argmax(siblings, grads)
            sched = self._sched()
            ctx = sched.tasks_[j].ctx
            picks = self._foresee_candidates(j, min(self.foresee_trials, budget_left))
            if not picks:
                return
            builds = self.builder.build([BuilderInput(c.sch.mod, ctx.target) for c in picks])
            device_type = runner_device_type(ctx.target)
            ok = [i for i, b in enumerate(builds) if b.error_msg is None]
            futures = self.runner.run([RunnerInput(builds[i].artifact_path, device_type, picks[i].args_info)
                                       for i in ok])
            results: list[Any] = [RunnerResult(None, b.error_msg) for b in builds]
            for i, fut in zip(ok, futures):
                results[i] = fut.result()
            # the family model learns from the foresee round too (update_cost_model.cc's filter);
            # first, as MetaSchedule's own rounds retrain before the ledger timestamps them
            kept = cost_model_samples(builds, results)
            if sched.cost_model_ is not None:
                sched.cost_model_.update(ctx, [picks[i] for i in kept], [results[i] for i in kept])
            self.ledger.kind = "foresee"
            try:
                for callback in sched.measure_callbacks_:  # database, artifact removal, ledger
                    if isinstance(callback, UpdateCostModel):
                        continue  # needs the task's in-flight candidates: done above instead
                    callback.apply(sched, j, picks, builds, results)
            finally:
                self.ledger.kind = "main"
            self.foresee_log.append((task_id, j, len(picks)))

        # -- MetaSchedule hook ------------------------------------------------------------------
        def next_task_id(self) -> int:
            sched = self._sched()
            n = len(sched.tasks_)
            if not self.history:
                self.history = [[] for _ in range(n)]
            if self.round_robin_rounds < n:  # first pass: every task once (as GradientBased)
                self.round_robin_rounds += 1
                return self.round_robin_rounds - 1
            if self.round_robin_rounds == n:  # after it, every task's round is waited for (as GradientBased)
                self.round_robin_rounds += 1
                for i in range(n):
                    self._join(i, wait=True)
            if self.last_main is not None:
                # the foresee round follows the round of the task just tuned: wait for it (with a
                # synchronous runner it is done already, and joined as the loop below would)
                self._join(self.last_main, wait=True)
            self._join_finished()
            if self.last_main is not None:
                self._foresee(self.last_main)
                self.last_main = None
            if self.ledger.num_trials >= self.max_trials_global:
                return -1
            alive = [i for i in range(n) if self._alive(i)]
            if not alive:
                return -1
            task_id = self._argmax(alive, [self._gradient(i) for i in alive])
            # MetaSchedule's loop requires the picked task to have no round in flight
            # (ICHECK(!task->runner_futures.defined())): wait for it, as GradientBased does
            self._join(task_id, wait=True)
            self.last_main = task_id
            return task_id

    return FamilySeerScheduler


_CLASSES: dict[str, Any] = {}


def TrialLedger(num_tasks: int, progress: Any = None, every: int = 0,  # noqa: N802 (an instance)
                task_names: Sequence[str] = ()):
    if "ledger" not in _CLASSES:
        _CLASSES["ledger"] = _ledger_class()
    return _CLASSES["ledger"](num_tasks, progress, every, task_names)


def FamilySeerScheduler(*args: Any, **kwargs: Any):  # noqa: N802
    if "scheduler" not in _CLASSES:
        _CLASSES["scheduler"] = _scheduler_class()
    return _CLASSES["scheduler"](*args, **kwargs)


def ForeseeAwareSearch(params: dict[str, Any], measured: dict[str, set[int]]):  # noqa: N802
    if "search" not in _CLASSES:
        _CLASSES["search"] = _search_class()
    return _CLASSES["search"](params, measured)


@dataclass
class Trajectory:
    """Best weighted latency after each trial: sum_i weight_i x best_i (MetaSchedule's 'Total latency')."""

    trials: list[int]
    wall_s: list[float]
    latency_ms: list[float]          # inf until every task has a valid measurement
    per_task_best_ms: list[float] = field(default_factory=list)


def weighted_latency(weights: Sequence[float], best: Sequence[float]) -> float:
    """sum_i weight_i x best_i over the tasks of non-zero weight; inf while one of them has no valid
    measurement (a task of weight 0 is one the evaluation set aside as untunable on every run)."""
    counted = [(w, b) for w, b in zip(weights, best) if w != 0]
    return sum(w * b for w, b in counted) if all(b < FAILED_MS for _, b in counted) else float("inf")


def trajectory(trials: Sequence[Any], weights: Sequence[float]) -> Trajectory:
    """The weighted-latency curve of a ledger's trials (dicts or :class:`Trial`)."""
    best = [FAILED_MS] * len(weights)
    xs, ts, ys = [], [], []
    for t in trials:
        get = (lambda k: t[k]) if isinstance(t, dict) else (lambda k: getattr(t, k))
        task, ms = int(get("task")), float(get("latency_ms"))
        best[task] = min(best[task], ms)
        total = weighted_latency(weights, best)
        xs.append(int(get("index")))
        ts.append(float(get("wall_s")))
        ys.append(total)
    return Trajectory(xs, ts, ys, best)
