"""The har section of params.yaml is the config model's defaults; bad values are named."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from components.base import ConfigError, resolve_section
from components.har.config import HarConfig

REPO = Path(__file__).resolve().parents[3]


def test_params_yaml_repeats_the_defaults():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert params["har"] == HarConfig().model_dump(mode="json")


def test_full_profile_validates():
    cfg = resolve_section(HarConfig, {"profile": "full"})
    assert cfg.data.height > HarConfig().data.height


@pytest.mark.parametrize("override, needle", [
    ({"data": {"height": 50}}, "har.data.height: got 50"),
    ({"data": {"classes": ["walk_left", "moonwalk"]}}, "har.data.classes"),
    ({"data": {"frames_per_clip": 25}}, "multiple of opticalflow.clip_len"),
    ({"opticalflow": {"tvl1": {"lambda": -1}}}, "har.opticalflow.tvl1.lambda"),
    ({"imfe": {"downsample": 2}}, "har.imfe.downsample: got 2"),
    ({"temporal": {"d_model": 30, "heads": 4}}, "divisible by heads"),
    ({"evaluate": {"sources": ["raft"]}}, "har.evaluate.sources"),
    ({"data": {"source": "ucf101"}}, "ucf101_root"),
    ({"imfe": {"device": "gpu"}}, "har.imfe.device: got 'gpu'"),
    ({"imfe": {"distill_clips_per_class": -1}}, "har.imfe.distill_clips_per_class: got -1"),
    ({"data": {"source": "ucf101", "ucf101_root": "/videos"}, "imfe": {"distill_clips_per_class": 4}},
     "imfe.distill_clips_per_class=4 renders a synthetic distillation set"),
    ({"typo": 1}, "har.typo: unknown parameter"),
    ({"evaluate": {"seeds": [0, 0, 1]}}, "evaluate.seeds=[0, 0, 1]: expected distinct values"),
    ({"evaluate": {"sources": ["tvl1", "tvl1", "imfe"]}}, "evaluate.sources=['tvl1', 'tvl1', 'imfe']: expected distinct"),
    ({"temporal": {"stream_passes": -1}}, "har.temporal.stream_passes: got -1"),
    ({"opticalflow": {"tvl1": {"epsilon": float("inf")}}},
     "har.opticalflow.tvl1.epsilon: got inf; expected input should be a finite number"),
    ({"opticalflow": {"tvl1": {"epsilon": 5}}}, "har.opticalflow.tvl1.epsilon: got 5"),
    ({"opticalflow": {"tvl1": {"lambda": float("inf")}}}, "har.opticalflow.tvl1.lambda: got inf"),
    ({"opticalflow": {"tvl1": {"lambda": 1e6}}}, "har.opticalflow.tvl1.lambda: got 1000000.0; expected input should "
                                                 "be less than or equal to 10"),
    ({"evaluate": {"stream_fps": 1e-300}}, "har.evaluate.stream_fps: got 1e-300; expected input should be greater "
                                          "than or equal to 0.1"),
    ({"evaluate": {"stream_fps": float("nan")}}, "har.evaluate.stream_fps: got nan"),
    # a 0 or negative block count used to build one block anyway (imfe._resnet_layer), a 0 width failed in torch
    ({"imfe": {"head_blocks": [0, 1]}}, "har.imfe.head_blocks.0: got 0; expected input should be greater than or "
                                        "equal to 1"),
    ({"imfe": {"head_blocks": [1, -2]}}, "har.imfe.head_blocks.1: got -2"),
    ({"streams": {"widths": [0, 32, 64]}}, "har.streams.widths.0: got 0; expected input should be greater than or "
                                           "equal to 1"),
    ({"imfe": {"encoder_widths": [16, 16, -24, 32, 32]}}, "har.imfe.encoder_widths.2: got -24"),
    ({"imfe": {"motion_widths": [32, 0, 32]}}, "har.imfe.motion_widths.1: got 0"),
])
def test_bad_parameters_are_named(override, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        resolve_section(HarConfig, {}, override)


def test_a_teacher_feature_imfe_cannot_regress_is_refused_before_any_training():
    """streams.widths[-1] is the teacher's feature dimension and IMFE's output: ImfeNet needs a multiple of 8.
    [16, 32, 36] was accepted, the teacher trained for minutes, then ImfeNet raised a bare ValueError."""
    with pytest.raises(ConfigError) as err:
        resolve_section(HarConfig, {}, {"streams": {"widths": [16, 32, 36]}})
    assert "har: streams.widths[-1]=36 (streams.widths=[16, 32, 36]): expected a multiple of 8" in str(err.value)
    cfg = resolve_section(HarConfig, {}, {"streams": {"widths": [16, 32, 40]}})
    from components.har.imfe import ImfeNet

    ImfeNet(cfg.data.height, cfg.data.width, cfg.opticalflow.clip_len, cfg.streams.widths[-1], cfg.imfe)


def test_params_yaml_and_the_full_profile_pass_the_width_checks():
    from tasks.params import load_config

    for overrides in ({}, {"profile": "full"}):
        cfg = load_config(HarConfig, overrides)
        assert cfg.streams.widths[-1] % 8 == 0 and min(cfg.imfe.head_blocks) >= 1


def test_inf_from_the_command_line_is_named():
    """``--set opticalflow.tvl1.epsilon=.inf`` (YAML's infinity) passed before: TV-L1 would never stop early."""
    from components.base import parse_override

    with pytest.raises(ConfigError, match=re.escape("har.opticalflow.tvl1.epsilon: got inf")):
        resolve_section(HarConfig, {}, parse_override("opticalflow.tvl1.epsilon=.inf"))
