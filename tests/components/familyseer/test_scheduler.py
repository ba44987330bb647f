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
