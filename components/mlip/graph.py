"""Atom graph, three-body line graph, batching and graph-parallel (GP) partitions.

An :class:`AtomGraph` holds a batch of structures. Its *topology* (which atom pairs are edges, the
periodic image of each edge, which bond pairs form angles) is fixed when the batch is built; the
*geometry* (edge vectors, lengths, angles) is recomputed from positions inside the model, so that
forces ``-dE/dx`` and stress ``(1/V) dE/d(strain)`` follow by autograd.

- atom graph: directed edges ``center -> neighbor`` for every pair closer than ``cutoff`` (both
  directions present), with integer cell shifts ``S`` so that
  ``r_cn = x_n - x_c + S @ cell``;
- line graph (three-body): the *bonds* are the edges shorter than ``three_body_cutoff``; an *angle*
  is an ordered pair of distinct bonds sharing their center atom ``(c->n, c->m)``.

Graph parallelism (GP, Sriram et al., ICLR 2022) splits one batch's atoms into contiguous ranges;
rank ``g`` owns the atoms of its range, every edge whose *center* it owns and every angle whose
bonds it owns. Everything a layer aggregates is then local except the neighbour features, which
:class:`GraphParallel` gathers once per layer (see :mod:`components.mlip.model`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
import torch

from components.base import InputError
from components.mlip.data import Structure


@dataclass
class Topology:
    """Neighbour topology of one structure (numpy, built once and cached)."""

    edge_center: np.ndarray    # [E]
    edge_neighbor: np.ndarray  # [E]
    edge_shift: np.ndarray     # [E, 3] integer cell offsets
    bond_edge: np.ndarray      # [E3] edges inside the three-body cutoff
    angle_dst: np.ndarray      # [A] index into bonds (the bond being updated)
    angle_src: np.ndarray      # [A] index into bonds (the other bond at the same center)


def build_topology(s: Structure, cutoff: float, three_body_cutoff: float) -> Topology:
    from ase import Atoms
    from ase.neighborlist import neighbor_list

    atoms = Atoms(numbers=s.numbers, positions=s.positions, cell=s.cell, pbc=s.pbc)
    if any(s.pbc) and np.linalg.det(s.cell) == 0:
        raise InputError(f"structure with pbc={s.pbc.tolist()} has a singular cell; expected a 3-D cell")
    i, j, S, d = neighbor_list("ijSd", atoms, cutoff)
    order = np.lexsort((j, i))  # sorted by center (GP ranges are then contiguous)
    i, j, S, d = i[order], j[order], S[order], d[order]
    bond = np.nonzero(d < three_body_cutoff)[0]
    centers = i[bond]
    dst, src = [], []
    # bonds are sorted by center: angles are all ordered pairs inside each center's run
    starts = np.searchsorted(centers, np.arange(len(s.numbers)))
    ends = np.searchsorted(centers, np.arange(len(s.numbers)), side="right")
    for a, b in zip(starts, ends):
        k = b - a
        if k > 1:
            idx = np.arange(a, b)
            p, q = np.meshgrid(idx, idx, indexing="ij")
            keep = p != q
            dst.append(p[keep])
            src.append(q[keep])
    cat = (lambda xs: np.concatenate(xs) if xs else np.zeros(0, dtype=np.int64))
    return Topology(i.astype(np.int64), j.astype(np.int64), S.astype(np.int64), bond.astype(np.int64),
                    cat(dst).astype(np.int64), cat(src).astype(np.int64))


@dataclass
class AtomGraph:
    """A batch of structures as torch tensors; the topology fields describe the *local* part.

    With no graph parallelism the local part is the whole batch (``atom_range == (0, N)``).
    """

    numbers: torch.Tensor        # [N] long
    batch: torch.Tensor          # [N] structure index of each atom
    positions: torch.Tensor      # [N, 3]
    cell: torch.Tensor           # [B, 3, 3]
    num_atoms: torch.Tensor      # [B]
    edge_center: torch.Tensor    # [E_loc] global atom index
    edge_neighbor: torch.Tensor  # [E_loc] global atom index
    edge_shift: torch.Tensor     # [E_loc, 3] float cell offsets
    bond_edge: torch.Tensor      # [E3_loc] index into local edges
    angle_dst: torch.Tensor      # [A_loc] index into local bonds
    angle_src: torch.Tensor      # [A_loc] index into local bonds
    energy: torch.Tensor | None = None   # [B]
    forces: torch.Tensor | None = None   # [N, 3]
    stress: torch.Tensor | None = None   # [B, 3, 3]
    atom_range: tuple[int, int] = (0, 0)
    num_parts: int = 1
    part_ranges: tuple[tuple[int, int], ...] = field(default_factory=tuple)

    @property
    def num_structures(self) -> int:
        return int(self.cell.shape[0])

    @property
    def num_atoms_total(self) -> int:
        return int(self.numbers.shape[0])

    @property
    def num_local_atoms(self) -> int:
        return self.atom_range[1] - self.atom_range[0]

    @property
    def local_numbers(self) -> torch.Tensor:
        return self.numbers[self.atom_range[0]:self.atom_range[1]]

    @property
    def local_batch(self) -> torch.Tensor:
        return self.batch[self.atom_range[0]:self.atom_range[1]]

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> "AtomGraph":
        def conv(t):
            if t is None:
                return None
            if t.is_floating_point():
                return t.to(dtype=dtype or t.dtype, device=device)
            return t.to(device=device)
        return replace(self, **{k: conv(getattr(self, k)) for k in (
            "numbers", "batch", "positions", "cell", "num_atoms", "edge_center", "edge_neighbor",
            "edge_shift", "bond_edge", "angle_dst", "angle_src", "energy", "forces", "stress")})

    def partition(self, part: int, num_parts: int) -> "AtomGraph":
        """The local view of GP rank ``part`` of ``num_parts`` (atoms split into contiguous ranges
        with about equal edge counts)."""
        if num_parts < 1 or not 0 <= part < num_parts:
            raise ValueError(f"part={part}, num_parts={num_parts}: expected 0 <= part < num_parts")
        if self.num_parts != 1:
            raise ValueError("graph is already partitioned")
        n = self.num_atoms_total
        if num_parts > n:
            raise InputError(f"graph-parallel degree {num_parts} exceeds the {n} atoms of the micro-batch")
        ranges = balanced_ranges(self.edge_center, n, num_parts)
        a0, a1 = ranges[part]
        e_keep = (self.edge_center >= a0) & (self.edge_center < a1)
        e_idx = torch.nonzero(e_keep).flatten()
        new_edge = torch.full((self.edge_center.shape[0],), -1, dtype=torch.long)
        new_edge[e_idx] = torch.arange(len(e_idx))
        b_keep = e_keep[self.bond_edge]
        b_idx = torch.nonzero(b_keep).flatten()
        new_bond = torch.full((self.bond_edge.shape[0],), -1, dtype=torch.long)
        new_bond[b_idx] = torch.arange(len(b_idx))
        a_keep = b_keep[self.angle_dst]
        return replace(
            self, edge_center=self.edge_center[e_idx], edge_neighbor=self.edge_neighbor[e_idx],
            edge_shift=self.edge_shift[e_idx], bond_edge=new_edge[self.bond_edge[b_idx]],
            angle_dst=new_bond[self.angle_dst[a_keep]], angle_src=new_bond[self.angle_src[a_keep]],
            atom_range=(a0, a1), num_parts=num_parts, part_ranges=tuple(ranges))


def balanced_ranges(edge_center: torch.Tensor, num_atoms: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous atom ranges with about equal numbers of edges (each range >= 1 atom)."""
    counts = torch.bincount(edge_center, minlength=num_atoms).double() + 1.0
    cum = torch.cumsum(counts, 0)
    bounds = [0]
    for g in range(1, parts):
        target = cum[-1] * g / parts
        b = int(torch.searchsorted(cum, target).item()) + 1
        b = max(b, bounds[-1] + 1)
        b = min(b, num_atoms - (parts - g))
        bounds.append(b)
    bounds.append(num_atoms)
    return [(bounds[g], bounds[g + 1]) for g in range(parts)]


def collate(structures: Sequence[Structure], topologies: Sequence[Topology],
            dtype: torch.dtype = torch.float32) -> AtomGraph:
    """Batch structures (with their cached topologies) into one :class:`AtomGraph`."""
    if not structures:
        raise InputError("empty batch: expected at least one structure")
    numbers, batch, pos, cells, n_atoms = [], [], [], [], []
    ec, en, es, be, ad, asrc = [], [], [], [], [], []
    energy, forces, stress = [], [], []
    atom_off = edge_off = bond_off = 0
    for b, (s, t) in enumerate(zip(structures, topologies)):
        n = s.num_atoms
        numbers.append(s.numbers)
        batch.append(np.full(n, b))
        pos.append(s.positions)
        cells.append(s.cell)
        n_atoms.append(n)
        ec.append(t.edge_center + atom_off)
        en.append(t.edge_neighbor + atom_off)
        es.append(t.edge_shift)
        be.append(t.bond_edge + edge_off)
        ad.append(t.angle_dst + bond_off)
        asrc.append(t.angle_src + bond_off)
        energy.append(s.energy)
        forces.append(s.forces)
        stress.append(s.stress)
        atom_off += n
        edge_off += len(t.edge_center)
        bond_off += len(t.bond_edge)

    def long(xs):
        return torch.as_tensor(np.concatenate(xs), dtype=torch.long)

    def flt(x):
        return torch.as_tensor(np.asarray(x), dtype=dtype)

    return AtomGraph(
        numbers=long(numbers), batch=long(batch), positions=flt(np.concatenate(pos)),
        cell=flt(np.stack(cells)), num_atoms=torch.as_tensor(n_atoms, dtype=torch.long),
        edge_center=long(ec), edge_neighbor=long(en), edge_shift=flt(np.concatenate(es)),
        bond_edge=long(be), angle_dst=long(ad), angle_src=long(asrc),
        energy=flt(energy) if all(e is not None for e in energy) else None,
        forces=flt(np.concatenate(forces)) if all(f is not None for f in forces) else None,
        stress=flt(np.stack(stress)) if all(x is not None for x in stress) else None,
        atom_range=(0, atom_off), num_parts=1, part_ranges=((0, atom_off),))


class GraphDataset:
    """Structures with cached topologies; yields :class:`AtomGraph` batches."""

    def __init__(self, structures: Sequence[Structure], cutoff: float, three_body_cutoff: float,
                 topologies: Sequence[Topology] | None = None):
        """``topologies``: already built ones (``build_topology`` of each structure with these cutoffs)."""
        self.structures = list(structures)
        if topologies is not None and len(topologies) != len(self.structures):
            raise ValueError(f"{len(topologies)} topologies for {len(self.structures)} structures")
        self.topologies = (list(topologies) if topologies is not None else
                           [build_topology(s, cutoff, three_body_cutoff) for s in self.structures])

    def __len__(self) -> int:
        return len(self.structures)

    def batch(self, indices: Sequence[int], dtype: torch.dtype = torch.float32) -> AtomGraph:
        return collate([self.structures[i] for i in indices], [self.topologies[i] for i in indices], dtype)

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
                dtype: torch.dtype = torch.float32):
        n = len(self)
        order = torch.randperm(n, generator=generator).tolist() if shuffle else list(range(n))
        for k in range(0, n, batch_size):
            yield self.batch(order[k:k + batch_size], dtype)
