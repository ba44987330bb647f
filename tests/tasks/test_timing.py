"""Stage cost accounting: stages sharing one process (``flows <paper> all``) are not counted twice."""
from __future__ import annotations

import time

from tasks.timing import process_age, stage_cost


def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_a_later_stage_in_the_same_process_costs_only_its_own_time(monkeypatch):
    """Each call returns the wall and CPU seconds since the previous call, not since the process started.
    The clocks are replaced by scripted ones (real ones made this a timed assertion)."""
    import resource
    from types import SimpleNamespace

    import tasks.timing as timing

    ages = iter([100.0, 103.5, 110.0])             # process age at three calls
    cpu = iter([(40.0, 2.0, 5.0, 1.0), (41.0, 2.5, 5.0, 3.0), (41.25, 2.5, 5.0, 3.0)])    # user, sys, children u, s
    now = {}

    def rusage(who):
        if who == resource.RUSAGE_SELF:
            now["c"] = next(cpu)
            return SimpleNamespace(ru_utime=now["c"][0], ru_stime=now["c"][1])
        return SimpleNamespace(ru_utime=now["c"][2], ru_stime=now["c"][3])

    monkeypatch.setattr(timing, "process_age", lambda: next(ages))
    monkeypatch.setattr(timing.resource, "getrusage", rusage)
    monkeypatch.setattr(timing, "_MARK", {})
    assert stage_cost() == {"wall_s": 100.0, "cpu_s": 48.0}      # the first stage: the process so far
    assert stage_cost() == {"wall_s": 3.5, "cpu_s": 3.5}         # then only what came after the previous one
    assert stage_cost() == {"wall_s": 6.5, "cpu_s": 0.25}


def test_stage_cost_reads_real_clocks():
    stage_cost()
    _burn(0.05)
    cost = stage_cost()
    assert cost["cpu_s"] > 0 and cost["wall_s"] > 0 and process_age() > cost["wall_s"]


def test_a_stage_counts_the_cpu_of_the_worker_processes_it_waited_for():
    """Multi-process stages (launch, DeepSpeed ranks, Flower clients) run their work in children."""
    import subprocess
    import sys

    stage_cost()
    subprocess.run([sys.executable, "-c", "import time\nend = time.process_time() + 0.4\n"
                    "while time.process_time() < end: pass"], check=True)
    cost = stage_cost()
    assert cost["cpu_s"] >= 0.35
