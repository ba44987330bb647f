"""Multi-process launch: results by rank, failures surface with the rank, collectives work on gloo."""
from __future__ import annotations

import re
import threading

import pytest

from tasks.launch import LaunchError, LaunchTimeout, spawn
from tests.tasks import launch_fns


def test_spawn_runs_collectives_and_returns_by_rank():
    out = spawn(launch_fns.all_reduce_rank, 2, 10)
    assert out == [(0, 2, 21.0), (1, 2, 21.0)]   # (10+0) + (10+1)


def test_spawn_reports_the_failing_rank():
    with pytest.raises(LaunchError, match="rank 1 failed: ValueError: bad shard"):
        spawn(launch_fns.fail_on_rank, 2, 1, timeout=120)


def test_spawn_rejects_bad_world_size():
    with pytest.raises(ValueError, match="world_size=0"):
        spawn(launch_fns.all_reduce_rank, 0, 1)


def test_spawn_from_fork_server_runs_collectives_and_reports_failures():
    out = spawn(launch_fns.all_reduce_rank, 2, 10, start_method="forkserver")
    assert out == [(0, 2, 21.0), (1, 2, 21.0)]
    with pytest.raises(LaunchError, match="rank 1 failed: ValueError: bad shard"):
        spawn(launch_fns.fail_on_rank, 2, 1, timeout=120, start_method="forkserver")


def test_spawn_rejects_unknown_start_method():
    with pytest.raises(ValueError, match="start_method='fork'"):
        spawn(launch_fns.all_reduce_rank, 2, 1, start_method="fork")


@pytest.mark.parametrize("timeout", [float("inf"), float("nan"), 1e300, 0, -5.0, True])
def test_spawn_refuses_a_timeout_it_cannot_represent(timeout):
    """``timeout=inf`` used to reach ``timedelta(seconds=inf)`` in the ranks (OverflowError)."""
    from components.base import ConfigError

    with pytest.raises(ConfigError, match=re.escape(f"timeout={timeout!r}: expected a finite number of seconds > 0 and <= 604800")):
        spawn(launch_fns.all_reduce_rank, 2, 1, timeout=timeout)


def test_bad_input_in_a_rank_is_a_user_error_but_crashes_and_timeouts_are_not():
    """A rank stopping on an InputError is an InputError (``python -m flows`` prints it, exit 2); any
    other failure of a rank, and a launch past its timeout (which may be a hung rank), stays a
    LaunchError with its traceback."""
    from components.base import InputError
    from tasks.launch import RankInputError

    with pytest.raises(LaunchTimeout, match=r"timed out after 2 s; expected it to finish within timeout=2 s") as err:
        spawn(launch_fns.sleep_rank, 1, 60.0, backend=None, timeout=2)
    assert not isinstance(err.value, InputError) and isinstance(err.value, LaunchError)
    with pytest.raises(RankInputError, match=r"rank 0: InputError: shard\.json: missing; expected") as err:
        spawn(launch_fns.bad_input_on_rank, 1, 0, backend=None, timeout=120)
    assert isinstance(err.value, InputError) and "Traceback" not in str(err.value)
    with pytest.raises(LaunchError) as err:
        spawn(launch_fns.fail_on_rank, 1, 0, backend=None, timeout=120)
    assert not isinstance(err.value, InputError) and "Traceback" in str(err.value)


@pytest.fixture
def launch_tmp(tmp_path, monkeypatch):
    """The directory the launching process makes its temporary directories in (``tempfile.tempdir``)."""
    import tempfile

    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def test_the_ranks_meet_on_a_file_store_in_a_fresh_directory_removed_after_the_launch(launch_tmp):
    """No TCP port for the rendezvous: the store is a file in a directory made for this launch, and the
    directory is gone once the ranks are joined."""
    out = spawn(launch_fns.store_files, 2, str(launch_tmp), timeout=120)
    assert out[0] == out[1] and len(out[0]) == 1
    (store,) = out[0]
    assert store.startswith("paperworks-launch-") and store.endswith("/store")
    assert list(launch_tmp.iterdir()) == []


def test_the_store_directory_is_removed_after_a_failing_or_vanished_rank(launch_tmp):
    with pytest.raises(LaunchError, match="rank 1 failed: ValueError: bad shard"):
        spawn(launch_fns.fail_on_rank, 2, 1, timeout=120)
    assert list(launch_tmp.iterdir()) == []
    # a rank that dies leaves the store file behind (FileStore removes it when the last rank lets go)
    # and its peer is killed: the launching process removes the directory
    with pytest.raises(LaunchError, match="rank 0 exited with code 3"):
        spawn(launch_fns.exit_on_rank, 2, 0, timeout=120)
    assert list(launch_tmp.iterdir()) == []
    # a launch that cannot even start its ranks (an argument the spawn start method cannot pickle)
    with pytest.raises(TypeError, match="cannot pickle '_thread.lock' object"):
        spawn(launch_fns.all_reduce_rank, 2, threading.Lock(), timeout=120)
    assert list(launch_tmp.iterdir()) == []


def test_a_rank_that_dies_silently_is_named_when_a_peer_reports_first(tmp_path):
    """A dead rank makes its peers fail, and a peer's report can reach the launcher before the death is
    seen: either way the message names the dead rank (the likelier cause), then the peer's error."""
    with pytest.raises(LaunchError) as err:
        spawn(launch_fns.exit_then_peer_fails, 2, str(tmp_path), backend=None, timeout=120)
    msg = str(err.value)
    assert msg.startswith("rank 0 exited with code 3")
    if "rank 1 failed" in msg:   # the usual order: the peer's report came first
        assert "rank 0 exited with code 3 without a report (likely the first failure); then rank 1 failed: " \
               "RuntimeError: connection closed by peer" in msg


def test_a_rank_that_exits_0_without_a_result_fails_the_launch_at_once():
    """Status 0 and no result (``os._exit(0)`` in the rank's code) is reported as such; before, the launch
    waited for its timeout (here: the peer's result after 120 s, then a LaunchTimeout at 150 s)."""
    with pytest.raises(LaunchError, match="rank 1 exited with code 0 without a result") as err:
        spawn(launch_fns.exit_quietly_on_rank, 2, 1, backend=None, timeout=150)
    assert not isinstance(err.value, LaunchTimeout)


def test_a_launch_does_not_need_its_master_port(monkeypatch):
    """The old race, made certain: the rendezvous used to bind MASTER_PORT in rank 0, and another
    process could take the port first ("address already in use"). Here MASTER_PORT is a port another
    socket already listens on: the ranks meet on their FileStore and never bind it."""
    import socket

    import tasks.launch

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()

        class Held:        # stands for the launch's own reservation, but names the taken port
            def getsockname(self):
                return taken.getsockname()

            def close(self):
                pass
        monkeypatch.setattr(tasks.launch, "_reserve_port", Held)
        out = spawn(launch_fns.all_reduce_rank, 2, 10, timeout=120)
    assert out == [(0, 2, 21.0), (1, 2, 21.0)]


def test_master_port_stays_reserved_for_the_launch():
    """MASTER_PORT (read by code such as DeepSpeed) is held by the launching process until the ranks are
    joined: no other socket can take it meanwhile, so concurrent launches never share the number."""
    assert spawn(launch_fns.bind_master_port, 1, backend=None, timeout=120) == [True]


def test_concurrent_launches_each_form_their_own_group(tmp_path):
    """Two launches from two threads, provably up at the same time (each rank waits until all four
    ranks have checked in): each all-reduces over its own two ranks only, on its own MASTER_PORT."""
    from concurrent.futures import ThreadPoolExecutor

    meet_dir = tmp_path / "meet"
    meet_dir.mkdir()
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(spawn, launch_fns.meet, 2, base, str(meet_dir), 4, timeout=180) for base in (1, 5)]
        a, b = [f.result() for f in futures]
    assert [r[:4] for r in a] == [(0, 2, 3.0, 201.0), (1, 2, 3.0, 201.0)]       # (1+0)+(1+1), 100+101
    assert [r[:4] for r in b] == [(0, 2, 11.0, 1001.0), (1, 2, 11.0, 1001.0)]   # (5+0)+(5+1), 500+501
    assert a[0][4] == a[1][4] and b[0][4] == b[1][4] and a[0][4] != b[0][4]
    assert sorted(p.name for p in meet_dir.iterdir()) == ["1-0", "1-1", "5-0", "5-1"]


def test_a_rank_freezes_what_is_alive_before_it_exits(tmp_path):
    """After its function returns, a rank freezes the objects alive (torch, the model), so that its
    interpreter's final collections skip them; the launch waits for that exit."""
    prefix = tmp_path / "frozen"
    during = spawn(launch_fns.freeze_count_at_exit, 2, str(prefix), timeout=120)
    at_exit = [int((tmp_path / f"frozen.{r}").read_text()) for r in range(2)]
    assert during == [0, 0] and all(n > 10_000 for n in at_exit), (during, at_exit)
