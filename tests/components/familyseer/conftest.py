"""Shared fixtures: a tiny zoo (the three-layer MLP: one 'matmul' family of three tasks)."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("TVM_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def mlp_zoo(tmp_path_factory):
    from components.familyseer.zoo import export_model

    zoo = tmp_path_factory.mktemp("zoo")
    export_model("mlp_tiny", zoo / "mlp_tiny", seed=0, target_cores=2, complex_only=True)
    return zoo


def tiny_tune_config(**overrides):
    """A few dozen trials: enough for the warm-up round, a gradient pick and a foresee round."""
    from components.familyseer.config import TuneConfig

    base = dict(trials_per_task=4, trials_per_round=2, foresee_trials=1, foresee_random=0, repeat=2,
                min_repeat_ms=1, replay=True,
                search={"population_size": 8, "init_min_unmeasured": 4, "genetic_num_iters": 1})
    base.update(overrides)
    return TuneConfig(**base)
