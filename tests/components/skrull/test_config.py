"""The skrull section's validation: errors name the parameter at load time, not minutes later."""
import pytest
from pydantic import ValidationError

from components.skrull.config import SkrullConfig


@pytest.mark.parametrize("section,values,loc", [
    ("batch_sizes", [8, 0], "sensitivity.batch_sizes.1"),
    ("batch_sizes", [-4], "sensitivity.batch_sizes.0"),
    ("bucket_k_tokens", [0, 8], "sensitivity.bucket_k_tokens.0"),
    ("bucket_k_tokens", [16, -2], "sensitivity.bucket_k_tokens.1"),
])
def test_sensitivity_sweeps_need_positive_values(section, values, loc):
    with pytest.raises(ValidationError, match=loc.replace(".", r"\.") + r"\n.*greater than or equal to 1"):
        SkrullConfig(sensitivity={section: values})


def test_override_for_a_model_or_dataset_not_simulated_is_rejected():
    setting = {"dp": 2, "cp": 16, "batch_size": 40}
    with pytest.raises(ValidationError, match=r"override key 'qwen2.5-7b/chatqa2' names a model or dataset that "
                                              r"is not simulated.*models=\['qwen2.5-0.5b'\]"):
        SkrullConfig(paper_sim={"models": ["qwen2.5-0.5b"], "overrides": {"qwen2.5-7b/chatqa2": setting}})
    with pytest.raises(ValidationError, match=r"override key 'qwen2.5-0.5b/corpus'.*datasets=\['wikipedia'\]"):
        SkrullConfig(paper_sim={"datasets": ["wikipedia"], "overrides": {"qwen2.5-0.5b/corpus": setting}})
    with pytest.raises(ValidationError, match=r"override key 'llama/wikipedia': expected '<model>/<dataset>' "
                                              r"with a model in \['qwen2.5-0.5b', 'qwen2.5-7b'\]"):
        SkrullConfig(paper_sim={"overrides": {"llama/wikipedia": setting}})
    # given explicitly and applicable: accepted; the default (the paper's 7B + ChatQA2 run) simply
    # does not apply to a run without that model
    SkrullConfig(paper_sim={"models": ["qwen2.5-7b"], "datasets": ["chatqa2"],
                            "overrides": {"qwen2.5-7b/chatqa2": setting}})
    SkrullConfig(paper_sim={"models": ["qwen2.5-0.5b"]})


def test_ilp_instances_need_a_sequence_per_dp_rank():
    with pytest.raises(ValidationError, match=r"sequences=3 < dp=4"):
        SkrullConfig(ilp={"dp": 4, "sequences": 3})
    with pytest.raises(ValidationError, match=r"ilp.sequences=2 < local_sim.setting.dp=4"):
        SkrullConfig(ilp={"sequences": 2, "dp": 1}, train={"dp": 4, "cp": 2},
                     local_sim={"setting": {"dp": 4, "cp": 2, "batch_size": 8}})
    SkrullConfig(ilp={"instances": 0, "dp": 4, "sequences": 2})          # no instances: nothing to check


def test_a_cp_degree_of_one_is_refused_at_load_time():
    """cp=1 used to be accepted: the profile stage then ran the whole compute profile, modelled the
    collectives as free (CommModel(0.0): infinite bandwidth) and failed writing cost_model.json."""
    from components.base import ConfigError, resolve_section

    one = {"profiling": {"cp": 1}, "train": {"cp": 1}, "local_sim": {"setting": {"dp": 1, "cp": 1, "batch_size": 8}}}
    with pytest.raises(ConfigError) as err:
        resolve_section(SkrullConfig, {}, one)
    assert "skrull.profiling.cp: got 1; expected input should be greater than or equal to 2" in str(err.value)
    assert "skrull.train.cp: got 1; expected input should be greater than or equal to 2" in str(err.value)
    assert SkrullConfig(**{k: {**v, "cp": 2} if k != "local_sim" else {"setting": {"dp": 1, "cp": 2, "batch_size": 8}}
                           for k, v in one.items()}).train.cp == 2



@pytest.mark.parametrize("profile", ["quick", "full"])
def test_params_yaml_validates_under_both_profiles(profile):
    """The committed skrull section (and profiles/full.yaml over it) stays valid under the bounds."""
    from pathlib import Path

    import yaml

    from components.base import resolve_section

    params = yaml.safe_load((Path(__file__).resolve().parents[3] / "params.yaml").read_text())
    cfg = resolve_section(SkrullConfig, params["skrull"], {"profile": profile})
    assert cfg.profiling.cp == cfg.train.cp >= 2
