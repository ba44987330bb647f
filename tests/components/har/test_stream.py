"""The real-time runtime's accounting, on a synthetic clock."""
from __future__ import annotations

import numpy as np
import pytest

from components.base import ConfigError, InputError
from components.har.stream import HarPipeline, SimClock, main, run_stream


def _costed(clock: SimClock, costs):
    """A step that 'works' costs[i] seconds on the i-th frame it processes and returns i."""
    seen = []

    def step(frame):
        clock.advance(costs[len(seen)] if len(seen) < len(costs) else costs[-1])
        seen.append(int(frame[0, 0, 0]))
        return None
    return step, seen


def _frames(n):
    return [np.full((4, 4, 3), i, np.uint8) for i in range(n)]


def test_fast_pipeline_keeps_up():
    clock = SimClock()
    step, seen = _costed(clock, [0.01])
    rep = run_stream(_frames(20), step, fps=10, clock=clock)
    assert seen == list(range(20))
    assert rep.frames_processed == 20 and rep.frames_dropped == 0 and rep.deadline_misses == 0
    assert rep.latency_ms_p50 == pytest.approx(10.0) and rep.latency_ms_p99 == pytest.approx(10.0)
    assert rep.achieved_fps == pytest.approx(20 / 1.91)         # last frame done at 1.9 s + 10 ms
    assert rep.capacity_fps == pytest.approx(100.0)


def test_a_slow_frame_queues_the_next_ones():
    # frame 0 takes 250 ms at 10 fps: frames 1 and 2 wait in the queue (160 and 70 ms latency)
    clock = SimClock()
    step, seen = _costed(clock, [0.25, 0.01])
    rep = run_stream(_frames(6), step, fps=10, clock=clock, queue_size=2)
    assert seen == [0, 1, 2, 3, 4, 5]
    assert rep.latencies_ms == pytest.approx([250, 160, 70, 10, 10, 10])
    assert rep.deadline_misses == 2 and rep.frames_dropped == 0
    assert rep.achieved_fps == pytest.approx(6 / 0.51)


def test_a_full_buffer_drops_the_oldest_frame():
    clock = SimClock()
    step, seen = _costed(clock, [0.25, 0.01])
    rep = run_stream(_frames(6), step, fps=10, clock=clock, queue_size=1)
    assert seen == [0, 2, 3, 4, 5]                      # frame 1 was overwritten while frame 0 ran
    assert rep.frames_in == 6 and rep.frames_dropped == 1 and rep.frames_processed == 5
    assert rep.latencies_ms == pytest.approx([250, 60, 10, 10, 10])
    assert rep.deadline_misses == 1
    assert rep.summary()["drop_rate"] == pytest.approx(1 / 6)


def test_custom_deadline_and_frame_limit():
    clock = SimClock()
    step, _ = _costed(clock, [0.02])
    rep = run_stream(_frames(50), step, fps=30, clock=clock, deadline_ms=15, max_frames=12)
    assert rep.frames_processed == 12 and rep.deadline_misses == 12
    with pytest.raises(ConfigError, match="fps=0"):
        run_stream(_frames(2), step, fps=0, clock=clock)


def test_pipeline_predicts_once_per_chunk_over_a_bounded_window():
    calls = []

    def head(x, valid):
        calls.append((x.copy(), valid.copy()))
        return int(valid.sum())

    pipe = HarPipeline(clip_len=3, window=2, size=(4, 4), rgb=lambda f: np.array([f.mean()]),
                       motion=lambda c: np.array([float(len(c))]), head=head)
    outs = [pipe(f) for f in _frames(9)]
    assert outs == [None, None, 1, None, None, 2, None, None, 2]
    x, valid = calls[-1]
    assert x.tolist() == [[4.0, 3.0], [7.0, 3.0]]             # centre frames 4 and 7, then motion
    with pytest.raises(InputError, match="expected 4x4x3"):
        pipe(np.zeros((8, 8, 3), np.uint8))


def test_cli_reports_missing_models_and_videos(tmp_path, capsys):
    assert main(["--video", str(tmp_path / "clip.mp4"), "--models", str(tmp_path)]) == 2
    assert "model file not found" in capsys.readouterr().err
    assert main(["--generate", "1", "--source", "raft", "--models", str(tmp_path)]) == 2
    assert "--source 'raft'" in capsys.readouterr().err
