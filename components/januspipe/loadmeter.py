"""External CPU load seen by a real pipelined run (what the simulator must model on a shared machine).

The real runs share a small machine with other jobs. Time-slicing by those jobs stretches every
action's wall time but not its CPU time, so a simulator fed with CPU times (or with a profile taken
at another moment) predicts an idle machine. :class:`ExternalLoadSampler` measures the other jobs'
demand *while* the launch runs: a background thread samples, every ``interval_s``, the number of
runnable tasks of the whole machine (``procs_running`` in ``/proc/stat``) and subtracts the runnable
tasks that belong to this process tree (the spawned ranks and the sampler itself). The mean over a
time window is the external load ``L`` (CPU-bound tasks of other jobs); the simulator then gives
each of ``n`` busy ranks ``min(1, cores / (n + L))`` of a core (processor sharing, as Linux CFS does
for CPU-bound tasks of equal weight).

Linux only (``/proc``); elsewhere :meth:`ExternalLoadSampler.mean` returns ``None`` (no samples).
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path


def _procs_running() -> int | None:
    try:
        with open("/proc/stat", "rb") as fh:
            for line in fh:
                if line.startswith(b"procs_running"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _children(pid: int) -> list[int]:
    """Direct and indirect child processes of ``pid`` (scan of /proc)."""
    parent: dict[int, int] = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            stat = (p / "stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        parent[int(p.name)] = int(fields[1])
    out, frontier = [], [pid]
    while frontier:
        q = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == q]
        out += kids
        frontier += kids
    return out


def _running_tasks(pids: list[int]) -> int:
    n = 0
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/stat", "rb") as fh:
                    stat = fh.read()
            except OSError:
                continue
            if stat[stat.rfind(b")") + 2:stat.rfind(b")") + 3] == b"R":
                n += 1
    return n


class ExternalLoadSampler:
    """Context manager: ``with ExternalLoadSampler() as s: spawn(...)``; then ``s.mean(t0, t1)``
    (``time.time()`` epoch seconds) is the mean number of runnable tasks of *other* processes."""

    def __init__(self, interval_s: float = 0.02, rescan_s: float = 1.0):
        self.interval_s = interval_s
        self.rescan_s = rescan_s
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _loop(self) -> None:
        me = os.getpid()
        kids: list[int] = []
        last_scan = -1e9
        while not self._stop.is_set():
            now = time.time()
            if now - last_scan > self.rescan_s:
                try:
                    kids = _children(me)
                except OSError:
                    kids = []
                last_scan = time.time()
            total = _procs_running()
            if total is None:
                return
            own = _running_tasks(kids) + 1  # + this sampler thread, running while it reads
            self.samples.append((now, float(max(0, total - own))))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "ExternalLoadSampler":
        if Path("/proc/stat").is_file():
            self._thread = threading.Thread(target=self._loop, name="external-load-sampler", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def mean(self, t0: float | None = None, t1: float | None = None) -> float | None:
        """Mean external load over ``[t0, t1]`` (all samples if None); None without samples."""
        xs = [x for t, x in self.samples if (t0 is None or t >= t0) and (t1 is None or t <= t1)]
        if not xs:  # a window shorter than the sampling interval: nearest samples
            if not self.samples or t0 is None:
                return None
            mid = (t0 + (t1 if t1 is not None else t0)) / 2
            xs = [min(self.samples, key=lambda s: abs(s[0] - mid))[1]]
        return sum(xs) / len(xs)
