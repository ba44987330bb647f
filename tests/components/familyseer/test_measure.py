"""The shared builder replaces its worker processes only between tuning runs, never inside a build call
(new workers importing TVM would be timed as part of whichever run crossed the count). Checked with a
fake process pool: no TVM build runs."""
from __future__ import annotations

from types import SimpleNamespace

import pytest


@pytest.fixture
def pools(monkeypatch):
    """Every process pool the builder starts (fakes that 'build' each input into an artifact path)."""
    from tvm.support import popen_pool

    started = []

    class FakePool:
        def __init__(self, max_workers, timeout=None, initializer=None):
            self.max_workers, self.calls, self.closed = max_workers, 0, False
            started.append(self)

        def map_with_error_catching(self, fn, items):
            assert not self.closed
            items = list(items)
            self.calls += len(items)
            return [SimpleNamespace(status=popen_pool.StatusKind.COMPLETE, value=f"/tmp/artifact{i}")
                    for i in range(len(items))]

        def shutdown(self):
            self.closed = True

    monkeypatch.setattr(popen_pool, "PopenPoolExecutor", FakePool)
    return started


def test_the_builder_replaces_its_workers_between_runs_only(pools):
    import tvm
    from tvm.s_tir.meta_schedule.builder import BuilderInput

    from components.familyseer.measure import Measurer, make_builder

    builder = make_builder(2, 30.0, recycle_after=4)
    builder.warm_up()
    assert len(pools) == 1 and pools[0].calls == 2          # one warm-up call per worker
    batch = [BuilderInput(tvm.IRModule(), tvm.target.Target("llvm"))] * 3
    for _ in range(3):                                       # 9 builds in one run, past recycle_after=4
        assert [r.artifact_path for r in builder.build(batch)] == [f"/tmp/artifact{i}" for i in range(3)]
    assert len(pools) == 1 and not pools[0].closed           # never inside a build call (a run's timed region)
    assert builder.recycle_due

    measurer = Measurer.__new__(Measurer)                    # its builder only: no runner process
    measurer.builder = builder
    assert measurer.between_runs() is True                   # before the next run starts its clock
    assert len(pools) == 2 and pools[0].closed and pools[1].calls == 2   # new workers, warmed up
    assert measurer.between_runs() is False and len(pools) == 2          # not due again yet
    builder.build(batch)
    assert measurer.between_runs() is False                  # 3 builds < 4
    builder.build(batch)
    assert measurer.between_runs() is True and len(pools) == 3 and builder.recycled == 2


def test_a_fresh_or_closed_builder_is_not_due(pools):
    from components.familyseer.measure import make_builder

    builder = make_builder(1, 30.0, recycle_after=1)
    assert not builder.recycle_due and builder.between_runs() is False and not pools   # nothing started
    builder.warm_up()
    builder.close()
    assert not builder.recycle_due and builder.between_runs() is False and len(pools) == 1
