"""The real-vs-simulated comparison the pipeline stage and ``benchmarks/januspipe/real_vs_sim.py`` share."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from components.januspipe.config import PipelineConfig
from components.januspipe.runtime import exactness_error, start_fork_server
from components.januspipe.validation import cores, exactness_runs, real_vs_simulated

from tests.components.januspipe.test_four_phase import CFG, FORCES, UNIT, emt_clusters

ROOT = Path(__file__).resolve().parents[3]


def test_real_runs_are_compared_with_their_simulation_and_the_exactness_check_rides_along():
    """Real gloo ranks at 2 processes: the linear placement (1F1B-4) and both V-fold families, SymFold
    (phase-major order, fixed in-flight cap) and WaveK (sweeps, budget admission). Each action list
    the timed runs run is also run in float64 and equals single-process double backward."""
    structures = emt_clusters(4, seed=3)
    pc = PipelineConfig(num_blocks=4, process_counts=[2], schedules=["1f1b4", "hanayo4", "symfold", "wavek"],
                        microbatches_per_device=2, warmup=1, steps=1)
    specs, labels, reference = exactness_runs(pc, 2, UNIT, CFG, structures, FORCES, seed=0)
    assert len(specs) == len(labels) == 4 and all(s.dtype == "float64" and s.device == "cpu" for s in specs)
    # SymFold at 2 devices: the smallest V-fold, 4 virtual stages (d and 2D-1-d), one block each
    symfold = specs[2].schedule
    assert symfold.name == "symfold" and symfold.placement.stage_device == (0, 1, 1, 0), labels
    assert symfold.actions != specs[3].schedule.actions   # not WaveK's lists under another name
    start_fork_server()
    rows, timelines, extra, cpu_s = real_vs_simulated(2, pc, UNIT, CFG, structures, FORCES, seed=0, n_cores=2,
                                                      extra_specs=specs)
    assert [r["schedule"] for r in rows] == ["1f1b4", "hanayo4", "symfold", "wavek"] and cpu_s > 0
    for r in rows:
        assert r["processes"] == 2 and r["microbatches"] == 4 and r["measured_makespan_s"] > 0
        assert math.isfinite(r["sim_error"]) and r["sim_makespan_s"] > 0
    # 4 blocks hold Hanayo-4 with one wave (2 x 2 stages) but not two (4 x 2 = 8): its two-wave candidates
    # are not tuned, and the row says so (the grid used to shrink silently); no other family loses one
    hanayo = rows[1]
    assert "waves=1" in hanayo["params"] and hanayo["grid_candidates_dropped"] == 5
    assert hanayo["grid_dropped"].split("; ") == ["cap=1,waves=2", "cap=2,waves=2", "cap=3,waves=2", "cap=4,waves=2",
                                                  "admission=budget,waves=2"]
    assert all(r["grid_candidates_dropped"] == 0 and r["grid_dropped"] == "" for r in rows if r is not hanayo)
    assert set(timelines) == {"1f1b4_2p", "hanayo4_2p", "symfold_2p", "wavek_2p"}
    assert all(t["real"] and t["sim"] for t in timelines.values())
    assert [r["params"] for r in rows] == labels   # the action lists checked are the ones timed
    assert len(extra) == len(specs) and all(len(per_rank) == 2 for per_rank in extra)
    for label, per_rank in zip(labels, extra):
        assert exactness_error(per_rank, reference) <= 1e-9, label


def test_a_run_needing_more_structures_than_given_is_refused():
    from components.base import InputError

    pc = PipelineConfig(num_blocks=4, schedules=["1f1b4"], microbatches_per_device=4)
    with pytest.raises(InputError, match="needs 8"):
        real_vs_simulated(2, pc, UNIT, CFG, emt_clusters(2), FORCES, seed=0, n_cores=cores())


@pytest.mark.parametrize("args, message", [(["--processes", "0"], "--processes"),
                                           (["--set", "pipeline.num_blocks=0"], "num_blocks")])
def test_the_benchmark_refuses_bad_arguments_before_running(args, message, tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "januspipe" / "real_vs_sim.py"), *args,
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr and not out.exists()
