"""The Flower ServerApp: every (strategy x variant x seed) federation of the experiment in one run.

Starting a Flower simulation costs seconds (Ray start-up), so one run executes the whole plan:

1. the server checks ``institutes.json``, the federation parameters against it and the held-out
   institutes' data (it evaluates them; on a deployment with per-site data that is all it has);
   a ``query`` round asks every SuperNode which institute it holds, and each node checks its own
   datalist and volumes (a node that fails is named, with its reason, if no complete lane is left);
2. the nodes are grouped into *lanes*, each holding one node per training institute (simulation:
   ``num_supernodes = lanes x institutes``; a deployment with one SuperNode per institute is one lane);
3. each lane runs its share of the federations one after another (lanes run concurrently, so one
   federation's message latency overlaps another's compute); a lane's nodes only ever serve that
   lane, so each node's local state (FedBN norms, VFDA statistics) belongs to one federation at a time;
4. a federation is Flower's ``Strategy.start`` with the held-out institute evaluated on the server
   after every round; its final global model, FedBN's per-institute norm layers and the per-round,
   per-client record are written under ``<out-dir>/federations/<id>/``. A round with too few
   successful replies keeps the previous global model; a federation in which *no* round aggregated
   raises :class:`FederationError` (and writes nothing), which stops the run.

``flwr run components/vfda`` uses the module-level ``app`` (settings from the run config); the
paperworks flow builds its own with :func:`make_server_app`.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp

from components.base import InputError
from components.vfda.federation import Federation, RunSettings, settings_from_run_config
from components.vfda.strategy import CLIENT_INFO, make_strategy

log = logging.getLogger("paperworks.vfda.server")


class FederationError(RuntimeError):
    """A federation ran but did not train: no round aggregated (every round had fewer successful
    train replies than ``federation.min_train_clients``). The message names the federation, its
    rounds and the clients' failures; nothing of that federation is written."""


class LaneGrid(Grid):
    """A view of a Grid restricted to one lane's nodes (everything else is delegated)."""

    def __init__(self, grid: Grid, node_ids: Iterable[int]) -> None:
        self._grid = grid
        self._nodes = sorted(int(n) for n in node_ids)

    def set_run(self, run: Any) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Any:
        return self._grid.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._nodes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self._grid.send_and_receive(messages, timeout=timeout)


def _atomic_write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    tmp.write_text(json.dumps(obj, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


def _atomic_torch_save(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def discover_lanes(grid: Grid, data_dir: Path, timeout: float = 120.0, wait_s: float = 60.0,
                   num_classes: int | None = None) -> tuple[list[dict[int, str]], dict[int, str]]:
    """Ask every node for its institute; return lanes (``{node_id: institute}``, one node per
    training institute each) and all nodes. With ``num_classes`` each node also checks its own
    datalist and volumes; the InputError for an incomplete set of nodes gives every node's failure."""
    from components.vfda.data import read_manifest, training_institutes

    institutes = [e["name"] for e in training_institutes(read_manifest(data_dir))]
    deadline = time.monotonic() + wait_s
    while len(list(grid.get_node_ids())) < len(institutes) and time.monotonic() < deadline:
        time.sleep(0.5)  # deployment: SuperNodes may still be connecting
    node_ids = sorted(grid.get_node_ids())
    query = {"data-dir": str(data_dir)}
    if num_classes is not None:
        query["num-classes"] = num_classes
    msgs = [Message(RecordDict({"config": ConfigRecord(dict(query))}), nid, MessageType.QUERY) for nid in node_ids]
    replies = list(grid.send_and_receive(msgs, timeout=timeout))
    nodes: dict[int, tuple[str, int]] = {}
    problems: dict[int, str] = {}
    for r in replies:
        nid = int(r.metadata.src_node_id)
        if r.has_error():
            reason = (r.error.reason if r.error else "") or "?"
            problems[nid] = reason.strip().splitlines()[-1] if reason.strip() else "?"
            log.warning("node %d did not answer the institute query: %s", nid, problems[nid])
            continue
        info = r.content[CLIENT_INFO]
        nodes[nid] = (str(info["institute"]), int(info["partition-id"]))
    for nid in node_ids:
        if nid not in nodes and nid not in problems:
            problems[nid] = f"no reply within {timeout:g} s"
            log.warning("node %d did not answer the institute query within %g s", nid, timeout)
    pool = [(nid, inst) for nid, (inst, _) in sorted(nodes.items(), key=lambda kv: kv[1][1])]
    lanes: list[dict[int, str]] = []
    while True:  # fill lanes in partition-id order with one node per training institute
        lane: dict[int, str] = {}
        for nid, inst in list(pool):
            if inst in institutes and inst not in lane.values():
                lane[nid] = inst
                pool.remove((nid, inst))
        if len(lane) < len(institutes):
            break
        lanes.append(lane)
    if not lanes:
        failed = "; ".join(f"node {nid}: {why}" for nid, why in sorted(problems.items()))
        raise InputError(f"no complete set of SuperNodes: {len(node_ids)} node(s) connected, institutes found "
                         f"{sorted(v[0] for v in nodes.values())}, expected one node per training institute "
                         f"{institutes} of {Path(data_dir) / 'institutes.json'}"
                         + (f"; failed nodes: {failed}" if failed else ""))
    return lanes, {nid: inst for nid, (inst, _) in nodes.items()}


def _initial_model(settings: RunSettings, fed: Federation):
    from components.vfda.model import build_model

    cfg = settings.config  # seeded under model.BUILD_LOCK: no other lane's build runs in between
    return build_model(cfg.model, cfg.data.num_classes, cfg.vfda, seed=fed.seed)


def _scratch_model(settings: RunSettings):
    """A model whose weights are overwritten before use (the held-out evaluator). Its construction
    still draws from the global RNG, so it is built under ``model.BUILD_LOCK`` like every model:
    otherwise it could run inside another lane's seeded ``_initial_model`` and change that
    federation's initial weights (seen as one federation of 27 differing between two runs of the
    same code)."""
    from components.vfda.model import build_model

    cfg = settings.config
    return build_model(cfg.model, cfg.data.num_classes, cfg.vfda)


def run_federation(grid: Grid, fed: Federation, settings: RunSettings, num_clients: int,
                   heldout: dict[str, list], fault_institute: str = "") -> dict[str, Any]:
    """One federation with Flower's ``Strategy.start``; writes and returns its record.
    ``fault_institute``: the institute whose client crashes in ``simulation.fault_round`` (fault
    injection; "" = none)."""
    from components.vfda.model import norm_keys, weights
    from components.vfda.training import evaluate_dice

    cfg = settings.config
    t0 = time.perf_counter()
    model = _initial_model(settings, fed)
    strategy = make_strategy(fed, num_clients=num_clients, min_train_clients=cfg.federation.min_train_clients,
                             proximal_mu=cfg.federation.proximal_mu, norm_keys=norm_keys(model),
                             round_timeout_s=cfg.federation.round_timeout_s)
    common = {"federation": fed.id, "settings": cfg.model_dump_json(), "data-dir": str(settings.data_dir)}
    train_config = ConfigRecord({**common, "fault-round": cfg.simulation.fault_round if fault_institute else 0,
                                 "fault-institute": fault_institute})
    heldout_record: dict[int, dict[str, dict[str, float]]] = {}
    net = _scratch_model(settings)  # reused for every round

    def evaluate_heldout(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        net.load_state_dict(arrays.to_torch_state_dict())
        res = {name: evaluate_dice(net, data, cfg.data.num_classes) for name, data in heldout.items()}
        heldout_record[server_round] = res
        return MetricRecord({f"{name}-dice": r["dice"] for name, r in res.items()}) if res else None

    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(weights(model)),
                            num_rounds=cfg.federation.num_rounds, timeout=cfg.federation.round_timeout_s,
                            train_config=train_config, evaluate_config=ConfigRecord(dict(common)),
                            evaluate_fn=evaluate_heldout)
    if not any(rec.get("aggregated") for rec in strategy.rounds.values()):
        # Flower sets ``result.arrays`` only from an aggregated round (else an empty record): a
        # federation that never aggregated is a failed run, not an untrained model to evaluate
        raise FederationError(_no_aggregation_message(fed, strategy.rounds, cfg.federation.num_rounds,
                                                      cfg.federation.min_train_clients, num_clients))
    final = result.arrays.to_torch_state_dict()
    rounds = []
    for r in range(1, cfg.federation.num_rounds + 1):
        rec = dict(strategy.rounds.get(r, {"round": r, "train": {}, "evaluate": {}, "failures": [],
                                          "aggregated": False}))
        rec["heldout"] = heldout_record.get(r, {})
        rounds.append(rec)
    record = {"federation": fed.id, **fed.as_dict(), "vfda_rule": fed.vfda_rule(cfg),
              "num_clients": num_clients, "rounds": rounds, "heldout_round0": heldout_record.get(0, {}),
              "wall_s": time.perf_counter() - t0}
    folder = settings.out_dir / "federations" / fed.id
    _atomic_torch_save(folder / "global.pt", final)
    if fed.strategy == "fedbn":
        _atomic_torch_save(folder / "local_norms.pt", {inst: {k: torch.from_numpy(v.copy()) for k, v in sd.items()}
                                                       for inst, sd in strategy.client_norms.items()})
    _atomic_write_json(folder / "history.json", record)
    return record


def _no_aggregation_message(fed: Federation, rounds: dict[int, dict[str, Any]], num_rounds: int,
                            min_train_clients: int, num_clients: int) -> str:
    replies = [len(rounds.get(r, {}).get("train", {})) for r in range(1, num_rounds + 1)]
    reasons = [f["reason"].strip().splitlines()[-1] for r in range(1, num_rounds + 1)
               for f in rounds.get(r, {}).get("failures", []) if f.get("phase") == "train" and f.get("reason")]
    first = f"; first client failure: {reasons[0]}" if reasons else ""
    return (f"federation {fed.id} (strategy={fed.strategy}, variant={fed.variant}, seed={fed.seed}): none of "
            f"its {num_rounds} round(s) aggregated, every round had fewer successful train replies than "
            f"federation.min_train_clients={min_train_clients} (replies per round out of {num_clients} "
            f"clients: {replies}){first}; no model is written for an untrained federation")


def run_plan(grid: Grid, settings: RunSettings) -> dict[str, Any]:
    """Discover lanes, run every federation of the plan, write ``<out-dir>/run.json``."""
    from components.vfda.data import (check_federation, held_out_institutes, load_split, training_institutes,
                                      validate_dataset)

    t0, c0 = time.perf_counter(), time.process_time()
    torch.set_num_threads(1)
    cfg = settings.config
    # the server reads the manifest and the held-out institutes (it evaluates them); each SuperNode
    # checks its own institute's data when it answers the query (per-site data on a deployment)
    manifest = validate_dataset(settings.data_dir, cfg.data, roles=("held_out",))
    check_federation(manifest, settings.data_dir, cfg)
    fault_institute = (training_institutes(manifest)[cfg.simulation.fault_partition]["name"]
                       if cfg.simulation.fault_round > 0 else "")
    heldout = {e["name"]: load_split(settings.data_dir / e["datalist"], "validation", cfg.data)
               for e in held_out_institutes(manifest)}
    lanes, nodes = discover_lanes(grid, settings.data_dir, num_classes=cfg.data.num_classes)
    lanes = lanes[: max(1, cfg.simulation.lanes)]
    feds = settings.resolved()
    log.info("vfda: %d federations on %d lane(s) of %d SuperNodes", len(feds), len(lanes), len(lanes[0]))
    records: dict[str, dict[str, Any]] = {}
    errors: list[BaseException] = []
    queue = list(feds)
    qlock = threading.Lock()

    def lane_worker(lane: dict[int, str]) -> None:
        lane_grid = LaneGrid(grid, lane)
        while True:
            with qlock:
                if not queue or errors:
                    return
                fed = queue.pop(0)
            try:
                rec = run_federation(lane_grid, fed, settings, len(lane), heldout, fault_institute)
                last = rec["rounds"][-1]
                log.info("vfda: %s done in %.1f s (held-in dice %s, held-out %s)", fed.id, rec["wall_s"],
                         {k: round(v.get("dice", 0.0), 3) for k, v in last["evaluate"].items()},
                         {k: round(v["dice"], 3) for k, v in last["heldout"].items()})
                records[fed.id] = rec
            except BaseException as err:  # surface the first failure once every lane stopped
                errors.append(err)
                return

    threads = [threading.Thread(target=lane_worker, args=(lane,), name=f"vfda-lane{i}", daemon=True)
               for i, lane in enumerate(lanes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    client_cpu = sum(v.get("client-cpu-s", 0.0) for rec in records.values() for r in rec["rounds"]
                     for phase in ("train", "evaluate") for v in r[phase].values())
    summary = {"federations": [f.id for f in feds], "lanes": [sorted(l.values()) for l in lanes],
               "nodes": {str(k): v for k, v in nodes.items()}, "wall_s": time.perf_counter() - t0,
               "server_process_cpu_s": time.process_time() - c0, "client_cpu_s": client_cpu}
    _atomic_write_json(settings.out_dir / "run.json", summary)
    return summary


def make_server_app(settings: RunSettings | None = None) -> ServerApp:
    """A ServerApp running ``settings`` (None: read them from the Flower run config)."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        run_plan(grid, settings or settings_from_run_config(context.run_config))

    return server_app


app = make_server_app()
