"""Multi-process launch: results by rank, failures surface with the rank, collectives work on gloo."""
from __future__ import annotations

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
