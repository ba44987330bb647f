"""The Flower ClientApp: one institute's local training and evaluation.

Each message carries the federation id, the serialized config and the data directory (see
:mod:`components.vfda.federation`). The institute comes from the node config: ``datalist`` (a real
SuperNode's own MONAI datalist) or ``partition-id`` (simulation: the ``partition-id % N``-th training
institute of ``<data-dir>/institutes.json``).

State kept on the client between rounds (``context.state``, reset when a new federation starts):
FedBN's local normalisation layers and VFDA's running statistics. Only the model weights and, for
VFDA, the per-channel statistics are sent back -- never data.
"""
from __future__ import annotations

import logging
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch  # noqa: F401  (ArrayRecord.to_torch_state_dict looks torch up in sys.modules)
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from components.vfda.config import VfdaConfig
from components.vfda.federation import Federation, parse_federation_id
from components.vfda.strategy import CLIENT_INFO, VFDA_GLOBAL, VFDA_STATS

log = logging.getLogger("paperworks.vfda.client")

app = ClientApp()

OWNER, NORMS, RUNNING = "vfda-owner", "local-norms", "vfda-running"


class InjectedClientFault(RuntimeError):
    """Raised on purpose (``simulation.fault_round``) to exercise failure-tolerant aggregation: the
    server names the institute (``simulation.fault_partition``-th training institute) in the train
    config, so the same institute crashes in every lane, whichever node serves it."""


def client_seed(fed: Federation, server_round: int, institute: str) -> int:
    """Seed of one local training run: the same whichever SuperNode (lane) serves the institute."""
    return int(np.random.SeedSequence([fed.seed, server_round, zlib.crc32(institute.encode()), 1031]).generate_state(1)[0])


def resolve_institute(node_config: dict[str, Any], data_dir: str) -> tuple[str, Path, int]:
    """(institute name, datalist path, partition id) of this node."""
    from components.vfda.data import read_manifest, training_institutes

    pid = int(node_config.get("partition-id", 0))
    if node_config.get("datalist"):
        path = Path(str(node_config["datalist"])).resolve()
        return str(node_config.get("institute", path.parent.name)), path, pid
    train = training_institutes(read_manifest(data_dir))
    entry = train[pid % len(train)]
    return str(entry["name"]), Path(data_dir) / entry["datalist"], pid


def _local_state(context: Context, fed_id: str) -> RecordDict:
    """The client's state for this federation (emptied when a different federation starts)."""
    state = context.state
    owner = state.config_records.get(OWNER)
    if owner is None or owner.get("federation") != fed_id:
        for key in (NORMS, RUNNING):
            if key in state:
                del state[key]
        state[OWNER] = ConfigRecord({"federation": fed_id})
    return state


def _prepare(msg: Message, context: Context):
    from components.vfda.model import build_model, device
    from components.vfda.vfda import configure_vfda, load_local_statistics

    torch.set_num_threads(1)
    conf = msg.content["config"]
    cfg = VfdaConfig.model_validate_json(str(conf["settings"]))
    fed = parse_federation_id(str(conf["federation"]))
    name, datalist, pid = resolve_institute(context.node_config, str(conf["data-dir"]))
    state = _local_state(context, fed.id)
    model = build_model(cfg.model, cfg.data.num_classes, cfg.vfda)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    if conf.get("fedbn") and NORMS in state:  # FedBN: the client's own normalisation layers
        model.load_state_dict(state[NORMS].to_torch_state_dict(), strict=False)
    configure_vfda(model, enabled=fed.uses_vfda, rule=fed.vfda_rule(cfg),  # type: ignore[arg-type]
                   use_global=fed.variant != "vfda-local")
    if fed.uses_vfda and RUNNING in state:
        load_local_statistics(model, state[RUNNING].to_torch_state_dict())
    model.to(device())
    return cfg, conf, fed, name, datalist, pid, state, model


def _info(name: str, pid: int) -> ConfigRecord:
    return ConfigRecord({"institute": name, "partition-id": pid})


@app.train()
def train(msg: Message, context: Context) -> Message:
    from components.vfda.data import load_split
    from components.vfda.model import norm_keys, weights
    from components.vfda.training import round_lr, train_local
    from components.vfda.vfda import load_global_variance, local_statistics

    t0, c0 = time.perf_counter(), time.process_time()
    cfg, conf, fed, name, datalist, pid, state, model = _prepare(msg, context)
    server_round = int(conf.get("server-round", 0))
    if int(conf.get("fault-round", 0)) == server_round and str(conf.get("fault-institute", "")) == name:
        raise InjectedClientFault(f"institute {name} (partition {pid}) crashes in round {server_round} on purpose")
    if fed.uses_vfda and VFDA_GLOBAL in msg.content:  # Eq. 4 variance from the server
        load_global_variance(model, msg.content[VFDA_GLOBAL].to_torch_state_dict())
    data = load_split(datalist, "training", cfg.data)
    fcfg = cfg.federation
    lr = round_lr(fcfg.lr, server_round, fcfg.num_rounds, fcfg.lr_schedule, fcfg.lr_final_factor)
    out = train_local(model, data, steps=fcfg.local_steps, batch_size=fcfg.batch_size, lr=lr,
                      seed=client_seed(fed, server_round, name),
                      mixup_alpha=fcfg.mixup_alpha if fed.variant == "mixup" else None,
                      proximal_mu=float(conf.get("proximal-mu", 0.0)))
    sd = weights(model)
    if conf.get("fedbn"):
        state[NORMS] = ArrayRecord({k: sd[k] for k in norm_keys(model)})
    content = RecordDict({"arrays": ArrayRecord(sd),
                          "metrics": MetricRecord({"num-examples": len(data), "train-loss": out["train_loss"],
                                                   "client-wall-s": time.perf_counter() - t0,
                                                   "client-cpu-s": time.process_time() - c0}),
                          CLIENT_INFO: _info(name, pid)})
    if fed.uses_vfda:
        stats = local_statistics(model)                  # Eq. 3: per-channel statistics only
        state[RUNNING] = ArrayRecord(stats)
        content[VFDA_STATS] = ArrayRecord(stats)
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    from components.vfda.data import load_split
    from components.vfda.training import evaluate_dice

    t0, c0 = time.perf_counter(), time.process_time()
    cfg, conf, fed, name, datalist, pid, state, model = _prepare(msg, context)
    data = load_split(datalist, "validation", cfg.data)
    res = evaluate_dice(model, data, cfg.data.num_classes)
    metrics = MetricRecord({"num-examples": len(data), **{k.replace("_", "-"): v for k, v in res.items()},
                            "client-wall-s": time.perf_counter() - t0, "client-cpu-s": time.process_time() - c0})
    return Message(content=RecordDict({"metrics": metrics, CLIENT_INFO: _info(name, pid)}), reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Which institute this node holds (the server groups nodes into lanes with it). The node checks
    its own datalist and volumes here (missing file, shape mismatch, labels out of range: an
    :class:`~components.base.InputError` whose message the server reports), since on a deployment
    with per-site data the server cannot read them."""
    from components.vfda.data import read_datalist, validate_site

    conf = msg.content["config"]
    name, datalist, pid = resolve_institute(context.node_config, str(conf["data-dir"]))
    dl = validate_site(datalist, int(conf["num-classes"])) if "num-classes" in conf else read_datalist(datalist)
    info = _info(name, pid)
    return Message(content=RecordDict({CLIENT_INFO: info, "metrics": MetricRecord(
        {"num-training": len(dl["training"]), "num-validation": len(dl["validation"])})}), reply_to=msg)
