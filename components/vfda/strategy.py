"""Server-side strategies: Flower's FedAvg / FedProx, FedBN, and the explicit VFDA exchange.

- ``FedAvg`` and ``FedProx`` are Flower's own (``flwr.serverapp.strategy``); FedProx sends
  ``proximal-mu`` to the clients, which add the proximal term.
- :class:`FedBN` is FedAvg on the server plus ``fedbn=True`` in every train/evaluate config: clients
  keep their normalisation layers local and evaluate with them. The server still averages the
  uploaded normalisation layers, but only to have a model for institutes that never trained
  (the held-out institute) -- it never sends them back as a client's norm layers.
- :class:`VfdaExchange` (mixed into any of the three for the ``vfda*`` variants) takes each client's
  uploaded momentum statistics out of the reply *before* weight averaging (they are statistics, not
  weights), computes the global variance (Eq. 4, :func:`~components.vfda.vfda.global_variance`) and
  sends it with the next round's train messages.
- :class:`RoundRecorder` (mixed into all) records per-client metrics per round, logs failed clients
  (an error reply, or no reply at all within ``round_timeout_s``: a client that hangs or a lost
  SuperNode), and skips aggregation of a round with fewer than ``min_train_clients`` replies (the
  previous global model is kept), so one crashed client does not stop a federation.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedProx

from components.vfda.federation import Federation

log = logging.getLogger("paperworks.vfda.strategy")

VFDA_STATS = "vfda-stats"    # reply record: a client's Eq. 3 statistics
VFDA_GLOBAL = "vfda-global"  # train-message record: the server's Eq. 4 variance
CLIENT_INFO = "client"       # reply record: institute name and partition id


def _institute(msg: Message) -> str:
    info = msg.content.config_records.get(CLIENT_INFO) if msg.content is not None else None
    return str(info["institute"]) if info is not None and "institute" in info else f"node{msg.metadata.src_node_id}"


def _last_lines(reason: str, limit: int = 600) -> str:
    """The end of an error reason (a Ray/Flower traceback ends with the client's own message)."""
    text = reason.strip().rstrip("'>").strip()
    return text[-limit:]


def _metrics(msg: Message) -> dict[str, float]:
    rec = next(iter(msg.content.metric_records.values()), MetricRecord())
    return {k: float(v) for k, v in rec.items() if isinstance(v, (int, float))}


class FedBN(FedAvg):
    """FedBN (Li et al., ICLR 2021): normalisation layers stay on the clients."""

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        config["fedbn"] = True
        return super().configure_train(server_round, arrays, config, grid)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        config["fedbn"] = True
        return super().configure_evaluate(server_round, arrays, config, grid)


class RoundRecorder:
    """Per-round, per-client record; failure-tolerant aggregation (mixin before a Flower strategy)."""

    def __init__(self, *args: Any, min_train_clients: int = 1, norm_keys: Iterable[str] = (),
                 federation: str = "", round_timeout_s: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.min_train_clients = min_train_clients
        self.norm_keys = list(norm_keys)
        self.federation = federation
        self.round_timeout_s = round_timeout_s
        self.rounds: dict[int, dict[str, Any]] = {}
        self.client_norms: dict[str, dict[str, np.ndarray]] = {}
        self._sent: dict[tuple[int, str], list[int]] = {}  # (round, phase) -> destination node ids

    def _round(self, server_round: int) -> dict[str, Any]:
        return self.rounds.setdefault(server_round, {"round": server_round, "train": {}, "evaluate": {},
                                                     "failures": [], "aggregated": False})

    def _sending(self, server_round: int, phase: str, messages: Iterable[Message]) -> list[Message]:
        messages = list(messages)
        self._sent[(server_round, phase)] = sorted(int(m.metadata.dst_node_id) for m in messages)
        self._round(server_round)[f"t_{phase}_sent"] = time.time()
        return messages

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return self._sending(server_round, "train",
                             super().configure_train(server_round, arrays, config, grid))  # type: ignore[misc]

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self._sending(server_round, "evaluate",
                             super().configure_evaluate(server_round, arrays, config, grid))  # type: ignore[misc]

    def _split(self, server_round: int, replies: Iterable[Message], phase: str) -> list[Message]:
        """The successful replies, in institute order; every failure is recorded and logged: an
        error reply, and a node that was sent a message but did not reply at all (the grid returns
        without it after ``round_timeout_s``: a client still running or hung, a lost SuperNode)."""
        ok, rec, replied = [], self._round(server_round), set()
        for msg in replies:
            replied.add(int(msg.metadata.src_node_id))
            if msg.has_error():
                reason = _last_lines(msg.error.reason if msg.error else "unknown")
                rec["failures"].append({"phase": phase, "node": int(msg.metadata.src_node_id), "reason": reason})
                log.warning("%s round %d: %s failed on node %d: %s", self.federation, server_round, phase,
                            msg.metadata.src_node_id, reason.splitlines()[-1] if reason else "?")
            else:
                ok.append(msg)
        timeout = f"{self.round_timeout_s:g}" if self.round_timeout_s is not None else "?"
        for node in self._sent.pop((server_round, phase), []):
            if node not in replied:
                reason = f"no reply within round_timeout_s={timeout}"
                rec["failures"].append({"phase": phase, "node": node, "reason": reason})
                log.warning("%s round %d: %s failed on node %d: %s", self.federation, server_round, phase,
                            node, reason)
        return sorted(ok, key=_institute)  # a fixed order: aggregation is independent of arrival order

    def on_statistics(self, server_round: int, replies: list[Message]) -> None:
        """Hook for replies' extra records before weights are averaged (VFDA overrides it)."""

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        ok = self._split(server_round, replies, "train")
        rec = self._round(server_round)
        rec["t_train_received"] = time.time()
        for msg in ok:
            rec["train"][_institute(msg)] = _metrics(msg)
        self.on_statistics(server_round, ok)
        if self.norm_keys:
            for msg in ok:
                arrays = next(iter(msg.content.array_records.values()))
                self.client_norms[_institute(msg)] = {k: arrays[k].numpy() for k in self.norm_keys if k in arrays}
        if len(ok) < self.min_train_clients:
            log.warning("%s round %d: %d client(s) replied, fewer than min_train_clients=%d; keeping the "
                        "previous global model", self.federation, server_round, len(ok), self.min_train_clients)
            return None, None
        rec["aggregated"] = True
        return super().aggregate_train(server_round, ok)  # type: ignore[misc]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        ok = self._split(server_round, replies, "evaluate")
        self._round(server_round)["t_evaluate_received"] = time.time()
        for msg in ok:
            self._round(server_round)["evaluate"][_institute(msg)] = _metrics(msg)
        return super().aggregate_evaluate(server_round, ok)  # type: ignore[misc]


class VfdaExchange(RoundRecorder):
    """Explicit aggregation of VFDA statistics (mixin before a Flower strategy)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.global_var: ArrayRecord | None = None

    def on_statistics(self, server_round: int, replies: list[Message]) -> None:
        import torch

        from components.vfda.vfda import global_variance

        stats = []
        for msg in replies:
            if VFDA_STATS in msg.content:
                stats.append({k: torch.from_numpy(v.numpy()) for k, v in msg.content[VFDA_STATS].items()})
                del msg.content[VFDA_STATS]  # statistics are not averaged as weights
        var = global_variance(stats)     # Eq. 4
        if var:
            self.global_var = ArrayRecord({k: v for k, v in var.items()})
            self._round(server_round)["global_var_mean"] = {k: float(v.mean()) for k, v in var.items()}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        messages = list(super().configure_train(server_round, arrays, config, grid))  # type: ignore[misc]
        if self.global_var is not None:
            for msg in messages:
                msg.content[VFDA_GLOBAL] = self.global_var
        return messages


_BASE = {"fedavg": FedAvg, "fedprox": FedProx, "fedbn": FedBN}


def make_strategy(fed: Federation, *, num_clients: int, min_train_clients: int, proximal_mu: float,
                  norm_keys: Iterable[str] = (), round_timeout_s: float | None = None) -> FedAvg:
    """The Flower strategy of one federation: base strategy + recorder (+ VFDA exchange)."""
    if fed.strategy not in _BASE:
        raise ValueError(f"strategy={fed.strategy!r}: expected one of {sorted(_BASE)}")
    base = _BASE[fed.strategy]
    mixin = VfdaExchange if fed.uses_vfda else RoundRecorder
    cls = type(f"{base.__name__}{'Vfda' if fed.uses_vfda else ''}", (mixin, base), {})
    kwargs: dict[str, Any] = dict(fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=num_clients,
                                  min_evaluate_nodes=num_clients, min_available_nodes=num_clients)
    if fed.strategy == "fedprox":
        kwargs["proximal_mu"] = proximal_mu
    return cls(min_train_clients=min_train_clients, federation=fed.id, round_timeout_s=round_timeout_s,
               norm_keys=list(norm_keys) if fed.strategy == "fedbn" else [], **kwargs)
