"""The familyseer section of params.yaml is the config model's defaults; bad values are named."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from components.base import ConfigError, resolve_section
from components.familyseer.config import FamilySeerConfig

REPO = Path(__file__).resolve().parents[3]


def test_params_yaml_repeats_the_defaults():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert params["familyseer"] == FamilySeerConfig().model_dump(mode="json")


def test_full_profile_validates_and_is_paper_scale():
    cfg = resolve_section(FamilySeerConfig, {"profile": "full"})
    assert len(cfg.zoo.models) >= 4 and len(cfg.tune.seeds) >= 3
    assert (cfg.tune.trials_per_round, cfg.tune.foresee_trials, cfg.tune.foresee_random) == (64, 16, 3)
    assert {"familyseer_hash", "familyseer_ind", "round_robin", "gradient"} <= set(cfg.tune.policies)


@pytest.mark.parametrize("override, needle", [
    ({"zoo": {"models": ["vgg"]}}, "familyseer.zoo.models.0: got 'vgg'"),
    ({"zoo": {"models": []}}, "familyseer.zoo.models"),
    ({"tune": {"policies": ["ansor"]}}, "familyseer.tune.policies.0: got 'ansor'"),
    ({"tune": {"trials_per_task": 4, "trials_per_round": 8, "foresee_trials": 2}}, "trials_per_task=4 < trials_per_round=8"),
    ({"tune": {"seeds": [0, 0]}}, "seeds must be unique"),
    ({"tune": {"foresee_random": 5, "foresee_trials": 4}}, "foresee_random=5 must be <= foresee_trials=4"),
    ({"tune": {"foresee_trials": 16, "trials_per_round": 8}}, "foresee_trials=16 must be <="),
    ({"tune": {"trials_per_round": 0}}, "familyseer.tune.trials_per_round: got 0"),
    ({"tune": {"search": {"population_size": 16, "init_min_unmeasured": 32}}}, "init_min_unmeasured=32"),
    ({"tune": {"policies": ["familyseer"]}}, "evaluate.baseline='gradient' is not among tune.policies"),
    ({"tune": {"budget": 3}}, "familyseer.tune.budget: unknown parameter"),
    ({"evaluate": {"method": "gradient"}}, "evaluate.baseline='gradient' equals evaluate.method"),
    ({"tune": {"trials_per_task": 8}}, "trials_per_task=8 == trials_per_round=8 with foresee_trials=4"),
    # a run is tuned with seed x 1000 + its tune seed, which np.random.seed takes only below 2**32
    ({"seed": 4294968}, "seed=4294968 and tune.seeds=[0, 1, 2] give the run seed seed x 1000 "),
    ({"tune": {"seeds": [0, 2 ** 32]}}, "seed=0 and tune.seeds=[0, 4294967296] give the run seed"),
    ({"seed": 4294967, "tune": {"seeds": [296]}}, "max(tune.seeds) = 4294967296; expected seed x 1000 "),
])
def test_bad_parameters_are_named(override, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        resolve_section(FamilySeerConfig, {}, override)


def test_a_budget_without_room_for_foresee_is_fine_when_no_policy_has_foresee():
    """trials_per_task == trials_per_round is rejected only where a foresee round was asked for."""
    for override in ({"tune": {"trials_per_task": 8, "foresee_trials": 0}},
                     {"tune": {"trials_per_task": 8, "policies": ["gradient", "familyseer_no_foresee"]},
                      "evaluate": {"method": "familyseer_no_foresee"}}):
        cfg = resolve_section(FamilySeerConfig, {}, override)
        assert cfg.tune.trials_per_task == cfg.tune.trials_per_round == 8


def test_foresee_policies_match_the_tuning_policy_table():
    from components.familyseer.config import FORESEE_POLICIES
    from components.familyseer.tuning import POLICIES

    assert FORESEE_POLICIES == {name for name, spec in POLICIES.items() if spec.foresee}


def test_quick_profile_searches_single_threaded():
    """One search thread: a seed fixes the search's picks (test_tuning: repeats and policies share
    their warm-up schedules); the full profile trades that for speed, as its description says."""
    quick = FamilySeerConfig()
    full = resolve_section(FamilySeerConfig, {"profile": "full"})
    assert quick.tune.search_threads == 1 and full.tune.search_threads > 1
    assert "not reproducible" in type(quick.tune).model_fields["search_threads"].description


def test_foresee_random_is_not_capped_by_the_main_rounds_eps_greedy_share():
    """A foresee round runs a search of its own whose eps_greedy returns exactly foresee_random random picks
    (scheduler.foresee_eps_greedy), so int(trials_per_round x eps_greedy) (0 at a round of 8) is no cap;
    foresee_trials still is."""
    from components.familyseer.scheduler import foresee_eps_greedy

    for n_rand in (1, 4):
        cfg = resolve_section(FamilySeerConfig, {}, {"tune": {"foresee_random": n_rand}})
        assert int(cfg.tune.trials_per_round * cfg.tune.search.eps_greedy) == 0 < cfg.tune.foresee_random == n_rand
        assert int(cfg.tune.foresee_trials * foresee_eps_greedy(n_rand, cfg.tune.foresee_trials)) == n_rand
    with pytest.raises(ConfigError, match="foresee_random=5 must be <= foresee_trials=4"):
        resolve_section(FamilySeerConfig, {}, {"tune": {"foresee_random": 5}})


def test_the_largest_run_seed_numpy_takes_is_accepted():
    import numpy as np

    cfg = resolve_section(FamilySeerConfig, {}, {"seed": 4294967, "tune": {"seeds": [0, 295]}})
    np.random.seed(cfg.seed * 1000 + max(cfg.tune.seeds))   # 2**32 - 1
