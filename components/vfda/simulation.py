"""Run the whole federation plan on Flower's simulation runtime (Ray backend), in this process.

One ``run_simulation`` call (one Ray start-up) runs every federation: ``lanes x institutes``
SuperNodes, ``num_cpus / cpus_per_client`` ClientApp actors working in parallel (1 torch thread each).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from components.vfda.federation import RunSettings

log = logging.getLogger("paperworks.vfda.simulation")


def backend_config(settings: RunSettings) -> dict[str, Any]:
    sim = settings.config.simulation
    init_args: dict[str, Any] = {"num_cpus": sim.num_cpus, "include_dashboard": False}
    if sim.gpus_per_client == 0:
        init_args["num_gpus"] = 0
    return {"client_resources": {"num_cpus": sim.cpus_per_client, "num_gpus": sim.gpus_per_client},
            "init_args": init_args}


def hidden_gpu_warning(gpus_per_client: float, visible_gpus: int) -> str | None:
    """The warning for GPUs the ClientApps will not see: Ray (2.x) sets ``CUDA_VISIBLE_DEVICES`` to
    nothing for an actor that asks for no GPU, so with ``gpus_per_client = 0`` every client trains
    on the CPU even on a GPU node. None when there is nothing to warn about."""
    if gpus_per_client > 0 or visible_gpus < 1:
        return None
    return (f"{visible_gpus} GPU(s) visible, but simulation.gpus_per_client=0: Ray hides them from the "
            f"ClientApps, which will train on the CPU; set simulation.gpus_per_client (e.g. 0.25 to share "
            f"one GPU between 4 clients) to train on the GPU")


#: environment of the Ray processes the simulation starts (unless the caller's environment sets them):
#: one OpenMP thread per ClientApp actor, and every actor's log lines shown (not deduplicated).
SIMULATION_ENV = {"OMP_NUM_THREADS": "1", "RAY_DEDUP_LOGS": "0"}


@contextmanager
def simulation_env(defaults: dict[str, str]) -> Iterator[None]:
    """``defaults`` in ``os.environ`` (where unset) for the duration of the simulation only.

    Ray's processes take their environment from this one when ``ray.init`` starts them (the raylet
    and the ClientApp actors' workers). Flower's Ray backend passes its own ``runtime_env`` to
    ``ray.init`` (``RayBackend.init_ray``, flwr 1.42), so the variables cannot go there, and Ray's
    driver reads ``RAY_DEDUP_LOGS`` once, when ``ray`` is first imported (a module constant of
    ``ray._private.ray_constants``, ray 2.55), which happens inside ``run_simulation``: both need the
    variables in this process's environment while the simulation starts. Afterwards they (and the
    ``PYTHONPATH`` that ``RayBackend.init_ray`` overwrites with ``sys.path``) are put back, so the
    calling process (a test session, a flow running further stages) and what it starts later do
    not inherit them."""
    keys = set(defaults) | {"PYTHONPATH"}
    saved = {k: os.environ.get(k) for k in keys}
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def simulate(settings: RunSettings) -> dict[str, Any]:
    """Run ``settings``' federations; return the ServerApp's summary (also in ``run.json``)."""
    import json

    from flwr.simulation import run_simulation

    from components.vfda.client_app import app as client_app
    from components.vfda.data import read_manifest, training_institutes
    from components.vfda.server_app import make_server_app

    import torch

    hint = hidden_gpu_warning(settings.config.simulation.gpus_per_client,
                              torch.cuda.device_count() if torch.cuda.is_available() else 0)
    if hint:
        log.warning("vfda simulation: %s", hint)
    n_inst = len(training_institutes(read_manifest(settings.data_dir)))
    lanes = max(1, min(settings.config.simulation.lanes, len(settings.resolved())))
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    log.info("vfda simulation: %d SuperNodes (%d lane(s) x %d institutes), backend %s",
             lanes * n_inst, lanes, n_inst, settings.config.simulation.backend)
    with simulation_env(SIMULATION_ENV):  # inherited by the Ray processes, not kept by this one
        try:
            run_simulation(server_app=make_server_app(settings), client_app=client_app,
                           num_supernodes=lanes * n_inst, backend_name=settings.config.simulation.backend,
                           backend_config=backend_config(settings))
        finally:
            try:
                import ray

                if ray.is_initialized():
                    ray.shutdown()
            except ImportError:  # pragma: no cover - ray is part of flwr[simulation]
                pass
    run_json = settings.out_dir / "run.json"
    if not run_json.is_file():
        raise RuntimeError(f"Flower simulation ended without {run_json}; see the ServerApp log above")
    return json.loads(run_json.read_text())
