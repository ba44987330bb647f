"""The simulation's resource settings: a GPU node with gpus_per_client = 0 trains on the CPU (Ray hides
the GPUs from actors that ask for none), and the user is told so; the Ray processes' environment
variables do not stay in the calling process."""
from __future__ import annotations

import pytest

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


def _fake_simulation(monkeypatch, tmp_path, run):
    """simulate() with Flower's run_simulation replaced by ``run(settings)`` (no Ray, no data)."""
    import sys
    import types

    import flwr.simulation

    from components.vfda import data, server_app

    monkeypatch.setattr(data, "read_manifest", lambda data_dir: {})
    monkeypatch.setattr(data, "training_institutes", lambda manifest: ["a", "b"])
    monkeypatch.setattr(server_app, "make_server_app", lambda settings: None)
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(is_initialized=lambda: False))
    settings = RunSettings(config=VfdaConfig(), data_dir=tmp_path, out_dir=tmp_path / "out")
    monkeypatch.setattr(flwr.simulation, "run_simulation", lambda **kwargs: run(settings))
    return settings


def test_simulation_env_reaches_ray_only_while_the_simulation_runs(monkeypatch, tmp_path):
    """OMP_NUM_THREADS=1 and RAY_DEDUP_LOGS=0 are in the environment Ray's processes are started
    with (a value the caller set wins), and none of it (nor Flower's PYTHONPATH) stays in the caller's."""
    import json
    import os

    from components.vfda.simulation import simulate

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("RAY_DEDUP_LOGS", "1")
    monkeypatch.setenv("PYTHONPATH", "/caller")
    seen = {}

    def run(settings):
        seen.update({k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "RAY_DEDUP_LOGS")})
        os.environ["PYTHONPATH"] = "/flower/sys/path"          # as flwr's RayBackend.init_ray does
        (settings.out_dir / "run.json").write_text(json.dumps({"ok": True}))

    assert simulate(_fake_simulation(monkeypatch, tmp_path, run)) == {"ok": True}
    assert seen == {"OMP_NUM_THREADS": "1", "RAY_DEDUP_LOGS": "1"}
    assert "OMP_NUM_THREADS" not in os.environ
    assert os.environ["RAY_DEDUP_LOGS"] == "1" and os.environ["PYTHONPATH"] == "/caller"

    monkeypatch.delenv("RAY_DEDUP_LOGS")
    monkeypatch.delenv("PYTHONPATH")

    def fail(settings):
        seen.update({k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "RAY_DEDUP_LOGS")})
        os.environ["PYTHONPATH"] = "/flower/sys/path"
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        simulate(_fake_simulation(monkeypatch, tmp_path, fail))
    assert seen == {"OMP_NUM_THREADS": "1", "RAY_DEDUP_LOGS": "0"}
    assert not {"OMP_NUM_THREADS", "RAY_DEDUP_LOGS", "PYTHONPATH"} & set(os.environ)
