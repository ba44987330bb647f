"""``FourPhaseStage``: the four phases of one pipeline stage of a conservative-MLIP training step.

Stage s computes ``h_s = f_s(h_{s-1}, x; θ_s)`` (``x`` = positions and strain, entering every stage);
the last stage's output is the energy ``E``. The step's loss ``L = L_E(E) + L_F(∂E/∂x)`` needs the
double backward; cut at the stage boundaries it becomes four point-to-point sweeps (notes §1.2):

  P1 energy forward   →  ``h_s = f_s(h_{s-1}, x)``; last stage: ``ē = ∂L_E/∂E``
  P2 force backward   ←  ``(a_{s-1}, g_s) = J_{h_{s-1}}ᵀ a_s, J_xᵀ a_s`` with create_graph
                         (``a_s = ∂E/∂h_s``, ``a_{S-1} = 1``); the partial sum ``G = Σ g`` rides along;
                         first stage: ``v = ∂L_F/∂G``                         (no parameter gradients)
  P3 second-order     →  backprop the P2 outputs with cotangents ``(ā_{s-1}, v)`` into
                         ``θ_s`` (grad), ``a_s`` (→ ``ā_s``, sent on with v) and ``h_{s-1}`` (kept)
  P4 backward         ←  VJP of ``h_s = f_s(h_{s-1}, x)`` with ``h̄_s`` (last stage: ``ē``) into ``θ_s``
                         and ``h_{s-1}``; ``h̄_{s-1} = (P4 part) + (P3 part)`` is sent back

Summed over stages and micro-batches, the parameter gradients equal single-process
``loss.backward()`` through ``autograd.grad(E, x, create_graph=True)`` (tested to 1e-9 in float64).

Graph parallelism: every rank of a GP group runs the same phases on its atoms; collectives inside
the model make the autograd graphs span the group. The energy loss uses the all-reduced E but the
P2/P4 backward is seeded from the *local* energy; the partial forces are all-reduced at stage 0
(notes §1.5: seeding from the replicated energy would be wrong). Parameter gradients are partial
per GP rank and per DP replica and are summed by the runtime afterwards.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from components.mlip.graph import AtomGraph
from components.mlip.model import ModelStage
from components.mlip.parallel import GraphParallel
from components.mlip.train import LossWeights, energy_loss, gradient_loss

Tensors = tuple  # a message: a tuple of tensors


@dataclass
class _MicroBatchState:
    graph: AtomGraph
    geo: tuple[torch.Tensor, ...]                  # leaves: positions (and strain)
    h_in: tuple[torch.Tensor, ...] = ()            # received activations (leaves), empty on stage 0
    out: tuple[torch.Tensor, ...] = ()             # h_s (or the local energies on the last stage)
    a_out: tuple[torch.Tensor, ...] = ()           # cotangent seed of ``out`` used in P2
    p2_a_in: tuple[torch.Tensor, ...] = ()         # P2 outputs (with graph) ...
    p2_g: tuple[torch.Tensor, ...] = ()            # ... and this stage's position(/strain) gradient
    v: tuple[torch.Tensor, ...] = ()               # ∂L_F/∂G (first stage only, after P2)
    ebar: torch.Tensor | None = None               # ∂L_E/∂E (last stage only, after P1)
    hbar_in_p3: tuple[torch.Tensor, ...] = ()      # P3 contribution to the cotangent of h_in
    losses: dict[str, float] = field(default_factory=dict)


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().requires_grad_(True)


def _zeros_if_none(grads: Sequence[torch.Tensor | None], like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, like)]


class FourPhaseStage:
    """Runs P1..P4 of one (virtual) pipeline stage for any number of micro-batches in flight.

    ``loss_scale`` multiplies every micro-batch's loss (``1 / (micro-batches x DP replicas)`` so the
    summed gradients are those of the mean loss). Parameter gradients accumulate in ``p.grad``.
    """

    def __init__(self, module: ModelStage, weights: LossWeights, loss_scale: float = 1.0,
                 gp: GraphParallel | None = None):
        self.module = module
        self.weights = weights
        self.loss_scale = loss_scale
        self.gp = gp or GraphParallel()
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.is_first, self.is_last = module.is_first, module.is_last
        self._mb: dict[int, _MicroBatchState] = {}
        self.losses: dict[int, dict[str, float]] = {}

    @property
    def in_flight(self) -> int:
        return len(self._mb)

    # -- P1: energy forward (→) ---------------------------------------------------------------------
    def p1_energy_forward(self, mb: int, graph: AtomGraph, h_in: Tensors = ()) -> Tensors:
        """Returns ``h_s`` to send to the next stage (nothing on the last stage)."""
        pos = _leaf(graph.positions)
        geo = (pos, _leaf(torch.zeros_like(graph.cell))) if self.weights.needs_strain else (pos,)
        st = _MicroBatchState(graph, geo, h_in=tuple(_leaf(t) for t in h_in))
        out = self.module(st.h_in or None, graph, pos, geo[1] if len(geo) > 1 else None, self.gp)
        st.out = (out,) if torch.is_tensor(out) else tuple(out)
        if self.is_last:  # the energy term of the loss lives where E is computed
            energy = _leaf(self.gp.all_reduce(st.out[0].detach()))
            loss_e = energy_loss(energy, graph, self.weights) * self.loss_scale
            (st.ebar,) = torch.autograd.grad(loss_e, energy)
            st.losses["energy"] = float(loss_e.detach())
        self._mb[mb] = st
        return () if self.is_last else tuple(t.detach() for t in st.out)

    # -- P2: force backward with create_graph (←) ------------------------------------------------
    def p2_force_backward(self, mb: int, a_out: Tensors = (), g_partial: Tensors = ()) -> Tensors:
        """Consumes ``a_s`` and the running partial ``G`` from the next stage; returns
        ``(a_{s-1}..., G...)`` for the previous stage (nothing on the first stage, which turns the
        full G into the force loss and its cotangent ``v``)."""
        st = self._mb[mb]
        if self.is_last:
            st.a_out = (torch.ones_like(st.out[0]),)          # a_{S-1} = ∂E/∂E (local energy seed)
        else:
            st.a_out = tuple(_leaf(t) for t in a_out)
        inputs = st.h_in + st.geo
        grads = torch.autograd.grad(st.out, inputs, grad_outputs=st.a_out, create_graph=True,
                                    retain_graph=True, allow_unused=True)
        grads = _zeros_if_none(grads, inputs)
        n_h = len(st.h_in)
        st.p2_a_in, st.p2_g = tuple(grads[:n_h]), tuple(grads[n_h:])
        if g_partial:
            g_total = tuple(g.detach() + part for g, part in zip(st.p2_g, g_partial))
        else:
            g_total = tuple(g.detach() for g in st.p2_g)
        if not self.is_first:
            return tuple(a.detach() for a in st.p2_a_in) + g_total
        # first stage: G = Σ_s g_s is complete -> force (and stress) loss -> v = ∂L_F/∂G
        g_full = tuple(_leaf(self.gp.all_reduce(g)) for g in g_total)
        loss_f = gradient_loss(g_full[0], g_full[1] if len(g_full) > 1 else None, st.graph,
                               self.weights) * self.loss_scale
        st.v = torch.autograd.grad(loss_f, g_full, allow_unused=True)
        st.v = tuple(_zeros_if_none(st.v, g_full))
        st.losses["force"] = float(loss_f.detach())
        return ()

    # -- P3: second-order sweep (→) --------------------------------------------------------------
    def p3_second_order(self, mb: int, abar_in: Tensors = (), v: Tensors = ()) -> Tensors:
        """Consumes ``ā_{s-1}`` and ``v`` from the previous stage (the first stage uses its own v);
        returns ``(ā_s..., v...)`` for the next stage (nothing on the last stage)."""
        st = self._mb[mb]
        v = st.v if self.is_first else tuple(v)
        outputs = list(st.p2_a_in) + list(st.p2_g)
        cotangents = list(abar_in) + list(v)
        pairs = [(o, c) for o, c in zip(outputs, cotangents) if o.requires_grad]
        wrt_a = [] if self.is_last else list(st.a_out)
        wrt = self.params + wrt_a + list(st.h_in)
        if pairs:
            grads = torch.autograd.grad([o for o, _ in pairs], wrt, grad_outputs=[c for _, c in pairs],
                                        retain_graph=True, allow_unused=True)
        else:
            grads = (None,) * len(wrt)
        self._accumulate(grads[: len(self.params)])
        n_p, n_a = len(self.params), len(wrt_a)
        abar_out = _zeros_if_none(grads[n_p:n_p + n_a], wrt_a)
        st.hbar_in_p3 = tuple(_zeros_if_none(grads[n_p + n_a:], st.h_in))
        st.p2_a_in, st.p2_g = (), ()                        # the create_graph graph (A2) is freed here
        return () if self.is_last else tuple(a.detach() for a in abar_out) + tuple(x.detach() for x in v)

    # -- P4: backward through the energy forward (←) ------------------------------------------------
    def p4_backward(self, mb: int, hbar_out: Tensors = ()) -> Tensors:
        """Consumes ``h̄_s`` (the last stage seeds ``ē``); returns ``h̄_{s-1}`` (nothing on stage 0)."""
        st = self._mb.pop(mb)
        seed = (st.ebar,) if self.is_last else tuple(hbar_out)
        wrt = self.params + list(st.h_in)
        grads = torch.autograd.grad(st.out, wrt, grad_outputs=seed, allow_unused=True)
        self._accumulate(grads[: len(self.params)])
        self.losses[mb] = st.losses
        if self.is_first:
            return ()
        hbar = _zeros_if_none(grads[len(self.params):], st.h_in)
        return tuple(h.detach() + h3 for h, h3 in zip(hbar, st.hbar_in_p3))

    # -- helpers -------------------------------------------------------------------------------
    def _accumulate(self, grads: Sequence[torch.Tensor | None]) -> None:
        with torch.no_grad():
            for p, g in zip(self.params, grads):
                if g is None:
                    continue
                if p.grad is None:
                    p.grad = g.detach().clone()
                else:
                    p.grad.add_(g)

    def run(self, phase: int, mb: int, graph: AtomGraph | None, inputs: Tensors) -> Tensors:
        """Dispatch one action (the runtime's entry point)."""
        if phase == 1:
            return self.p1_energy_forward(mb, graph, inputs)
        if phase == 2:
            n = len(inputs) - len(self._geo_shapes(mb)) if inputs else 0
            return self.p2_force_backward(mb, inputs[:n], inputs[n:])
        if phase == 3:
            n = len(inputs) - len(self._geo_shapes(mb)) if inputs else 0
            return self.p3_second_order(mb, inputs[:n], inputs[n:])
        if phase == 4:
            return self.p4_backward(mb, inputs)
        raise ValueError(f"phase={phase}: expected 1..4")

    def _geo_shapes(self, mb: int) -> tuple[torch.Size, ...]:
        return tuple(g.shape for g in self._mb[mb].geo)


def run_local_pipeline(stages: Sequence[FourPhaseStage], microbatches: Sequence[AtomGraph],
                       order: Sequence[tuple[int, int, int]] | None = None) -> None:
    """Run all four phases of ``stages`` (one process, no communication) for ``microbatches``.

    ``order`` is a list of ``(phase, microbatch, stage)`` in a valid dependency order (default:
    micro-batch by micro-batch)."""
    S = len(stages)
    if order is None:
        from components.januspipe.schedules import chain

        order = [(p, m, s) for m in range(len(microbatches)) for p, s in chain(S)]
    mail: dict[tuple[int, int, int], Tensors] = {}
    for p, m, s in order:
        out = stages[s].run(p, m, microbatches[m], mail.pop((p, m, s), ()))
        dst = s + 1 if p in (1, 3) else s - 1
        if 0 <= dst < S and out:
            mail[(p, m, dst)] = out


def run_schedule_in_process(schedule, stages: Sequence[FourPhaseStage], microbatches: Sequence[AtomGraph]) -> list:
    """Execute a schedule's per-device action lists in one process: devices take turns, each running
    its next action as soon as that action's input message exists (the same lists, the same
    per-device order as the distributed runtime; no timing). Returns the global execution order.
    Raises ``ScheduleError`` if no device can proceed (a deadlocking list)."""
    from components.januspipe.schedules import ScheduleError, predecessor, successor

    V = schedule.num_stages
    ptr = [0] * schedule.num_devices
    mail: dict = {}
    done: set = set()
    executed = []
    remaining = sum(len(a) for a in schedule.actions)
    while remaining:
        progressed = False
        for d, acts in enumerate(schedule.actions):
            while ptr[d] < len(acts):
                a = acts[ptr[d]]
                k = (a.phase, a.microbatch, a.stage)
                pred = predecessor(a, V)
                if pred is not None and pred not in done:
                    break
                out = stages[a.stage].run(a.phase, a.microbatch, microbatches[a.microbatch], mail.pop(a, ()))
                nxt = successor(a, V)
                if nxt is not None and out:
                    mail[nxt] = out
                done.add(a)
                executed.append(k)
                ptr[d] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            raise ScheduleError(f"{schedule.label}: no device can proceed (deadlock) with {remaining} actions left")
    return executed
