"""Multi-process launch: results by rank, failures surface with the rank, collectives work on gloo."""
from __future__ import annotations

import re

import pytest

from tasks.launch import LaunchError, spawn
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
    from tasks.launch import LaunchTimeout, RankInputError

    with pytest.raises(LaunchTimeout, match=r"timed out after 2 s; expected it to finish within timeout=2 s") as err:
        spawn(launch_fns.sleep_rank, 1, 60.0, backend=None, timeout=2)
    assert not isinstance(err.value, InputError) and isinstance(err.value, LaunchError)
    with pytest.raises(RankInputError, match=r"rank 0: InputError: shard\.json: missing; expected") as err:
        spawn(launch_fns.bad_input_on_rank, 1, 0, backend=None, timeout=120)
    assert isinstance(err.value, InputError) and "Traceback" not in str(err.value)
    with pytest.raises(LaunchError) as err:
        spawn(launch_fns.fail_on_rank, 1, 0, backend=None, timeout=120)
    assert not isinstance(err.value, InputError) and "Traceback" in str(err.value)
