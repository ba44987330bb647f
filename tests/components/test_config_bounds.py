"""Every paper's config rejects what used to pass and fail later: inf/NaN in any float, timeouts too long
to represent, bad list entries, bool seeds; cross-field errors print their reason, not the section."""
from __future__ import annotations

import importlib

import pytest

from components.base import MAX_TIMEOUT_S, ConfigError, deep_merge, parse_override, resolve_section
from flows import PAPERS


def _resolve(paper: str, *items: str):
    model = importlib.import_module(PAPERS[paper].module).CONFIG
    overrides: dict = {}
    for item in items:
        overrides = deep_merge(overrides, parse_override(item))
    return resolve_section(model, {}, overrides)


def _error(paper: str, *items: str) -> str:
    with pytest.raises(ConfigError) as err:
        _resolve(paper, *items)
    return str(err.value)


# float fields with only a lower bound: inf passed them all (an infinite timeout crashed in
# tasks/launch.py: timedelta(seconds=inf) -> OverflowError)
FLOATS = [
    ("skrull", "train.lr"), ("skrull", "train.weight_decay"), ("skrull", "train.grad_clip"), ("skrull", "train.timeout_s"),
    ("skrull", "paper_sim.achieved_tflops"), ("skrull", "profiling.activation_budget_mb"),
    ("skrull", "data.corpus.bpe_train_mb"), ("skrull", "ilp.time_limit_s"),
    ("januspipe", "pipeline.timeout_s"), ("januspipe", "train.max_minutes"), ("januspipe", "train.energy_weight"),
    ("familyseer", "tune.build_timeout_s"), ("familyseer", "tune.run_timeout_s"),
    ("vfda", "federation.round_timeout_s"), ("vfda", "simulation.cpus_per_client"),
]


@pytest.mark.parametrize("paper, key", FLOATS, ids=[f"{p}.{k}" for p, k in FLOATS])
@pytest.mark.parametrize("raw, shown", [(".inf", "inf"), (".nan", "nan")])
def test_inf_and_nan_are_rejected_in_every_float(paper, key, raw, shown):
    msg = _error(paper, f"{key}={raw}")
    assert f"{paper}.{key}: got {shown}; expected input should be a finite number" in msg


TIMEOUTS = [("skrull", "train.timeout_s"), ("skrull", "ilp.time_limit_s"), ("januspipe", "pipeline.timeout_s"),
            ("familyseer", "tune.build_timeout_s"), ("familyseer", "tune.run_timeout_s"),
            ("vfda", "federation.round_timeout_s")]


@pytest.mark.parametrize("paper, key", TIMEOUTS, ids=[f"{p}.{k}" for p, k in TIMEOUTS])
def test_timeouts_have_an_upper_bound(paper, key):
    msg = _error(paper, f"{key}=1e300")
    assert f"{paper}.{key}: got 1e+300; expected input should be less than or equal to 604800" in msg
    cfg = _resolve(paper, f"{key}={MAX_TIMEOUT_S}")                     # a week is still accepted
    section, field = key.rsplit(".", 1)
    assert getattr(getattr(cfg, section), field) == MAX_TIMEOUT_S


@pytest.mark.parametrize("paper, items, needle", [
    # januspipe / mlip data: NaN slipped through the split check; a negative temperature made Langevin write NaN
    ("januspipe", ["data.split=[0.5,0.5,.nan]"], "januspipe.data.split.2: got nan; expected input should be a finite number"),
    ("januspipe", ["data.split=[0.8,0.1,.inf]"], "januspipe.data.split.2: got inf"),
    ("januspipe", ["data.temperatures_K=[-300]"], "januspipe.data.temperatures_K.0: got -300; expected input should be "
                                                  "greater than 0"),
    ("januspipe", ["data.temperatures_K=[300, 0]"], "januspipe.data.temperatures_K.1: got 0; expected input should be "
                                                    "greater than 0"),
    ("januspipe", ["data.temperatures_K=[.nan]"], "januspipe.data.temperatures_K.0: got nan; expected input should be a "
                                                  "finite number"),
    ("januspipe", ["data.temperatures_K=[.inf]"], "januspipe.data.temperatures_K.0: got inf"),
    # list entries without per-entry checks
    ("har", ["evaluate.seeds=[-1]"], "har.evaluate.seeds.0: got -1; expected input should be greater than or equal to 0"),
    ("vfda", ["federation.seeds=[0, -1]"], "vfda.federation.seeds.1: got -1; expected input should be greater than or "
                                           "equal to 0"),
    ("familyseer", ["evaluate.torch_threads=[0]"], "familyseer.evaluate.torch_threads.0: got 0; expected input should "
                                                   "be greater than or equal to 1"),
    ("familyseer", ["evaluate.torch_threads=[1, -2]"], "familyseer.evaluate.torch_threads.1: got -2"),
    ("familyseer", ["tune.seeds=[-1]"], "familyseer.tune.seeds.0: got -1"),
    ("januspipe", ["simulate.devices=[0,32]"], "januspipe.simulate.devices.0: got 0; expected input should be greater "
                                               "than or equal to 1"),
    ("januspipe", ["simulate.extra_microbatch_factors=[0]"], "januspipe.simulate.extra_microbatch_factors.0: got 0"),
    # gloo ping-pong sizes: 0 or negative sizes and a 1 TB buffer reached the profiler's ranks
    ("januspipe", ["profiling.p2p_sizes_bytes=[0, 1024]"], "januspipe.profiling.p2p_sizes_bytes.0: got 0; expected "
                                                           "input should be greater than or equal to 1"),
    ("januspipe", ["profiling.p2p_sizes_bytes=[8, -8]"], "januspipe.profiling.p2p_sizes_bytes.1: got -8; expected "
                                                         "input should be greater than or equal to 1"),
    ("januspipe", ["profiling.p2p_sizes_bytes=[8, 1000000000000]"],
     "januspipe.profiling.p2p_sizes_bytes.1: got 1000000000000; expected input should be less than or equal to "
     "1073741824"),
    ("januspipe", ["profiling.p2p_sizes_bytes=[true, 8]"], "januspipe.profiling.p2p_sizes_bytes.0: got True; expected "
                                                           "input should be a valid integer"),
    # seeds are strict integers: true is not the seed 1
    ("har", ["seed=true"], "har.seed: got True; expected input should be a valid integer"),
    ("har", ["evaluate.seeds=[0, true]"], "har.evaluate.seeds.1: got True; expected input should be a valid integer"),
    ("vfda", ["federation.seeds=[true]"], "vfda.federation.seeds.0: got True"),
    ("familyseer", ["tune.seeds=[0, 1.5]"], "familyseer.tune.seeds.1: got 1.5"),
    ("skrull", ["seed=true"], "skrull.seed: got True"),
])
def test_bad_values_are_named(paper, items, needle):
    assert needle in _error(paper, *items)


@pytest.mark.parametrize("paper, items, line", [
    ("januspipe", ["simulate.devices=[2]"], "januspipe: simulate.headline_devices=32 is not one of simulate.devices=[2]"),
    ("har", ["data.frames_per_clip=20"], "har: data.frames_per_clip=20: expected a multiple of opticalflow.clip_len=6"),
    ("har", ["temporal.heads=5"], "har.temporal: d_model=64: expected a width divisible by heads=5"),
    ("har", ["data.source=ucf101"], "har.data: source='ucf101' with ucf101_root=None: expected ucf101_root set to the "
                                    "dataset's folder"),
    ("skrull", ["train.cp=3"], "skrull: profiling.cp=2 differs from train.cp=3; the CPU cost model must be profiled "
                               "for the CP degree it schedules"),
    ("familyseer", ["tune.seeds=[0,0]"], "familyseer.tune: seeds must be unique non-negative integers, got [0, 0]"),
    ("januspipe", ["pipeline.backend=nccl"], "januspipe.pipeline: pipeline.backend='nccl' with process_counts=[2, 4]"),
    ("vfda", ["simulation.cpus_per_client=4"], "vfda.simulation: simulation.cpus_per_client=4 is more than "
                                               "simulation.num_cpus=2"),
    ("januspipe", ["profiling.p2p_sizes_bytes=[1024, 8, 1024]"], "januspipe.profiling: profiling.p2p_sizes_bytes="
                                                                 "[1024, 8, 1024]: expected distinct sizes"),
])
def test_cross_field_errors_print_the_reason_and_the_section_not_its_input(paper, items, line):
    """These used to print the whole section first (``januspipe: got {'profile': 'quick', ...}``, 1.2 KB)."""
    msg = _error(paper, *items)
    assert f"\n  {line}" in msg
    assert "got {" not in msg and "'profile'" not in msg and len(msg) < 600


def test_p2p_sizes_accept_1_byte_to_1_gib_in_any_order():
    from components.januspipe.config import MAX_P2P_BYTES, ProfileConfig

    assert MAX_P2P_BYTES == 1 << 30 and "1 GiB" in ProfileConfig.model_fields["p2p_sizes_bytes"].description
    cfg = _resolve("januspipe", f"profiling.p2p_sizes_bytes=[{MAX_P2P_BYTES}, 1, 4096]")
    assert cfg.profiling.p2p_sizes_bytes == [MAX_P2P_BYTES, 1, 4096]


@pytest.mark.parametrize("paper", sorted(PAPERS))
def test_valid_configs_are_unchanged(paper):
    """Defaults and the full profile still validate, with finite floats only."""
    model = importlib.import_module(PAPERS[paper].module).CONFIG
    for cfg in (model(), resolve_section(model, {"profile": "full"})):
        flat = cfg.to_flat_dict()
        assert all(v == v and v not in (float("inf"), float("-inf")) for v in flat.values() if isinstance(v, float))
