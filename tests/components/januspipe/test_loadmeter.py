"""The external-load sampler counts other processes' runnable tasks, not its own process tree.

What :class:`ExternalLoadSampler` must report, per sample: the machine's ``procs_running`` minus the
runnable (state ``R``) threads of this process's descendants (children, grandchildren, ...; the
list rescanned every ``rescan_s``) minus one for the sampler thread itself, clamped at 0. The
sampler is driven here by a fake ``/proc`` tree (``FakeProc``) with known loads, so every sample's
value is known exactly; two tests check the helpers and the pacing against the real ``/proc``.
"""
from __future__ import annotations

import builtins
import io
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from components.januspipe import loadmeter
from components.januspipe.loadmeter import ExternalLoadSampler

LINUX = pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="needs Linux /proc")
THREAD = "external-load-sampler"


class FakeProc:
    """A ``/proc`` under ``tmp_path`` that :mod:`loadmeter` reads instead of the real one.

    ``/proc/stat`` serves ``loads[k]`` as ``procs_running`` at its k-th read, then fails (OSError),
    which ends the sampler's loop by itself: exactly ``len(loads)`` samples. ``hooks[k]`` runs just
    before the k-th read is served (after that iteration's rescan, before its own-task count).
    The clock (``time.time`` inside :mod:`loadmeter`) reads ``0.4 s x`` the reads served so far."""

    def __init__(self, tmp_path: Path, monkeypatch, me: int = 1000, tick_s: float = 0.4):
        self.base = tmp_path
        self.proc = tmp_path / "proc"
        self.proc.mkdir()
        (self.proc / "stat").write_bytes(b"")          # present: __enter__ starts the thread
        (self.proc / "self").mkdir()                    # not a pid: skipped by the scan
        (self.proc / "555").mkdir()                     # a process that vanished mid-scan: no stat
        self.loads: list[int] = []
        self.hooks: dict[int, callable] = {}
        self.reads = 0
        self.exhausted = threading.Event()
        monkeypatch.setattr(loadmeter, "Path", lambda p: tmp_path / str(p).lstrip("/"))
        monkeypatch.setattr(loadmeter, "open", self._open, raising=False)
        monkeypatch.setattr(loadmeter, "os", SimpleNamespace(getpid=lambda: me,
                                                             listdir=lambda p: os.listdir(self._path(p))))
        monkeypatch.setattr(loadmeter, "time", SimpleNamespace(time=lambda: tick_s * self.reads))

    def _path(self, p: str) -> str:
        assert p.startswith("/proc/"), p
        return str(self.base) + p

    def _open(self, p, mode="r"):
        if p != "/proc/stat":
            return builtins.open(self._path(p), mode)
        k = self.reads
        if k in self.hooks:
            self.hooks[k]()
        self.reads += 1
        if k >= len(self.loads):
            self.exhausted.set()
            raise OSError("fake /proc/stat exhausted")
        # distractor lines that also start with "proc": only procs_running is the machine's runnable count
        return io.BytesIO(b"cpu  1 2 3 4\nctxt 99\nprocesses 7777\nprocs_running %d\nprocs_blocked 5\n" % self.loads[k])

    @staticmethod
    def _stat(pid: int, comm: str, state: str, ppid: int) -> bytes:
        return f"{pid} ({comm}) {state} {ppid} {pid} {pid} 0 -1 4194304 97 0\n".encode()

    def process(self, pid: int, ppid: int, threads: dict[int, str], comm: str = "python") -> None:
        d = self.proc / str(pid)
        (d / "task").mkdir(parents=True)
        (d / "stat").write_bytes(self._stat(pid, comm, threads.get(pid, "S"), ppid))
        for tid, state in threads.items():
            self.thread(pid, tid, state, ppid, comm)

    def thread(self, pid: int, tid: int, state: str, ppid: int, comm: str = "python") -> None:
        t = self.proc / str(pid) / "task" / str(tid)
        t.mkdir(exist_ok=True)
        (t / "stat").write_bytes(self._stat(tid, comm, state, ppid))

    def exit(self, pid: int) -> None:
        shutil.rmtree(self.proc / str(pid))


def _sample(fake: FakeProc, **kw) -> ExternalLoadSampler:
    with ExternalLoadSampler(interval_s=0.0, **kw) as s:
        assert fake.exhausted.wait(10), "the sampler did not read the fake /proc/stat to its end"
    assert not any(t.name == THREAD for t in threading.enumerate())
    return s


def test_each_sample_is_procs_running_minus_the_own_tree_and_the_sampler(tmp_path, monkeypatch):
    fake = FakeProc(tmp_path, monkeypatch)
    fake.process(1, 0, {1: "S"}, comm="init")
    fake.process(1000, 1, {1000: "S", 1001: "R"})               # this process: main thread + sampler thread
    # a rank (child, one running and one sleeping thread; the sleeper's comm would fool a parser that
    # split at the first ')') and its own child (grandchild of this process), running
    fake.process(100, 1000, {100: "R", 101: "S"}, comm="w) R (")
    fake.process(200, 100, {200: "R"})
    # another job's process, running: external. Its comm would make a first-')' parser read ppid 1000
    fake.process(300, 1, {300: "R"}, comm="p) S 1000 (")
    fake.loads = [10, 10, 10, 10, 10, 2]

    def read1():
        fake.thread(100, 101, "R", 1000, comm="w) R (")        # seen at once: states are read every sample
        fake.process(400, 1000, {400: "R"})                     # a new rank: seen at the next rescan only

    fake.hooks = {1: read1, 4: lambda: fake.exit(200)}         # a rank exits: its tasks no longer count
    s = _sample(fake)
    # iteration:         0: own = 100, 200 + sampler = 3;  1-2: + thread 101 = 4;
    #                    3: rescan (1.2 s > rescan_s = 1 s after the scan at 0 s) finds 400 = 5;
    #                    4: 200 gone = 4;  5: procs_running 2 - 4 < 0, clamped to 0
    assert [x for _, x in s.samples] == [7.0, 6.0, 6.0, 5.0, 6.0, 0.0]
    assert [t for t, _ in s.samples] == pytest.approx([0.0, 0.4, 0.8, 1.2, 1.6, 2.0])  # stamped as each begins
    assert s.mean() == pytest.approx(30 / 6) and s.mean(0.3, 1.3) == pytest.approx(17 / 3)


def test_the_process_tree_is_rescanned_every_rescan_s(tmp_path, monkeypatch):
    fake = FakeProc(tmp_path, monkeypatch)
    fake.process(1000, 1, {1000: "S"})
    fake.loads = [6] * 6
    fake.hooks = {0: lambda: fake.process(100, 1000, {100: "R"})}
    # rescan_s = 0.5 s, a tick of 0.4 s: scans at iterations 0, 2 (0.8 s), 4 (1.6 s)
    s = _sample(fake, rescan_s=0.5)
    assert [x for _, x in s.samples] == [5.0, 5.0, 4.0, 4.0, 4.0, 4.0]


def test_the_mean_over_a_window_and_the_nearest_sample_fallback():
    s = ExternalLoadSampler()
    s.samples = [(10.0, 1.0), (10.5, 3.0), (11.0, 8.0), (12.0, 0.0)]
    assert s.mean() == 3.0
    assert s.mean(10.5, 11.0) == 5.5 and s.mean(10.4, 11.1) == 5.5    # bounds are inclusive
    assert s.mean(10.0, 10.5) == 2.0
    assert s.mean(11.0) == 4.0 and s.mean(None, 10.5) == 2.0          # open-ended windows
    # no sample inside: the sample nearest the window's middle
    assert s.mean(11.2, 11.3) == 8.0 and s.mean(10.1, 10.2) == 1.0
    assert s.mean(11.45, 11.7) == 0.0 and s.mean(10.55, 10.9) == 3.0   # the middle's nearest, not t0's or t1's
    assert s.mean(20.0) == 0.0 and s.mean(5.0, 6.0) == 1.0             # outside all samples: the nearest end
    assert s.mean(None, 5.0) is None                                   # no start, nothing before the end
    empty = ExternalLoadSampler()
    assert empty.mean() is None and empty.mean(10.0, 11.0) is None and empty.mean(10.0) is None


def test_without_proc_no_thread_is_started_and_the_mean_is_none(tmp_path, monkeypatch):
    monkeypatch.setattr(loadmeter, "Path", lambda p: tmp_path / str(p).lstrip("/"))  # no proc/stat there
    with ExternalLoadSampler(interval_s=0.0) as s:
        assert not any(t.name == THREAD for t in threading.enumerate())
    assert s.samples == [] and s.mean() is None and s.mean(0.0, time.time()) is None


def _poll(cond, timeout_s=10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


@LINUX
def test_the_helpers_on_the_real_proc_find_children_and_their_running_threads():
    assert loadmeter._procs_running() >= 1                      # this thread is running as it reads
    assert loadmeter._running_tasks([os.getpid()]) >= 1         # same: its own task stat says R
    blocked = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        kids = loadmeter._children(os.getpid())
        assert {blocked.pid, busy.pid} <= set(kids)
        # a CPU-bound loop is always runnable (R); a read on an empty pipe sleeps (S) once started
        assert _poll(lambda: loadmeter._running_tasks([busy.pid]) == 1), "busy child never counted as running"
        assert _poll(lambda: loadmeter._running_tasks([blocked.pid]) == 0), "blocked child counted as running"
        assert loadmeter._running_tasks([blocked.pid, busy.pid]) == 1
    finally:
        for p in (blocked, busy):
            p.kill()
            p.wait()
    assert loadmeter._running_tasks([busy.pid]) == 0             # gone: no task directory, nothing counted


@LINUX
def test_the_real_sampler_takes_one_sample_per_interval_until_it_exits():
    interval = 0.01
    enter = time.time()
    with ExternalLoadSampler(interval_s=interval) as s:
        assert _poll(lambda: len(s.samples) >= 6, timeout_s=10), "fewer than 6 samples in 10 s"
    leave = time.time()
    assert not any(t.name == THREAD for t in threading.enumerate())
    times = [t for t, _ in s.samples]
    assert enter <= times[0] and times[-1] <= leave
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert min(gaps) >= 0.5 * interval, gaps                     # the sampler waits interval_s between samples
    assert all(x == int(x) for _, x in s.samples)               # counts of tasks
