"""The external-load sampler counts other processes' runnable tasks, not its own process tree."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from components.januspipe.loadmeter import ExternalLoadSampler


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="needs Linux /proc")
def test_sampler_reports_a_nonnegative_mean_over_windows():
    with ExternalLoadSampler(interval_s=0.01) as s:
        t0 = time.time()
        time.sleep(0.2)
        t1 = time.time()
    assert s.samples, "no samples taken"
    m = s.mean(t0, t1)
    assert m is not None and m >= 0.0
    assert s.mean() is not None
    # a window between two samples falls back to the nearest sample
    assert s.mean(t0 + 1e-6, t0 + 2e-6) is not None


def test_without_samples_the_mean_is_none():
    assert ExternalLoadSampler().mean() is None
