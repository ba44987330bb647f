"""The simulation's resource settings: a GPU node with gpus_per_client = 0 trains on the CPU (Ray hides
the GPUs from actors that ask for none), and the user is told so."""
from __future__ import annotations

from components.vfda.config import VfdaConfig
from components.vfda.federation import RunSettings
from components.vfda.simulation import backend_config, hidden_gpu_warning


def test_visible_gpus_with_no_gpu_per_client_are_named():
    msg = hidden_gpu_warning(0.0, 2)
    assert msg is not None and "2 GPU(s) visible" in msg and "simulation.gpus_per_client=0" in msg
    assert hidden_gpu_warning(0.25, 1) is None          # the clients ask for a GPU share
    assert hidden_gpu_warning(0.0, 0) is None           # a CPU node: nothing to say


def test_backend_config_hides_gpus_only_when_clients_ask_for_none(tmp_path):
    def settings(gpus):
        cfg = VfdaConfig.model_validate({"simulation": {"gpus_per_client": gpus, "num_cpus": 4, "cpus_per_client": 2}})
        return RunSettings(config=cfg, data_dir=tmp_path, out_dir=tmp_path)

    cpu = backend_config(settings(0.0))
    assert cpu["client_resources"] == {"num_cpus": 2, "num_gpus": 0.0} and cpu["init_args"]["num_gpus"] == 0
    gpu = backend_config(settings(0.5))
    assert gpu["client_resources"]["num_gpus"] == 0.5 and "num_gpus" not in gpu["init_args"]
