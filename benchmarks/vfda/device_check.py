"""Run VFDA federations in-process on a chosen torch device (no Ray) and compare devices.

The experiment's stages run every federation on Flower's simulation runtime (Ray actors, CPU).
On a GPU machine the ClientApp trains on CUDA (``components.vfda.model.device``). This script runs
the same ServerApp plan (:func:`components.vfda.server_app.run_plan`) and the same ClientApp
handlers, but delivers the messages in-process (:class:`InProcessGrid`: one ``Context`` per node, the
ClientApp called directly, a client exception turned into an error reply as Flower does), once per
``--devices`` entry, and reports per federation the held-in and held-out Dice of the last round and
the wall time, plus the largest Dice difference between the first device and each other one.

Devices differ in floating-point order and random streams (VFDA's Eq. 6 draws use the device's
generator), so the Dice values are close, not bit-identical.

    .venv/bin/python benchmarks/vfda/device_check.py --devices cpu \\
        --federations fedavg-base-s0 fedavg-vfda-s0 --rounds 2          # [--data data/vfda] [--out F]

Without ``--data`` the quick-profile dataset (``VfdaConfig()`` defaults, or ``--profile``'s) is
generated into a temporary folder first.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Iterable

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
from flwr.app import Context, Error, Message, RecordDict  # noqa: E402
from flwr.serverapp import Grid  # noqa: E402

import components.vfda.model as vfda_model  # noqa: E402
from benchmarks._cli import fail, output_file  # noqa: E402
from components.base import ConfigError, InputError, resolve_section  # noqa: E402
from components.vfda.config import VfdaConfig  # noqa: E402
from components.vfda.data import generate_dataset, read_manifest, training_institutes  # noqa: E402
from components.vfda.federation import RunSettings, parse_federation_id  # noqa: E402
from components.vfda.server_app import run_plan  # noqa: E402


class InProcessGrid(Grid):
    """``lanes x institutes`` nodes served by ``client_app`` in this process.

    Node ``i`` (1-based) has ``partition-id = i - 1``, as a simulation SuperNode has, and keeps its own
    ``Context`` (the ClientApp's state between rounds). ``send_and_receive`` answers every message
    in order, in the calling thread (each lane of ``run_plan`` calls from its own thread)."""

    def __init__(self, client_app: Any, num_nodes: int) -> None:
        self.client_app = client_app
        self.contexts = {i: Context(run_id=1, node_id=i, node_config={"partition-id": i - 1},
                                    state=RecordDict(), run_config={}) for i in range(1, num_nodes + 1)}
        self._ids = itertools.count(1)  # next() is atomic: lanes call send_and_receive from their own threads

    def set_run(self, run: Any) -> None:
        pass

    @property
    def run(self) -> Any:
        return None

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError("InProcessGrid answers in send_and_receive only")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError("InProcessGrid answers in send_and_receive only")

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for msg in messages:
            # a reply needs the id of the message it answers
            msg.metadata.__dict__["_message_id"] = f"inprocess-{next(self._ids)}"
            msg.metadata.__dict__["_src_node_id"] = 0
            try:
                replies.append(self.client_app(msg, self.contexts[msg.metadata.dst_node_id]))
            except Exception:  # Flower's runtime sends the failure back as an error reply
                replies.append(Message(Error(code=0, reason=traceback.format_exc()), reply_to=msg))
        return replies


def _task_identity() -> None:
    """Messages need a task identity; a Flower runtime sets it, here this script does."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1


def run_on(device: str, settings: RunSettings, lanes: int) -> dict[str, Any]:
    """Every federation of ``settings`` with the ClientApp training on ``device``; a summary."""
    from components.vfda.client_app import app as client_app

    n_inst = len(training_institutes(read_manifest(settings.data_dir)))
    original = vfda_model.device
    vfda_model.device = lambda: torch.device(device)  # what the ClientApp moves its model to
    t0 = time.perf_counter()
    try:
        run_plan(InProcessGrid(client_app, lanes * n_inst), settings)
    finally:
        vfda_model.device = original
    wall = time.perf_counter() - t0
    feds: dict[str, Any] = {}
    for fed in settings.resolved():
        hist = json.loads((settings.out_dir / "federations" / fed.id / "history.json").read_text())
        last = hist["rounds"][-1]
        feds[fed.id] = {"aggregated_rounds": sum(bool(r["aggregated"]) for r in hist["rounds"]),
                        "heldin_dice": {k: v["dice"] for k, v in sorted(last["evaluate"].items())},
                        "heldout_dice": {k: v["dice"] for k, v in sorted(last["heldout"].items())},
                        "train_loss_last_round": {k: v["train-loss"] for k, v in sorted(last["train"].items())},
                        "wall_s": hist["wall_s"],
                        # one client's local training (local_steps steps) per round, rounds >= 2 (no warm-up)
                        "client_train_wall_s": _mean([v["client-wall-s"] for r in hist["rounds"][1:]
                                                      for v in r["train"].values()])}
    name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "cpu"
    return {"device": device, "device_name": name, "wall_s": wall, "federations": feds}


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def max_dice_gap(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Largest |Dice difference| over federations, institutes and held-in/held-out."""
    gaps = [abs(a["federations"][f][kind][inst] - b["federations"][f][kind][inst])
            for f in a["federations"] for kind in ("heldin_dice", "heldout_dice")
            for inst in a["federations"][f][kind]]
    return max(gaps) if gaps else 0.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", nargs="+", default=["cpu", "cuda"], help="torch devices, e.g. cpu cuda cuda:1")
    ap.add_argument("--federations", nargs="+", default=["fedavg-base-s0", "fedavg-mixup-s0", "fedavg-vfda-s0"],
                    help="federation ids <strategy>-<variant>-s<seed>")
    ap.add_argument("--profile", default="quick", help="config profile (quick or full)")
    ap.add_argument("--rounds", type=int, default=None, help="override federation.num_rounds")
    ap.add_argument("--local-steps", type=int, default=None, help="override federation.local_steps")
    ap.add_argument("--lanes", type=int, default=1, help="federations run concurrently")
    ap.add_argument("--volumes-per-institute", type=int, default=None,
                    help="generate at most this many volumes per institute (a short timing run)")
    ap.add_argument("--data", type=Path, default=None, help="an existing VFDA dataset (default: generate one)")
    ap.add_argument("--out", type=output_file, default=None, help="write the JSON summary here")
    args = ap.parse_args(argv)
    for dev in args.devices:
        if dev.startswith("cuda") and not torch.cuda.is_available():
            ap.error(f"--devices {dev}: no CUDA device is visible to torch {torch.__version__}")
        if not (dev == "cpu" or dev.startswith("cuda")):
            ap.error(f"--devices {dev}: expected cpu, cuda or cuda:N")
    for name, value in (("--rounds", args.rounds), ("--local-steps", args.local_steps), ("--lanes", args.lanes)):
        if value is not None and value < 1:
            ap.error(f"{name} {value}: expected a positive integer")
    if args.volumes_per_institute is not None and args.volumes_per_institute < 2:
        ap.error(f"--volumes-per-institute {args.volumes_per_institute}: expected at least 2 (a training "
                 f"institute needs a training and a test volume)")
    if args.volumes_per_institute is not None and args.data is not None:
        ap.error("--volumes-per-institute applies to a generated dataset; drop it or --data")
    if args.data is not None and not (args.data / "institutes.json").is_file():
        ap.error(f"--data {args.data}: no institutes.json there; expected a VFDA dataset (python -m flows vfda data)")
    fed_overrides = {k: v for k, v in (("num_rounds", args.rounds), ("local_steps", args.local_steps)) if v}
    try:  # a bad --federations id, an unknown --profile or an override out of range: named, exit 2
        feds = tuple(parse_federation_id(f) for f in args.federations)
    except ConfigError as err:
        return fail(f"--federations: {err}")
    try:
        overrides = {"profile": args.profile, "federation": fed_overrides}
        cfg = resolve_section(VfdaConfig, {}, overrides)
        if args.volumes_per_institute is not None:  # validated again: e.g. federation.batch_size vs the fewer volumes
            cap = args.volumes_per_institute
            cfg = resolve_section(VfdaConfig, {}, {**overrides, "data": {"institutes": [
                {**i.model_dump(), "num_volumes": min(i.num_volumes, cap)} for i in cfg.data.institutes]}})
    except ConfigError as err:
        return fail(err)
    try:
        runs = _run_devices(args, cfg, feds)
    except (ConfigError, InputError) as err:  # e.g. a malformed --data dataset
        return fail(err)
    result = {"profile": args.profile, "num_rounds": cfg.federation.num_rounds,
              "volumes": {i.name: i.num_volumes for i in cfg.data.institutes},
              "local_steps": cfg.federation.local_steps, "torch": torch.__version__, "runs": runs,
              "max_dice_gap_vs_first": {r["device"]: max_dice_gap(runs[0], r) for r in runs[1:]},
              "speedup_vs_first": {r["device"]: runs[0]["wall_s"] / r["wall_s"] for r in runs[1:]}}
    print(json.dumps({k: result[k] for k in ("max_dice_gap_vs_first", "speedup_vs_first")}), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = args.out.with_name(args.out.name + ".tmp")
        tmp_out.write_text(json.dumps(result, indent=2) + "\n")
        tmp_out.replace(args.out)
    return 0


def _run_devices(args: argparse.Namespace, cfg: VfdaConfig, feds: tuple) -> list[dict[str, Any]]:
    """Every --devices entry in turn on the same dataset (--data, or one generated into a temporary folder)."""
    _task_identity()
    with tempfile.TemporaryDirectory(prefix="vfda-device-") as tmp:
        data_dir = args.data
        if data_dir is None:
            data_dir = Path(tmp) / "data"
            t = time.perf_counter()
            generate_dataset(cfg.data, data_dir, seed=cfg.seed)
            print(f"dataset ({args.profile}) generated in {time.perf_counter() - t:.1f} s", flush=True)
        runs = []
        for dev in args.devices:
            settings = RunSettings(config=cfg, data_dir=data_dir, out_dir=Path(tmp) / f"out-{dev.replace(':', '_')}",
                                   federations=feds)
            run = run_on(dev, settings, args.lanes)
            runs.append(run)
            print(f"{dev} ({run['device_name']}): {run['wall_s']:.1f} s", flush=True)
            for fid, rec in run["federations"].items():
                print(f"  {fid}: held-in {rec['heldin_dice']} held-out {rec['heldout_dice']} "
                      f"({rec['wall_s']:.1f} s)", flush=True)
    return runs


if __name__ == "__main__":
    sys.exit(main())
