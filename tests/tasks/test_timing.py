"""Stage cost accounting: stages sharing one process (``flows <paper> all``) are not counted twice."""
from __future__ import annotations

import time

from tasks.timing import process_age, stage_cost


def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_a_later_stage_in_the_same_process_costs_only_its_own_time():
    stage_cost()                                   # a previous stage of this process ends here
    before = process_age()
    _burn(0.3)
    cost = stage_cost()
    assert cost["cpu_s"] >= 0.25
    assert cost["cpu_s"] <= 0.3 + 0.2                # not the earlier stages' (and tests') CPU time too
    assert cost["wall_s"] >= 0.25
    # not the process's whole age (which includes interpreter start-up and earlier tests)
    assert cost["wall_s"] <= process_age() - before + 0.5
    assert process_age() > cost["wall_s"]


def test_a_stage_counts_the_cpu_of_the_worker_processes_it_waited_for():
    """Multi-process stages (launch, DeepSpeed ranks, Flower clients) run their work in children."""
    import subprocess
    import sys

    stage_cost()
    subprocess.run([sys.executable, "-c", "import time\nend = time.process_time() + 0.4\n"
                    "while time.process_time() < end: pass"], check=True)
    cost = stage_cost()
    assert cost["cpu_s"] >= 0.35
