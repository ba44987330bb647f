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
    assert cost["wall_s"] >= 0.25
    # not the process's whole age (which includes interpreter start-up and earlier tests)
    assert cost["wall_s"] <= process_age() - before + 0.5
    assert process_age() > cost["wall_s"]
