"""FamilySeerScheduler joins rounds as MetaSchedule's gradient scheduler does: it waits for every task's
round after the first pass and for the task it picks (``gradient_based.cc``), so a runner whose futures
are still pending neither trips the tuning loop's ``ICHECK(!task->runner_futures.defined())`` nor leaves
the gradients on stale histories; with a synchronous runner (LocalRunner) it joins exactly what the
non-blocking join did. MetaSchedule's loop and join are simulated (fake task records and joins)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from components.familyseer.scheduler import FAILED_MS

N_TASKS, PER_ROUND = 3, 2


class Ledger:
    """What the scheduler reads of a TrialLedger."""

    def __init__(self, n):
        self.best_ms = [FAILED_MS] * n
        self.num_trials = 0
        self.task_names = [str(i) for i in range(n)]
        self.measured = {name: set() for name in self.task_names}
        self.kind = "main"


def latency(task, round_):
    """A task's latency in its k-th round: distinct per task, improving at different rates."""
    return (4.0 + task) * (0.97 - 0.1 * task) ** round_


def simulate(monkeypatch, synchronous, steps=12):
    """Run MetaSchedule's tuning loop (``TaskSchedulerNode::Tune``) over fake tasks; returns the picks
    (after the first pass), the joins (task, futures done when joined) and the foresee calls."""
    from tvm.s_tir.meta_schedule import _ffi_api

    from components.familyseer.scheduler import FamilySeerScheduler

    ledger = Ledger(N_TASKS)
    tasks = [SimpleNamespace(is_terminated=False, runner_futures=None, task_weight=1.0, results=[], rounds=0)
             for _ in range(N_TASKS)]
    sched = SimpleNamespace(tasks_=tasks)
    joins, foresees = [], []

    def join(s, i):   # TaskSchedulerNode::JoinRunningTask: waits for the futures, applies the callbacks
        task = s.tasks_[i]
        assert task.runner_futures is not None, "ICHECK(task->runner_futures.defined())"
        joins.append((i, all(f.done for f in task.runner_futures)))
        for ms in task.results:
            ledger.num_trials += 1
            ledger.best_ms[i] = min(ledger.best_ms[i], ms)
        task.runner_futures = None

    def touch(s, i):  # TaskSchedulerNode::TouchTask: joins a round only once all its futures are done
        task = s.tasks_[i]
        if not task.is_terminated and task.runner_futures is not None and all(f.done for f in task.runner_futures):
            join(s, i)

    monkeypatch.setattr(_ffi_api, "TaskSchedulerJoinRunningTask", join)
    monkeypatch.setattr(_ffi_api, "TaskSchedulerTouchTask", touch)
    inst = FamilySeerScheduler({"matmul": list(range(N_TASKS))}, ledger, None, None, 10 ** 6, 1, 0)._inst
    inst._sched = lambda: sched

    def foresee(task_id):  # the foresee step follows the round of the task just tuned
        foresees.append((task_id, tasks[task_id].runner_futures is None, list(inst.history[task_id])))

    inst._foresee = foresee
    picks = []
    for step in range(steps):
        task_id = inst.next_task_id()
        if task_id == -1:
            break
        task = tasks[task_id]
        assert task.runner_futures is None, f"ICHECK(!task->runner_futures.defined()) failed at step {step}"
        task.results = [latency(task_id, task.rounds)] * PER_ROUND
        task.rounds += 1
        # a synchronous runner returns finished futures; an asynchronous one, futures still running
        task.runner_futures = [SimpleNamespace(done=synchronous) for _ in range(PER_ROUND)]
        if step >= N_TASKS:
            picks.append(task_id)
    return picks, joins, foresees, inst


def test_pending_rounds_are_waited_for_as_metaschedules_gradient_scheduler_does(monkeypatch):
    picks, joins, foresees, inst = simulate(monkeypatch, synchronous=False)
    assert len(picks) == 12 - N_TASKS                          # the loop never found a round in flight
    # after the first pass every task's round was joined, in task order, before the first gradient pick
    assert joins[:N_TASKS] == [(i, False) for i in range(N_TASKS)]
    # every foresee step came after the round it follows was joined, with that round in the history
    assert foresees and all(joined and history for _, joined, history in foresees)
    assert [t for t, _, _ in foresees] == picks[:len(foresees)]
    assert sum(len(h) for h in inst.history) == len(joins)   # every joined round is in a history


def test_with_a_synchronous_runner_only_finished_rounds_are_joined_in_the_same_order(monkeypatch):
    """LocalRunner's futures are done when ``run`` returns: every join then finds a finished round (a
    wait never waits), so the joins, histories and picks are those of the non-blocking join alone."""
    picks, joins, foresees, inst = simulate(monkeypatch, synchronous=True)
    assert all(done for _, done in joins)
    # the first pass's rounds in task order, then the round of each pick, one per decision
    assert [i for i, _ in joins] == list(range(N_TASKS)) + picks[:len(joins) - N_TASKS]
    assert len(set(picks)) > 1                                 # the gradients, not ties, decided
    synchronous_picks = picks
    picks, _, _, _ = simulate(monkeypatch, synchronous=False)
    assert picks == synchronous_picks                          # waiting gives the same decisions


@pytest.mark.parametrize("synchronous", [True, False])
def test_a_picked_task_never_has_a_round_in_flight(monkeypatch, synchronous):
    simulate(monkeypatch, synchronous, steps=30)


# --------------------------------------------------------------------------------------------------
# the gradient rule, the ledger, the foresee step's pure parts (expected values derived by hand)


def _scheduler(families, n, max_trials=100, foresee_trials=1, foresee_random=0, seed=0):
    """A FamilySeerScheduler over ``n`` fake live tasks of weight 1 (no MetaSchedule loop)."""
    from components.familyseer.scheduler import FamilySeerScheduler

    ledger = Ledger(n)
    tasks = [SimpleNamespace(is_terminated=False, task_weight=1.0, ctx=None) for _ in range(n)]
    inst = FamilySeerScheduler(families, ledger, None, None, max_trials, foresee_trials, foresee_random,
                               seed=seed)._inst
    inst._sched = lambda: SimpleNamespace(tasks_=tasks)
    inst.history = [[] for _ in range(n)]
    return inst, ledger


def test_a_task_whose_best_is_still_a_failure_is_skipped_by_the_gradient_rule():
    # gradient_based.cc tunes a task only once its best latency is below 1e9 (a failed trial's)
    from components.familyseer.scheduler import task_gradient

    assert task_gradient([FAILED_MS, FAILED_MS], best=FAILED_MS, weight=1.0, alpha=0.2, window=3) == -1e9


def test_the_gradient_uses_the_ledgers_best_not_the_last_history_entry():
    """A foresee round can improve a sibling's best after its last main round: the gradient reads the
    ledger's best. n=4, w=3: g = 0.2 * (history[0] - best) / 3 + 0.8 * best / 4."""
    inst, ledger = _scheduler({"f": [0, 1]}, 2)
    inst.history[1] = [10.0, 10.0, 10.0, 10.0]
    ledger.best_ms[1] = 5.0
    assert inst._gradient(1) == pytest.approx(0.2 * (10.0 - 5.0) / 3 + 0.8 * 5.0 / 4)  # = 1/3 + 1


def test_argmax_breaks_ties_at_random_and_otherwise_takes_the_first_maximum():
    inst, _ = _scheduler({"f": [0, 1, 2]}, 3, seed=0)
    # all gradients equal (e.g. every task still unmeasured): a seeded random pick, not always the first
    picks = [inst._argmax([3, 5, 7], [1.0, 1.0, 1.0]) for _ in range(30)]
    assert set(picks) <= {3, 5, 7} and len(set(picks)) > 1
    # otherwise the first maximum, as std::max_element
    assert inst._argmax([3, 5, 7], [1.0, 2.0, 2.0]) == 5


def test_the_ledger_records_the_median_run_time_not_the_mean():
    from components.familyseer.scheduler import TrialLedger

    ledger = TrialLedger(1)._inst
    ok = SimpleNamespace(error_msg=None)
    # median of 1, 2, 9 ms is 2 ms (the mean would be 4 ms)
    ledger.apply(None, 0, [SimpleNamespace(sch=SimpleNamespace(mod="s0"))], [ok],
                 [SimpleNamespace(run_secs=[0.001, 0.002, 0.009], error_msg=None)])
    assert ledger.trials[0].latency_ms == pytest.approx(2.0)
    assert ledger.best_ms == [pytest.approx(2.0)]


def test_the_ledger_reports_progress_every_n_trials():
    from components.familyseer.scheduler import TrialLedger

    calls = []
    ledger = TrialLedger(1, progress=lambda n, best, now: calls.append((n, best)), every=2)._inst
    ok = SimpleNamespace(error_msg=None)
    secs = [5e-3, 4e-3, 3e-3, 2e-3, 1e-3]
    ledger.apply(None, 0, [SimpleNamespace(sch=SimpleNamespace(mod=f"s{i}")) for i in range(5)], [ok] * 5,
                 [SimpleNamespace(run_secs=[s], error_msg=None) for s in secs])
    assert [n for n, _ in calls] == [2, 4]
    assert calls[0][1] == [pytest.approx(4.0)] and calls[1][1] == [pytest.approx(2.0)]  # the best so far


def test_foresee_picks_never_pick_more_than_k_when_asked_for_more_random_picks_than_k():
    from components.familyseer.scheduler import foresee_picks

    same = lambda c: c  # noqa: E731
    round_ = ["b0", "b1", "r0", "r1"]
    for k in (1, 2):
        got = foresee_picks(round_, set(), k, 3, key=same)
        assert len(got) == k and set(got) <= set(round_)
        # n_rand is clamped to k: the same picks as asking for k random ones
        assert got == foresee_picks(round_, set(), k, k, key=same)
    assert foresee_picks(round_, set(), 1, 2, key=same) == ["r1"]  # clamped to 1 random: the last one


def test_the_foresee_eps_greedy_truncates_to_exactly_the_random_picks_asked_for():
    """MetaSchedule's PickWithEpsGreedy takes int(num x eps_greedy) random picks (truncated)."""
    from components.familyseer.scheduler import foresee_eps_greedy

    assert foresee_eps_greedy(0, 7) == 0.0
    bad = [(n, size) for size in range(1, 601) for n in range(1, size + 1)
           if int(size * foresee_eps_greedy(n, size)) != n]
    assert not bad, bad[:5]
    assert int(22 * (15 / 22)) == 14  # why not n / size: it can truncate one pick short


def test_the_cost_model_learns_from_built_candidates_that_failed_to_run_or_ran_for_some_time():
    """update_cost_model.cc: keep a candidate iff it built and (its run failed or sum(run_secs) > 0)."""
    from components.familyseer.scheduler import cost_model_samples

    built, broken = SimpleNamespace(error_msg=None), SimpleNamespace(error_msg="build failed")
    run = lambda secs=None, err=None: SimpleNamespace(run_secs=secs, error_msg=err)  # noqa: E731
    builds = [broken, built, built, built, built]
    results = [run(err="not run"), run(err="run failed"), run([0.0, 0.0]), run([1e-3]), run(None)]
    assert cost_model_samples(builds, results) == [1, 3]


def _recording_foresee(inst):
    calls = []
    inst._foresee_candidates = lambda j, k: calls.append((j, k)) or []  # an empty round: nothing measured
    return calls


def test_a_foresee_round_goes_to_a_sibling_never_to_the_task_just_tuned():
    inst, ledger = _scheduler({"f": [0, 1]}, 2)
    # the task just tuned has the larger gradient (0.8 * 9 > 0.8 * 5): it must still not be picked
    inst.history = [[9.0], [5.0]]
    ledger.best_ms = [9.0, 5.0]
    calls = _recording_foresee(inst)
    inst._foresee(0)
    assert calls == [(1, 1)]


def test_a_sibling_without_a_main_round_gets_no_foresee_round():
    inst, ledger = _scheduler({"f": [0, 1]}, 2)
    inst.history = [[5.0], []]
    ledger.best_ms = [5.0, FAILED_MS]
    calls = _recording_foresee(inst)
    inst._foresee(0)
    assert calls == []


def test_a_foresee_round_is_cut_to_the_budget_left():
    inst, ledger = _scheduler({"f": [0, 1]}, 2, max_trials=10, foresee_trials=3)
    inst.history = [[5.0], [6.0]]
    ledger.best_ms = [5.0, 6.0]
    ledger.num_trials = 9
    calls = _recording_foresee(inst)
    inst._foresee(0)
    assert calls == [(1, 1)]


def test_the_foresee_eps_greedy_is_a_probability_when_every_pick_is_random():
    """MetaSchedule raises on eps_greedy > 1 (evolutionary_search.cc); n_rand == size gave 1.5 for 1 of 1."""
    from components.familyseer.scheduler import foresee_eps_greedy

    for size in range(1, 601):
        eps = foresee_eps_greedy(size, size)
        assert eps == 1.0 and int(size * eps) == size


def test_every_joined_round_adds_one_history_entry_even_without_candidates(monkeypatch):
    """gradient_based.cc's JoinRunningTask pushes the task's best onto its history on every join, also for
    a round with no candidates (here: a main round whose candidates foresee rounds had all measured), so
    n grows and the task's gradient best/n falls. A TouchTask that does not join (a future still
    running) adds nothing. The join is seen as MetaSchedule's clearing of the round's runner futures."""
    from tvm.s_tir.meta_schedule import _ffi_api   # the module the scheduler class calls into

    inst, ledger = _scheduler({"f": [0, 1]}, 2)
    tasks = inst._sched().tasks_
    ledger.best_ms[0] = 4.0
    done = {"touch": False}

    def join(sched, i):                       # a round of zero candidates: no trial reaches the ledger
        sched.tasks_[i].runner_futures = None

    def touch(sched, i):                      # joins only when every future is done
        if done["touch"]:
            join(sched, i)

    monkeypatch.setattr(_ffi_api, "TaskSchedulerJoinRunningTask", join)
    monkeypatch.setattr(_ffi_api, "TaskSchedulerTouchTask", touch)
    tasks[0].runner_futures = []              # an empty round in flight
    inst._join(0, wait=True)
    assert inst.history[0] == [4.0]
    inst._join(0, wait=True)                  # nothing in flight now: left alone
    assert inst.history[0] == [4.0]
    tasks[0].runner_futures = ["running"]
    inst._join(0, wait=False)                 # a future still running: not joined, no entry
    assert inst.history[0] == [4.0] and tasks[0].runner_futures == ["running"]
    done["touch"] = True
    inst._join(0, wait=False)
    assert inst.history[0] == [4.0, 4.0]


@pytest.mark.parametrize("bests", [(2.0, 9.0, 4.0), (9.0, 2.0, 4.0), (2.0, 4.0, 9.0)])
def test_a_foresee_round_goes_to_the_sibling_with_the_largest_gradient(bests):
    """Three siblings of the task just tuned, one main round each: g = 0.8 x best (n = 1), so the one with
    the largest best latency has the largest gradient and gets the round, wherever it stands in the
    family (the artifact's foresee rule: the sibling MetaSchedule's gradient rule would tune next)."""
    inst, ledger = _scheduler({"f": [0, 1, 2, 3]}, 4)
    inst.history = [[5.0]] + [[b] for b in bests]
    ledger.best_ms = [5.0, *bests]
    grads = [inst._gradient(j) for j in (1, 2, 3)]
    assert len(set(grads)) == 3                     # no tie: the rule, not the random tie-break, decides
    calls = _recording_foresee(inst)
    inst._foresee(0)
    assert calls == [(1 + bests.index(9.0), 1)]


def test_a_foresee_round_updates_the_siblings_best_but_never_its_gradient_history():
    """The artifact's foresee round does not count as a round of the sibling (its task_cts stays): the
    measurements reach the ledger (the sibling's best latency, which its gradient reads) through the measure
    callbacks, but no task's history gets an entry, then or at the next join."""
    import tvm

    inst, ledger = _scheduler({"f": [0, 1, 2]}, 3, foresee_trials=2)
    tasks = inst._sched().tasks_
    sched = SimpleNamespace(tasks_=tasks, cost_model_=None)
    inst._sched = lambda: sched
    for t in tasks:
        t.runner_futures = None                     # nothing in flight: a join leaves the task alone
        t.ctx = SimpleNamespace(target=tvm.target.Target("llvm"))
    inst.history = [[5.0, 4.0], [6.0], [3.0]]
    ledger.best_ms = [4.0, 6.0, 3.0]
    picks = [SimpleNamespace(sch=SimpleNamespace(mod=tvm.IRModule()), args_info=[]) for _ in range(2)]
    inst._foresee_candidates = lambda j, k: picks[:k]
    built = SimpleNamespace(error_msg=None, artifact_path="/nonexistent/artifact")
    inst.builder = SimpleNamespace(build=lambda inputs: [built] * len(inputs))
    ran = SimpleNamespace(run_secs=[1e-3], error_msg=None)           # 1 ms: better than the sibling's 6 ms
    inst.runner = SimpleNamespace(run=lambda inputs: [SimpleNamespace(result=lambda: ran)] * len(inputs))
    seen = []

    class Callback:                                  # the ledger's part of the measure callbacks
        def apply(self, sched_, task_id, candidates, builds, results):
            seen.append((task_id, len(candidates), ledger.kind))
            ledger.num_trials += len(candidates)
            ledger.best_ms[task_id] = min([ledger.best_ms[task_id]] + [1e3 * r.run_secs[0] for r in results])

    sched.measure_callbacks_ = [Callback()]
    before = [list(h) for h in inst.history]
    inst._foresee(0)
    assert seen == [(1, 2, "foresee")] and ledger.kind == "main"   # sibling 1: gradient 4.8 > 2.4
    assert ledger.best_ms[1] == pytest.approx(1.0) and inst.foresee_log == [(0, 1, 2)]
    assert inst.history == before
    inst._join_finished()
    assert inst.history == before
