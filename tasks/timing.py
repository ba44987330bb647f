"""What a stage costs: wall and CPU seconds of this process since its previous stage ended.

Under ``dvc repro`` every stage is its own process, so a stage's cost is the whole process
(interpreter start-up, imports, Prefect and MLflow set-up included). Under ``python -m flows <paper>
all`` or a deployment the stages share one process; each then gets the time since the previous
stage ended, so summing the stages counts the process once (not once per stage).
"""
from __future__ import annotations

import os
import resource
import time
from pathlib import Path

_MARK: dict[str, float] = {}
_IMPORTED = time.perf_counter()


def process_age() -> float:
    """Seconds since this process started (Linux: from ``/proc``; elsewhere: since this module's import)."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        start = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]) / ticks
        return float(Path("/proc/uptime").read_text().split()[0]) - start
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _IMPORTED


def stage_cost() -> dict[str, float]:
    """``{"wall_s", "cpu_s"}`` (CPU: user + system of this process and its waited-for children)
    since the previous call in this process, or since the process started."""
    age = process_age()
    ru_s, ru_c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = ru_s.ru_utime + ru_s.ru_stime + ru_c.ru_utime + ru_c.ru_stime
    cost = {"wall_s": age - _MARK.get("wall", 0.0), "cpu_s": cpu - _MARK.get("cpu", 0.0)}
    _MARK.update(wall=age, cpu=cpu)
    return cost
