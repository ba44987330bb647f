"""The januspipe flow end to end on a tiny config under the Prefect test harness (real 2-process
gloo pipelines included), and bad input through the CLI."""
from __future__ import annotations

import json
import math

import pytest

from tests.conftest import mlflow_client

TINY = {
    "data": {"systems": ["Cu", "CuAu"], "temperatures_K": [600.0], "supercell": 1, "frames_per_trajectory": 8,
             "steps_between_frames": 2},
    "model": {"hidden_dim": 8, "num_blocks": 2, "cutoff": 3.0, "three_body_cutoff": 2.7, "num_radial": 4,
              "max_angular": 2},
    "train": {"epochs": 1, "batch_size": 4},
    "profiling": {"reps": 1, "microbatches": 1, "p2p_sizes_bytes": [8, 65536]},
    "pipeline": {"num_blocks": 4, "process_counts": [2], "microbatches_per_device": 1, "steps": 1},
    "simulate": {"devices": [2, 4], "num_blocks": 16, "headline_devices": 4, "timeline_devices": 2},
}


def _numbers(d):
    for v in d.values():
        if isinstance(v, dict):
            yield from _numbers(v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            yield v


@pytest.mark.slow
def test_januspipe_flow_end_to_end(prefect_harness, paperworks_root):
    from components.januspipe.config import JanuspipeConfig
    from flows.januspipe import STAGES, januspipe

    januspipe(config=JanuspipeConfig(**TINY), stages=list(STAGES))
    root = paperworks_root
    assert {p.name for p in (root / "data" / "mlip").iterdir()} == {"train.extxyz", "val.extxyz", "test.extxyz",
                                                                   "manifest.json"}
    m = json.loads((root / "metrics" / "januspipe.json").read_text())
    assert m["paper"] == "januspipe" and m["profile"] == "quick"
    assert all(math.isfinite(v) for v in _numbers(m))
    assert m["exactness"]["max_rel_grad_error"] <= 1e-9
    assert set(m["throughput"]) == {"gpipe4", "1f1b4", "hanayo4", "symfold", "wavek"}
    assert m["headline"]["memory_ratio_vs_1f1b4"] <= 1.0 + 1e-9   # the budget holds by construction
    assert {k.split("_")[0] for k in m["real_runs"]} == {"gpipe4", "1f1b4", "hanayo4", "symfold", "wavek"}
    assert m["accuracy"]["fd_force_max_abs_err_eV_per_A"] < 1e-5
    plots = {p.name for p in (root / "plots" / "januspipe").iterdir()}
    assert {"throughput_memory.png", "real_vs_sim.png", "timeline_sim_wavek.png",
            "timeline_real_wavek_2p.png"} <= plots
    client = mlflow_client(root)
    exp = client.get_experiment_by_name("januspipe")
    assert "JanusPipe" in exp.tags.get("mlflow.note.content", "")
    runs = client.search_runs([exp.experiment_id])
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    assert "speedup_vs_1f1b4" in parent[0].data.metrics
    names = {r.data.tags.get("mlflow.runName") for r in runs}
    assert {"reference_mlip", "per_element_mean_baseline", "real_wavek_2p"} <= names


def test_januspipe_bad_input_is_a_clear_error(paperworks_root, capsys):
    from flows.__main__ import main

    # more pipeline stages than blocks: rejected before anything runs
    assert main(["januspipe", "pipeline", "--set", "pipeline.num_blocks=2"]) == 2
    err = capsys.readouterr().err
    assert "pipeline.num_blocks=2" in err and "expected num_blocks >= 8" in err
    # malformed data file: the stage names the file
    data = paperworks_root / "data" / "mlip"
    data.mkdir(parents=True)
    for split in ("train", "val", "test"):
        (data / f"{split}.extxyz").write_text("2\nnot an extxyz header\nCu 0 0\n")
    from components.base import InputError
    from components.mlip.data import load_split

    with pytest.raises(InputError, match="train.extxyz: cannot be read"):
        load_split(data, "train")


def test_a_schedule_without_a_fitting_candidate_at_the_headline_is_named(paperworks_root, capsys):
    """At one device no WaveK-like candidate fits 1F1B-4's memory (two stages per device hold their
    per-stage activations twice); the simulate stage's throughput ratios then raised a bare KeyError
    'wavek'. The config now refuses headline_devices=1, and the stage names schedule and budget."""
    import dataclasses

    from components.base import InputError
    from components.januspipe.schedules import SCHEDULE_NAMES
    from components.januspipe.simulator import canonical_1f1b_budget, tune
    from flows.__main__ import main
    from flows.januspipe import headline_best
    from tests.components.januspipe.test_four_phase import UNIT

    assert main(["januspipe", "simulate", "--set", "simulate.devices=[1, 2]", "--set",
                 "simulate.headline_devices=1"]) == 2
    assert "januspipe.simulate.headline_devices: got 1; expected input should be greater than or equal to 2" \
        in capsys.readouterr().err
    costs = dataclasses.replace(UNIT, stage_act_forward_bytes=5.0)
    budget = canonical_1f1b_budget(1, 2, costs, 16)
    best = {name: t for name in SCHEDULE_NAMES
            if (t := tune(name, 1, 2, costs, 16, None if name == "gpipe4" else budget)).best is not None}
    assert "wavek" not in best and "1f1b4" in best
    assert headline_best(best, "1f1b4", budget, 1) is best["1f1b4"].best
    with pytest.raises(InputError, match=rf"schedule 'wavek' has no candidate within the memory budget of "
                                         rf"{budget / 2**20:.3f} MiB \({budget:.0f} bytes, 1F1B-4's peak\) at "
                                         rf"simulate.headline_devices=1"):
        headline_best(best, "wavek", budget, 1)
