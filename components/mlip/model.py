"""A MatRIS-style invariant MLIP, written as parts that a pipeline can cut between blocks.

Architecture (after MatRIS, HPC-AI-Team/MatRIS ``matris/model``; reconstructed at small scale):

- **embedding**: atom features ``h = Emb(Z)``; edge (bond) features ``e = W · rbf(r)`` from the
  enveloped Bessel basis of the edge length;
- **interaction block** (``num_blocks`` of them, the pipeline's unit):
  1. *three-body update on the line graph*: bonds are the nodes, angles the edges; angle features
     are ``W · [P_l(cos θ) ⊗ rbf(r_src)]``; one :class:`GraphAttentionLayer` updates the bond
     features (its update is scaled by the bond's own envelope so bonds enter/leave smoothly);
  2. *atom-graph update*: one :class:`GraphAttentionLayer` on atoms and edges;
- :class:`GraphAttentionLayer` = gated edge update ``GatedMLP([e, h_c, h_n])``, separable
  (per-feature-dimension) attention with a target-side and a source-side score normalised over the
  centre's neighbourhood (weighted by the envelope, so the softmax is smooth at the cutoff), and a
  gated node update ``GatedMLP([h, attn_t, attn_s])`` with a residual connection;
- **energy head**: per-atom ``ε_i = s · GatedMLP(h_i) + E_ref[Z_i]`` summed per structure.

Forces ``F = -∂E/∂x`` and stress ``σ = (1/V) ∂E/∂ε`` come from autograd through the geometry,
which every part recomputes from positions (and a strain ε applied to positions and cell): the
positions enter every block, which is what makes the pipelined step four-phase.

Reconstruction notes (MatRIS details not followed exactly): the source-side attention score is
normalised over the *centre's* neighbourhood (so graph parallelism needs one gather per layer and
no scatter to remote atoms); angle features are recomputed from the basis in each block instead of
being carried; no magnetic-moment head.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from components.mlip.basis import BesselBasis, PolynomialEnvelope, legendre
from components.mlip.config import MlipModelConfig
from components.mlip.graph import AtomGraph
from components.mlip.parallel import GraphParallel

State = tuple  # (h_local [n_loc, F], e_local [E_loc, F]) passed between blocks / pipeline stages


@dataclass
class Geometry:
    """Everything the layers need from positions (recomputed inside every pipeline stage)."""

    edge_basis: torch.Tensor    # [E, R] enveloped Bessel basis of edge lengths
    edge_env: torch.Tensor      # [E]    envelope u(r/cutoff)
    bond_env: torch.Tensor      # [E3]   envelope u(r/three_body_cutoff) of bonds
    angle_basis: torch.Tensor   # [A, (L+1) R]
    angle_weight: torch.Tensor  # [A]    product of the two bonds' envelopes


class GatedMLP(nn.Module):
    """``SiLU-MLP(x) ⊙ sigmoid(gate-MLP(x))`` (the GatedMLP of CHGNet/MatRIS), RMS-normalised input."""

    def __init__(self, d_in: int, d_out: int, hidden: int):
        super().__init__()
        self.norm = nn.RMSNorm(d_in)
        self.core = nn.Sequential(nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, d_out))
        self.gate = nn.Sequential(nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        return nn.functional.silu(self.core(x)) * torch.sigmoid(self.gate(x))


def segment_softmax(scores: torch.Tensor, index: torch.Tensor, num_segments: int,
                    weight: torch.Tensor) -> torch.Tensor:
    """Per-dimension softmax of ``scores [E, F]`` over the rows sharing ``index``, each row weighted
    by ``weight [E]``, with a sink: ``α = w e^s / (1 + Σ w e^s)``.

    The weight (the cutoff envelope) makes ``α`` fade as a row leaves the cutoff, but only together
    with the sink term ``1`` (a null row of score 0 and weight 1, [R]): without it a node's *only*
    row has ``α = w e^s / w e^s = 1`` for any ``w > 0`` and jumps to 0 at the cutoff, so the energy
    of an atom whose last neighbour (or a bond whose last angle partner) crosses the cutoff was
    discontinuous. Computed with a per-segment shift ``c`` (detached; it cancels exactly):
    ``α = w e^(s-c) / (e^(-c) + Σ w e^(s-c))``."""
    shift = torch.full((num_segments, scores.shape[1]), -torch.inf, dtype=scores.dtype, device=scores.device)
    shift = shift.scatter_reduce(0, index.unsqueeze(1).expand_as(scores), scores.detach(), "amax",
                                 include_self=True)
    shift = torch.nan_to_num(shift, neginf=0.0)
    ex = weight.unsqueeze(1) * torch.exp(scores - shift[index])
    den = torch.zeros_like(shift).index_add(0, index, ex) + torch.exp(-shift)
    return ex / den[index]


class GraphAttentionLayer(nn.Module):
    """Gated edge update + separable attention + gated node update (one MatRIS interaction layer)."""

    def __init__(self, dim: int):
        super().__init__()
        self.edge_update = GatedMLP(3 * dim, dim, dim)
        self.score_target = nn.Linear(2 * dim, dim)
        self.score_source = nn.Linear(2 * dim, dim)
        self.value = nn.Linear(dim, dim)
        self.node_update = GatedMLP(3 * dim, dim, dim)

    def forward(self, x: torch.Tensor, x_src_all: torch.Tensor, e: torch.Tensor, dst: torch.Tensor,
                src: torch.Tensor, weight: torch.Tensor,
                update_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [n, F]`` local nodes, ``x_src_all`` nodes addressed by ``src``, ``e [E, F]`` edges
        ``src -> dst`` (``dst`` local), ``weight [E]`` envelope weights."""
        x_dst, x_src = x[dst], x_src_all[src]
        e_upd = self.edge_update(torch.cat([e, x_dst, x_src], dim=1))
        alpha_t = segment_softmax(self.score_target(torch.cat([e_upd, x_dst], 1)), dst, x.shape[0], weight)
        alpha_s = segment_softmax(self.score_source(torch.cat([e_upd, x_src], 1)), dst, x.shape[0], weight)
        v = self.value(e_upd)
        attn_t = torch.zeros_like(x).index_add(0, dst, alpha_t * v)
        attn_s = torch.zeros_like(x).index_add(0, dst, alpha_s * v)
        dx = self.node_update(torch.cat([x, attn_t, attn_s], dim=1))
        if update_scale is not None:
            dx = dx * update_scale.unsqueeze(1)
        return x + dx, e + e_upd


class InteractionBlock(nn.Module):
    """Three-body (line-graph) bond update followed by the atom-graph update."""

    def __init__(self, dim: int, angle_dim: int):
        super().__init__()
        self.angle_embed = nn.Linear(angle_dim, dim)
        self.line_layer = GraphAttentionLayer(dim)
        self.atom_layer = GraphAttentionLayer(dim)

    def forward(self, state: State, graph: AtomGraph, geom: Geometry, gp: GraphParallel) -> State:
        h, e = state
        if graph.bond_edge.numel():  # also without angles: a bond's update must not depend on
            bonds = e[graph.bond_edge]  # whether an angle exists anywhere else (it would jump)
            a = self.angle_embed(geom.angle_basis)
            bonds, _ = self.line_layer(bonds, bonds, a, graph.angle_dst, graph.angle_src, geom.angle_weight,
                                       update_scale=geom.bond_env)
            e = e.index_copy(0, graph.bond_edge, bonds)
        h_all = gp.gather(h, graph)
        dst = graph.edge_center - graph.atom_range[0]
        h, e = self.atom_layer(h, h_all, e, dst, graph.edge_neighbor, geom.edge_env)
        return h, e


class EnergyHead(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.mlp = GatedMLP(dim, 1, dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.mlp(h).squeeze(-1)


class MatrisLikeMLIP(nn.Module):
    """Invariant MLIP; ``forward(graph, positions, strain) -> E [B]`` (the local part under GP)."""

    def __init__(self, cfg: MlipModelConfig | None = None):
        super().__init__()
        cfg = cfg or MlipModelConfig()
        self.cfg = cfg
        f = cfg.hidden_dim
        self.radial = BesselBasis(cfg.num_radial, cfg.cutoff, cfg.envelope_exponent)
        self.three_body_radial = BesselBasis(cfg.num_radial, cfg.three_body_cutoff, cfg.envelope_exponent)
        self.bond_envelope = PolynomialEnvelope(cfg.envelope_exponent)
        self.atom_embedding = nn.Embedding(cfg.max_z + 1, f)
        self.edge_embedding = nn.Linear(cfg.num_radial, f)
        angle_dim = (cfg.max_angular + 1) * cfg.num_radial
        self.blocks = nn.ModuleList(InteractionBlock(f, angle_dim) for _ in range(cfg.num_blocks))
        self.head = EnergyHead(f)
        # per-element reference energies and the energy scale (fitted from data, not trained)
        self.register_buffer("atom_ref", torch.zeros(cfg.max_z + 1))
        self.register_buffer("energy_scale", torch.ones(()))

    # -- geometry ---------------------------------------------------------------------------
    def geometry(self, graph: AtomGraph, positions: torch.Tensor, strain: torch.Tensor | None) -> Geometry:
        if strain is not None:  # x' = x (I + ε), cell' = cell (I + ε)
            deform = torch.eye(3, dtype=positions.dtype, device=positions.device) + strain
            positions = torch.einsum("ni,nij->nj", positions, deform[graph.batch])
            cell = graph.cell @ deform
        else:
            cell = graph.cell
        center, nbr = graph.edge_center, graph.edge_neighbor
        vec = positions[nbr] - positions[center] + torch.einsum("ei,eij->ej", graph.edge_shift,
                                                                cell[graph.batch[center]])
        r = torch.linalg.vector_norm(vec, dim=1)
        edge_basis, edge_env = self.radial(r)
        r_b = r[graph.bond_edge]
        u_b = vec[graph.bond_edge] / r_b.unsqueeze(1)
        bond_rbf, bond_env = self.three_body_radial(r_b)
        cos = (u_b[graph.angle_dst] * u_b[graph.angle_src]).sum(1).clamp(-1.0, 1.0)
        ang = legendre(cos, self.cfg.max_angular)                       # [A, L+1]
        angle_basis = (ang.unsqueeze(2) * bond_rbf[graph.angle_src].unsqueeze(1)).flatten(1)
        return Geometry(edge_basis, edge_env, bond_env, angle_basis,
                        bond_env[graph.angle_dst] * bond_env[graph.angle_src])

    # -- the parts a pipeline stage is made of ------------------------------------------------
    def embed(self, graph: AtomGraph, geom: Geometry) -> State:
        return self.atom_embedding(graph.local_numbers), self.edge_embedding(geom.edge_basis)

    def readout(self, state: State, graph: AtomGraph) -> torch.Tensor:
        h, _ = state
        z = graph.local_numbers
        eps = self.energy_scale * self.head(h) + self.atom_ref[z]
        return torch.zeros(graph.num_structures, dtype=h.dtype, device=h.device).index_add(0, graph.local_batch, eps)

    def forward(self, graph: AtomGraph, positions: torch.Tensor | None = None,
                strain: torch.Tensor | None = None, gp: GraphParallel | None = None) -> torch.Tensor:
        gp = gp or GraphParallel()
        positions = graph.positions if positions is None else positions
        geom = self.geometry(graph, positions, strain)
        state = self.embed(graph, geom)
        for block in self.blocks:
            state = block(state, graph, geom, gp)
        return self.readout(state, graph)

    def energy_forces_stress(self, graph: AtomGraph, create_graph: bool = False, stress: bool = True):
        """``E [B]``, ``F [N, 3]`` (eV/A) and ``σ [B, 3, 3]`` (eV/A^3) by autograd."""
        pos = graph.positions.detach().clone().requires_grad_(True)
        strain = torch.zeros_like(graph.cell).requires_grad_(True) if stress else None
        energy = self(graph, pos, strain)
        leaves = [pos] + ([strain] if stress else [])
        grads = torch.autograd.grad(energy.sum(), leaves, create_graph=create_graph)
        forces = -grads[0]
        sigma = None
        if stress:
            volume = torch.linalg.det(graph.cell).abs()
            sigma = grads[1] / volume.view(-1, 1, 1)
        return energy, forces, sigma


class ModelStage(nn.Module):
    """Blocks ``[first, last)`` of a model as one pipeline stage (plus the embedding on the first
    stage and the energy head on the last). ``forward(state, graph, positions, strain, gp)`` returns
    the next state, or the (local) energies ``E [B]`` on the last stage. The model stays whole and
    pure; this view is how a pipeline cuts it."""

    def __init__(self, model: MatrisLikeMLIP, first: int, last: int):
        super().__init__()
        n = len(model.blocks)
        if not 0 <= first < last <= n:
            raise ValueError(f"stage blocks [{first}, {last}): expected 0 <= first < last <= {n}")
        self.model_ref = [model]  # not a submodule: a stage owns only its own parameters
        self.first, self.last = first, last
        self.is_first, self.is_last = first == 0, last == n
        self.blocks = nn.ModuleList(model.blocks[first:last])
        if self.is_first:
            self.embedding = nn.ModuleList([model.atom_embedding, model.edge_embedding])
        if self.is_last:
            self.head = model.head

    @property
    def model(self) -> MatrisLikeMLIP:
        return self.model_ref[0]

    def stage_parameters(self) -> list[nn.Parameter]:
        """The parameters this stage owns and updates (its blocks, plus embedding / head)."""
        return list(self.parameters())

    def forward(self, state: State | None, graph: AtomGraph, positions: torch.Tensor,
                strain: torch.Tensor | None, gp: GraphParallel | None = None):
        gp = gp or GraphParallel()
        m = self.model
        geom = m.geometry(graph, positions, strain)
        if self.is_first:
            state = m.embed(graph, geom)
        for block in self.blocks:
            state = block(state, graph, geom, gp)
        return m.readout(state, graph) if self.is_last else state


def split_blocks(num_blocks: int, num_stages: int) -> list[tuple[int, int]]:
    """Contiguous, as-even-as-possible block ranges ``[(first, last), ...]`` for ``num_stages``."""
    if num_stages < 1:
        raise ValueError(f"num_stages={num_stages}: expected >= 1")
    if num_stages > num_blocks:
        raise ValueError(f"{num_stages} pipeline stages but the model has only {num_blocks} interaction "
                         f"blocks; expected stages <= model.num_blocks (each stage needs >= 1 block)")
    base, extra = divmod(num_blocks, num_stages)
    out, a = [], 0
    for s in range(num_stages):
        b = a + base + (1 if s < extra else 0)
        out.append((a, b))
        a = b
    return out


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def stage_modules(model: MatrisLikeMLIP, num_stages: int) -> list[ModelStage]:
    return [ModelStage(model, a, b) for a, b in split_blocks(len(model.blocks), num_stages)]


def fit_atom_ref(model: MatrisLikeMLIP, numbers: Sequence, energies: Sequence[float]) -> torch.Tensor:
    """Least-squares per-element reference energies ``E ≈ Σ_Z n_Z E_ref[Z]`` (set on the model)."""
    import numpy as np

    zs = sorted({int(z) for nums in numbers for z in nums})
    max_z = model.atom_ref.shape[0] - 1
    if zs and (zs[-1] > max_z or zs[0] < 1):
        from components.base import InputError

        bad = [z for z in zs if z > max_z or z < 1]
        raise InputError(f"model.max_z={max_z}: the data has atomic numbers {bad}; expected every Z in "
                         f"1..model.max_z (raise model.max_z to >= {max(zs)})")
    A = np.array([[np.sum(np.asarray(nums) == z) for z in zs] for nums in numbers], dtype=float)
    coef, *_ = np.linalg.lstsq(A, np.asarray(energies, dtype=float), rcond=None)
    ref = torch.zeros_like(model.atom_ref)
    ref[zs] = torch.as_tensor(coef, dtype=ref.dtype)
    with torch.no_grad():
        model.atom_ref.copy_(ref)
    return ref
