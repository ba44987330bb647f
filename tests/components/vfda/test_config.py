"""Parameter and federation-id validation: exact strategy / variant names, no duplicated grid entries,
fault injection within the training institutes, and a normalisation FedBN can keep local."""
from __future__ import annotations

import pytest

from components.base import ConfigError, resolve_section
from components.vfda.config import VfdaConfig
from components.vfda.federation import Federation, parse_federation_id, plan, settings_from_run_config


@pytest.mark.parametrize("fed_id, word", [("fedavg-vfdaa-s0", "unknown variant 'vfdaa'"),
                                          ("fedavg-mixupp-s1", "unknown variant 'mixupp'"),
                                          ("fedxyz-base-s0", "unknown strategy 'fedxyz'"),
                                          ("fedavg-base-s-1", "expected a non-negative integer"),
                                          ("fedavg-base", "expected '<strategy>-<variant>-s<seed>'")])
def test_federation_ids_are_validated_exactly(fed_id, word):
    with pytest.raises(ConfigError) as err:
        parse_federation_id(fed_id)
    assert word in str(err.value) and fed_id in str(err.value)
    with pytest.raises(ConfigError):
        settings_from_run_config({"federations": f"fedavg-base-s0,{fed_id}"})


def test_valid_ids_round_trip_and_only_vfda_variants_use_vfda():
    for fed in plan(VfdaConfig.model_validate({"federation": {"ablation_strategies": ["fedavg"],
                                                              "ablation_variants": ["vfda-fedfa", "vfda-local"]}})):
        assert parse_federation_id(fed.id) == fed
        assert fed.uses_vfda == (fed.variant in ("vfda", "vfda-product", "vfda-fedfa", "vfda-local"))
    with pytest.raises(ConfigError, match="variant='vfdax'"):
        Federation("fedavg", "vfdax", 0)
    with pytest.raises(ConfigError, match="listed more than once"):
        settings_from_run_config({"federations": "fedavg-base-s0, fedavg-base-s0"})


@pytest.mark.parametrize("key, value", [("seeds", [0, 1, 0]), ("strategies", ["fedavg", "fedavg"]),
                                        ("variants", ["base", "vfda", "base"]),
                                        ("ablation_strategies", ["fedbn", "fedbn"]),
                                        ("ablation_variants", ["vfda-local", "vfda-local"])])
def test_duplicate_grid_entries_are_rejected(key, value):
    with pytest.raises(ConfigError) as err:
        resolve_section(VfdaConfig, {"federation": {key: value}})
    assert f"vfda.federation.{key}: got {value}" in str(err.value) and "each entry once" in str(err.value)


def test_fault_partition_must_name_a_training_institute():
    assert resolve_section(VfdaConfig, {"simulation": {"fault_round": 1, "fault_partition": 3}})  # D of A-D
    with pytest.raises(ConfigError) as err:
        resolve_section(VfdaConfig, {"simulation": {"fault_round": 1, "fault_partition": 4}})
    assert "simulation.fault_partition=4" in str(err.value) and "0 to 3" in str(err.value)
    # with data.root the dataset's manifest decides (checked when the data is read: data.check_federation)
    resolve_section(VfdaConfig, {"data": {"root": "/site"}, "simulation": {"fault_partition": 4},
                                 "federation": {"min_train_clients": 5}})


@pytest.mark.parametrize("channels, index", [([0, 16, 32], 0), ([8, -16, 32, 64], 1)])
def test_a_channel_count_below_1_is_named(channels, index):
    """A 0 or negative U-Net width used to fail only inside the Flower simulation."""
    with pytest.raises(ConfigError) as err:
        resolve_section(VfdaConfig, {"model": {"channels": channels}})
    assert (f"vfda.model.channels.{index}: got {channels[index]}; expected input should be greater than or "
            f"equal to 1") in str(err.value)


def test_a_batch_larger_than_the_smallest_institutes_training_set_is_refused():
    """Institute D has 6 volumes, 2 of them (test_fraction 0.25, rounded) its local test split: 4 train.
    batch_size=8 used to be accepted, giving each of D's volumes twice in every batch."""
    with pytest.raises(ConfigError) as err:
        resolve_section(VfdaConfig, {"federation": {"batch_size": 8}})
    assert ("vfda: federation.batch_size=8: institute D has 4 training volumes (its 6 less the local test split, "
            "data.test_fraction=0.25); expected at most 4, every batch draws distinct volumes") in str(err.value)
    with pytest.raises(ConfigError, match="federation.batch_size=5: institute D has 4 training volumes"):
        resolve_section(VfdaConfig, {"federation": {"batch_size": 5}})
    assert resolve_section(VfdaConfig, {"federation": {"batch_size": 4}}).federation.batch_size == 4
    # with data.root the dataset's datalists decide (data.check_federation, tests/components/vfda/test_data.py)
    assert resolve_section(VfdaConfig, {"data": {"root": "/site"}, "federation": {"batch_size": 8}})


def test_a_fault_round_after_the_last_round_is_refused():
    """client_app.train crashes in the round equal to fault_round: a later one never came, silently."""
    with pytest.raises(ConfigError) as err:
        resolve_section(VfdaConfig, {"simulation": {"fault_round": 12}})
    assert ("vfda: simulation.fault_round=12 is after the last round (federation.num_rounds=10): the fault would "
            "never fire; expected 0 (no fault) or a round 1 to 10") in str(err.value)
    assert resolve_section(VfdaConfig, {"simulation": {"fault_round": 10}}).simulation.fault_round == 10
    assert resolve_section(VfdaConfig, {"simulation": {"fault_round": 12}, "federation": {"num_rounds": 12}})


def test_params_yaml_and_the_full_profile_pass_the_new_checks():
    from tasks.params import load_config

    for overrides in ({}, {"profile": "full"}):
        assert load_config(VfdaConfig, overrides)


def test_instance_norm_gives_fedbn_weights_to_keep_local():
    from components.vfda.config import ModelConfig
    from components.vfda.model import build_model, norm_keys

    model = build_model(ModelConfig(channels=[4, 8, 16], norm="instance"), num_classes=3)
    keys = norm_keys(model)
    assert keys and all(k.endswith((".weight", ".bias")) for k in keys)   # affine, no running statistics
    batch = norm_keys(build_model(ModelConfig(channels=[4, 8, 16]), num_classes=3))
    assert any(k.endswith("running_mean") for k in batch)


@pytest.mark.parametrize("section, overrides, cpus, per_client", [
    ({"simulation": {"cpus_per_client": 3}}, {}, 2, "3"),
    ({"simulation": {"num_cpus": 4, "cpus_per_client": 4.5}}, {}, 4, "4.5"),
    ({}, {"profile": "full", "simulation": {"num_cpus": 2}}, 2, "4"),          # the full profile: 4 CPUs a client
])
def test_a_client_needing_more_cpus_than_the_backend_has_is_refused(section, overrides, cpus, per_client):
    """Flower's actor pool holds int(num_cpus / cpus_per_client) actors: none at all used to fail only after
    the Ray start-up ("ActorPool is empty")."""
    with pytest.raises(ConfigError) as err:
        resolve_section(VfdaConfig, section, overrides)
    assert (f"vfda.simulation: simulation.cpus_per_client={per_client} is more than simulation.num_cpus={cpus}: the "
            f"simulation backend could not place a single ClientApp actor; expected cpus_per_client <= num_cpus"
            ) in str(err.value)


def test_a_client_may_take_every_cpu_of_the_backend():
    cfg = resolve_section(VfdaConfig, {"simulation": {"num_cpus": 2, "cpus_per_client": 2}})
    assert (cfg.simulation.num_cpus, cfg.simulation.cpus_per_client) == (2, 2.0)
    assert resolve_section(VfdaConfig, {"simulation": {"num_cpus": 3, "cpus_per_client": 0.5}})


@pytest.mark.parametrize("content, found", [
    (b"vfda: {seed: [1\n", r"not valid YAML \(.*\); expected a params.yaml with a 'vfda' section"),
    (b"- vfda\n", r"a YAML list; expected a mapping: a params.yaml with a 'vfda' section"),
    (b"vfda: caf\xe9\n", r"not UTF-8 text \(byte 0xe9 at offset 9\)"),
    (b"vfda: [1, 2]\n", r"vfda=\[1, 2\]; expected a mapping of vfda parameters"),
])
def test_a_malformed_run_config_params_file_is_named(tmp_path, content, found):
    """``flwr run``'s params-file was read with a bare yaml.safe_load (a YAMLError or AttributeError
    traceback); it is read with components.io.read_yaml_mapping."""
    import re

    path = tmp_path / "params.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: {found}"):
        settings_from_run_config({"params-file": "params.yaml"}, cwd=tmp_path)
    path.write_text("vfda:\n  seed: 7\n")
    assert settings_from_run_config({"params-file": "params.yaml"}, cwd=tmp_path).config.seed == 7
    path.write_text("")                                   # an empty params file: the quick defaults
    assert settings_from_run_config({"params-file": "params.yaml"}, cwd=tmp_path).config == VfdaConfig()
