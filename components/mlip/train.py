"""Conservative losses, the reference single-process trainer, evaluation and the baseline.

The training loss of a conservative MLIP (MatRIS loss weights e:f:s = 5:5:0.1 at paper scale):

    L = w_E · mean((E - E_ref)/N)^2 + w_F · mean(F - F_ref)^2 + w_S · mean(σ - σ_ref)^2,
    F = -∂E/∂x,  σ = (1/V) ∂E/∂ε                                                   (forces, stress)

It is split into an *energy* term (a function of E) and a *gradient* term (a function of ∂E/∂x and
∂E/∂ε) because a pipeline computes them on different stages: E on the last stage, the position
gradient after the force backward has reached the first stage. ``loss.backward()`` through
``autograd.grad(..., create_graph=True)`` is the double backward the four-phase pipeline reproduces.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from components.mlip.config import MlipTrainConfig
from components.mlip.data import EV_PER_A3_TO_GPA, Structure
from components.mlip.graph import AtomGraph, GraphDataset
from components.mlip.model import MatrisLikeMLIP, fit_atom_ref


@dataclass(frozen=True)
class LossWeights:
    energy: float = 1.0
    force: float = 1.0
    stress: float = 0.0

    @classmethod
    def from_config(cls, cfg: MlipTrainConfig) -> "LossWeights":
        return cls(cfg.energy_weight, cfg.force_weight, cfg.stress_weight)

    @property
    def needs_strain(self) -> bool:
        return self.stress > 0


def energy_loss(energy: torch.Tensor, graph: AtomGraph, w: LossWeights) -> torch.Tensor:
    """``w_E · mean(((E - E_ref) / N)^2)`` over the batch's structures."""
    if w.energy == 0:
        return energy.sum() * 0.0
    if graph.energy is None:
        raise ValueError("batch has no energy labels")
    err = (energy - graph.energy) / graph.num_atoms.to(energy.dtype)
    return w.energy * (err ** 2).mean()


def gradient_loss(dE_dx: torch.Tensor, dE_dstrain: torch.Tensor | None, graph: AtomGraph,
                  w: LossWeights) -> torch.Tensor:
    """``w_F · mean((F - F_ref)^2) + w_S · mean((σ - σ_ref)^2)`` with ``F = -∂E/∂x`` and
    ``σ = (1/V) ∂E/∂ε`` in GPa."""
    loss = dE_dx.sum() * 0.0
    if w.force > 0:
        if graph.forces is None:
            raise ValueError("batch has no force labels")
        loss = loss + w.force * ((-dE_dx - graph.forces) ** 2).mean()
    if w.stress > 0:
        if graph.stress is None or dE_dstrain is None:
            raise ValueError("stress_weight > 0 but the batch has no stress labels (or no strain)")
        volume = torch.linalg.det(graph.cell).abs().view(-1, 1, 1)
        sigma = dE_dstrain / volume
        loss = loss + w.stress * (((sigma - graph.stress) * EV_PER_A3_TO_GPA) ** 2).mean()
    return loss


def conservative_loss(model: MatrisLikeMLIP, graph: AtomGraph, w: LossWeights) -> torch.Tensor:
    """The full loss with forces (and stress) from ``autograd.grad(create_graph=True)``;
    ``.backward()`` on it is the single-process double backward."""
    pos = graph.positions.detach().clone().requires_grad_(True)
    strain = torch.zeros_like(graph.cell).requires_grad_(True) if w.needs_strain else None
    energy = model(graph, pos, strain)
    leaves = [pos] + ([strain] if strain is not None else [])
    grads = torch.autograd.grad(energy.sum(), leaves, create_graph=True)
    return energy_loss(energy, graph, w) + gradient_loss(grads[0], grads[1] if strain is not None else None,
                                                         graph, w)


def reference_gradients(model: MatrisLikeMLIP, microbatches: Sequence[AtomGraph],
                        w: LossWeights) -> dict[str, torch.Tensor]:
    """Parameter gradients of ``mean over micro-batches of conservative_loss`` (double backward)."""
    model.zero_grad(set_to_none=True)
    for g in microbatches:
        (conservative_loss(model, g, w) / len(microbatches)).backward()
    return {n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
            for n, p in model.named_parameters()}


# -- evaluation ------------------------------------------------------------------------------
def evaluate(model: MatrisLikeMLIP, data: GraphDataset, batch_size: int = 8,
             dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """MAE of energy per atom (eV/atom), force components (eV/A) and stress components (GPa)."""
    e_err, f_err, s_err, n_struct = [], [], [], 0
    model.eval()
    for g in data.batches(batch_size, dtype=dtype):
        energy, forces, sigma = model.energy_forces_stress(g, create_graph=False, stress=g.stress is not None)
        e_err.append(((energy.detach() - g.energy) / g.num_atoms).abs())
        f_err.append((forces.detach() - g.forces).abs().flatten())
        if sigma is not None:
            s_err.append(((sigma.detach() - g.stress) * EV_PER_A3_TO_GPA).abs().flatten())
        n_struct += g.num_structures
    model.train()
    out = {"energy_mae_eV_per_atom": float(torch.cat(e_err).mean()),
           "force_mae_eV_per_A": float(torch.cat(f_err).mean()), "structures": n_struct}
    if s_err:
        out["stress_mae_GPa"] = float(torch.cat(s_err).mean())
    return out


def per_element_mean_baseline(train: Sequence[Structure], test: Sequence[Structure]) -> dict[str, float]:
    """The baseline the model must beat: per-element mean energies (least squares, ``E ≈ Σ n_Z μ_Z``)
    and per-element mean force vectors, fitted on ``train`` and scored on ``test``."""
    zs = sorted({int(z) for s in train for z in s.numbers})
    A = np.array([[np.sum(s.numbers == z) for z in zs] for s in train], dtype=float)
    mu, *_ = np.linalg.lstsq(A, np.array([s.energy for s in train]), rcond=None)
    mu_z = dict(zip(zs, mu))
    f_all = np.concatenate([s.forces for s in train])
    z_all = np.concatenate([s.numbers for s in train])
    f_mean = {z: f_all[z_all == z].mean(0) for z in zs}
    e_err, f_err = [], []
    for s in test:
        e_pred = sum(mu_z.get(int(z), 0.0) for z in s.numbers)
        e_err.append(abs(e_pred - s.energy) / s.num_atoms)
        pred = np.stack([f_mean.get(int(z), np.zeros(3)) for z in s.numbers])
        f_err.append(np.abs(pred - s.forces).ravel())
    return {"energy_mae_eV_per_atom": float(np.mean(e_err)), "force_mae_eV_per_A": float(np.concatenate(f_err).mean())}


# -- the reference trainer ---------------------------------------------------------------------
@dataclass
class TrainResult:
    history: list[dict[str, float]]
    steps: int
    epochs_done: float
    seconds: float
    stopped_early: bool


def prepare_model(model: MatrisLikeMLIP, train: Sequence[Structure]) -> None:
    """Fit the per-element reference energies and set the energy scale to the force RMS."""
    fit_atom_ref(model, [s.numbers for s in train], [s.energy for s in train])
    f_rms = float(np.sqrt(np.mean(np.concatenate([s.forces for s in train]) ** 2)))
    with torch.no_grad():
        model.energy_scale.fill_(max(f_rms, 1e-3))


def train_reference(model: MatrisLikeMLIP, train: GraphDataset, val: GraphDataset, cfg: MlipTrainConfig,
                    seed: int = 0, progress: Callable[..., None] | None = None,
                    dtype: torch.dtype = torch.float32) -> TrainResult:
    """Single-process training with the double-backward conservative loss (Adam, cosine LR)."""
    w = LossWeights.from_config(cfg)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(k, total) / total)))
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    step, stopped = 0, False
    for epoch in range(cfg.epochs):
        running = []
        for g in train.batches(cfg.batch_size, shuffle=True, generator=gen, dtype=dtype):
            loss = conservative_loss(model, g, w)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            sched.step()
            running.append(float(loss.detach()))
            step += 1
            if time.perf_counter() - t0 > cfg.max_minutes * 60:
                stopped = True
                break
        row = {"epoch": epoch + 1, "train_loss": float(np.mean(running)), **{f"val_{k}": v for k, v in
                                                                          evaluate(model, val, dtype=dtype).items()
                                                                          if k != "structures"}}
        history.append(row)
        if progress:
            progress("epoch %d: loss %.4f, val force MAE %.3f eV/A, val energy MAE %.4f eV/atom", epoch + 1,
                     row["train_loss"], row["val_force_mae_eV_per_A"], row["val_energy_mae_eV_per_atom"])
        if stopped:
            break
    epochs_done = (step / steps_per_epoch)
    return TrainResult(history, step, epochs_done, time.perf_counter() - t0, stopped)


def _max_err(err: float, diff: float) -> float:
    """``max(err, |diff|)`` where a non-finite difference (NaN, inf) makes the error ``inf``: a plain
    ``max(err, nan)`` returns ``err`` and would report a broken model as exact."""
    e = abs(diff)
    return math.inf if not math.isfinite(e) else max(err, e)


def finite_difference_check(model: MatrisLikeMLIP, data: GraphDataset, index: int = 0, atoms: Sequence[int] = (0, 1),
                            h: float = 1e-4) -> dict[str, float]:
    """Compare autograd forces/stress with central differences of the energy (float64 copy of the
    model): ``F_ia ≈ -(E(x + h e_ia) - E(x - h e_ia)) / 2h``, ``σ_ab ≈ (E(ε_ab=+h) - E(-h)) / 2hV``."""
    import copy

    m = copy.deepcopy(model).double()
    g = data.batch([index], dtype=torch.float64)
    _, forces, sigma = m.energy_forces_stress(g, create_graph=False, stress=True)
    err_f = 0.0
    with torch.no_grad():
        for i in atoms:
            for a in range(3):
                pos = g.positions.clone()
                pos[i, a] += h
                e_plus = m(g, pos)
                pos[i, a] -= 2 * h
                e_minus = m(g, pos)
                fd = -(e_plus - e_minus).sum() / (2 * h)
                err_f = _max_err(err_f, float(fd - forces[i, a]))
        err_s = 0.0
        volume = float(torch.linalg.det(g.cell).abs()[0])
        for a, b in ((0, 0), (0, 1), (2, 2)):
            eps = torch.zeros_like(g.cell)
            eps[0, a, b] = eps[0, b, a] = h / (2 if a != b else 1)
            fd = (m(g, g.positions, eps) - m(g, g.positions, -eps)).sum() / (2 * h) / volume
            err_s = _max_err(err_s, float(fd - sigma[0, a, b]))
    return {"force_max_abs_err_eV_per_A": err_f, "stress_max_abs_err_eV_per_A3": err_s,
            "force_scale_eV_per_A": float(forces[list(atoms)].abs().max())}
