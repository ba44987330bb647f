"""The januspipe section's cross-key checks: every simulated schedule's whole tuning grid fits the
simulated model, the headline device count can hold every compared schedule, and the committed
parameters stay valid."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from components.base import ConfigError, resolve_section
from components.januspipe.config import JanuspipeConfig
from components.januspipe.schedules import SCHEDULE_NAMES, dropped_candidates, family_grid

PARAMS = yaml.safe_load((Path(__file__).resolve().parents[3] / "params.yaml").read_text())["januspipe"]


def _resolve(**overrides) -> JanuspipeConfig:
    return resolve_section(JanuspipeConfig, PARAMS, overrides)


@pytest.mark.parametrize("simulate,need", [
    # 64 blocks at 32 devices: the 2 x D V-fold check passed, and Hanayo-4's two-wave candidates
    # (4 x 32 = 128 stages) silently left the baseline's grid at 32 devices (half of it)
    ({"num_blocks": 64}, 128),
    ({"devices": [2, 4], "headline_devices": 4, "num_blocks": 15, "timeline_devices": 2}, 16),
    ({"devices": [2, 4], "headline_devices": 4, "num_blocks": 16, "timeline_devices": 8}, 32),   # the timelines too
])
def test_simulate_num_blocks_must_hold_hanayo4_with_two_waves(simulate, need):
    with pytest.raises(ConfigError, match=rf"simulate.num_blocks={simulate['num_blocks']} is smaller than the "
                                          rf"{need} stages of Hanayo-4 with two waves.*expected simulate.num_blocks "
                                          rf">= {need}"):
        _resolve(simulate=simulate)


@pytest.mark.parametrize("profile", ["quick", "full"])
def test_committed_parameters_validate_and_simulate_every_candidate(profile):
    """params.yaml (and the full profile over it) is valid, and no simulated point loses a candidate."""
    cfg = _resolve(profile=profile)
    sc = cfg.simulate
    for devices in {*sc.devices, sc.timeline_devices}:
        m = sc.microbatches_per_device * devices
        for name in SCHEDULE_NAMES:
            assert dropped_candidates(name, devices, m, sc.num_blocks) == [], (name, devices)
        assert {p["waves"] for p in family_grid("hanayo4", devices, m, max_stages=sc.num_blocks)} == {1, 2}


def test_the_quick_real_runs_stay_valid_and_only_hanayo4_two_waves_drop_at_4_processes():
    """The quick real runs (8 blocks at 2 and 4 processes) are not refused: at 4 processes the model
    holds Hanayo-4's two-wave candidates (16 stages) no longer; the run records them (validation.py)."""
    pc = _resolve().pipeline
    assert (pc.num_blocks, pc.process_counts) == (8, [2, 4])
    for procs in pc.process_counts:
        m = pc.microbatches_per_device * procs
        dropped = {name: dropped_candidates(name, procs, m, pc.num_blocks) for name in pc.schedules}
        assert all(not d for name, d in dropped.items() if name != "hanayo4")
        assert (procs == 4) == bool(dropped["hanayo4"]) and all(p["waves"] == 2 for p in dropped["hanayo4"])


def test_headline_devices_of_one_is_refused():
    """At one device the WaveK-like schedule has no candidate within 1F1B-4's memory: the simulate stage
    then died on a bare KeyError 'wavek' after the whole sweep."""
    with pytest.raises(ConfigError, match=r"januspipe.simulate.headline_devices: got 1; expected input should be "
                                          r"greater than or equal to 2"):
        _resolve(simulate={"devices": [1, 2], "headline_devices": 1})
    assert _resolve(simulate={"devices": [2, 4], "headline_devices": 2}).simulate.headline_devices == 2
