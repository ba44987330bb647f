"""Unit behaviour of the MLIP parts that the end-to-end properties in ``test_mlip.py`` do not pin:
neighbour/three-body topology, batching offsets, graph-parallel ranges, the Bessel and Legendre
bases, the geometry helper, the readout's reference energies and the edge residual.

Every expected value is derived from the definitions (module docstrings / formulas), not copied
from a run."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from components.base import InputError
from components.mlip.basis import BesselBasis, legendre
from components.mlip.config import MlipModelConfig
from components.mlip.data import Structure, random_emt_structures
from components.mlip.graph import GraphDataset, balanced_ranges, build_topology
from components.mlip.model import GraphAttentionLayer, MatrisLikeMLIP, fit_atom_ref

TINY = MlipModelConfig(hidden_dim=8, num_blocks=2, cutoff=3.0, three_body_cutoff=2.7)


def _model(cfg: MlipModelConfig = TINY, seed: int = 0) -> MatrisLikeMLIP:
    torch.manual_seed(seed)
    m = MatrisLikeMLIP(cfg).double()
    with torch.no_grad():  # larger weights than at init, so energies/forces are far from trivial
        for p in m.parameters():
            p.mul_(3.0)
    return m


def _molecule(positions, numbers=None) -> Structure:
    """An isolated molecule: no periodicity, a large box (the cell is only carried along)."""
    pos = np.asarray(positions, dtype=float)
    nums = np.full(len(pos), 29) if numbers is None else np.asarray(numbers)
    return Structure(nums, pos, np.eye(3) * 20.0, np.array([False] * 3), 0.0, np.zeros((len(pos), 3)), None)


def _bent_triatomic(r1: float = 1.5, r2: float = 1.5, theta_deg: float = 100.0) -> Structure:
    """Atom 0 at the centre, atom 1 at r1 along x, atom 2 at r2 at angle theta from x (in the xy plane)."""
    t = math.radians(theta_deg)
    return _molecule([[5.0, 5.0, 5.0], [5.0 + r1, 5.0, 5.0], [5.0 + r2 * math.cos(t), 5.0 + r2 * math.sin(t), 5.0]])


# ---------------------------------------------------------------------------------------------
# topology (graph.build_topology)
# ---------------------------------------------------------------------------------------------

def test_centre_with_two_bonds_gets_both_ordered_angles():
    """Atoms 0-1 and 0-2 at 1.5 A, 1-2 at 2*1.5*sin(50deg) = 2.30 A. With cutoff = three-body cutoff
    = 2.0 A the edges are 0<->1 and 0<->2 (4 directed edges, all bonds): centre 0 has k = 2 bonds and
    so k(k-1) = 2 ordered angles; centres 1 and 2 have one bond each and no angle."""
    s = _bent_triatomic(1.5, 1.5, 100.0)
    assert 2.0 < np.linalg.norm(s.positions[1] - s.positions[2])
    t = build_topology(s, cutoff=2.0, three_body_cutoff=2.0)
    assert len(t.edge_center) == 4 and len(t.bond_edge) == 4
    assert len(t.angle_dst) == len(t.angle_src) == 2
    centres = t.edge_center[t.bond_edge]
    pairs = set(zip(t.angle_dst.tolist(), t.angle_src.tolist()))
    assert all(centres[d] == 0 and centres[s_] == 0 for d, s_ in pairs)
    assert all(d != s_ for d, s_ in pairs)
    assert all((s_, d) in pairs for d, s_ in pairs)  # both directions of every angle


def test_centre_with_three_bonds_gets_six_ordered_angles():
    """A planar AX3 molecule (0 at the centre, three arms of 1.5 A at 120 deg; arm-arm 2.60 A):
    cutoffs of 2.0 A give centre 0 k = 3 bonds -> 3*2 = 6 ordered angles, all distinct pairs, each
    present in both directions."""
    c = np.array([5.0, 5.0, 5.0])
    arms = [c + 1.5 * np.array([math.cos(a), math.sin(a), 0.0]) for a in (0.0, 2 * math.pi / 3, 4 * math.pi / 3)]
    t = build_topology(_molecule([c, *arms]), cutoff=2.0, three_body_cutoff=2.0)
    assert len(t.bond_edge) == 6
    pairs = list(zip(t.angle_dst.tolist(), t.angle_src.tolist()))
    assert len(pairs) == 6 and len(set(pairs)) == 6
    assert all((s_, d) in set(pairs) for d, s_ in pairs)
    centres = t.edge_center[t.bond_edge]
    assert all(centres[d] == centres[s_] == 0 for d, s_ in pairs)


@pytest.fixture(scope="module")
def cells():
    return random_emt_structures("CuAu", n=3, supercell=1, rattle=0.1, seed=1)


@pytest.mark.parametrize("which", ["molecule", "periodic"])
def test_edges_are_sorted_by_centre_and_angles_share_a_centre(cells, which):
    s = _bent_triatomic(1.5, 1.5, 100.0) if which == "molecule" else cells[0]
    cut, cut3 = (2.0, 2.0) if which == "molecule" else (TINY.cutoff, TINY.three_body_cutoff)
    t = build_topology(s, cut, cut3)
    assert len(t.angle_dst) > 0
    assert np.all(np.diff(t.edge_center) >= 0)          # non-decreasing centres (contiguous GP ranges)
    centres = t.edge_center[t.bond_edge]
    assert np.array_equal(centres[t.angle_dst], centres[t.angle_src])
    # every bond is an edge shorter than the three-body cutoff, and angle pairs are distinct bonds
    assert np.all(t.angle_dst != t.angle_src)


# ---------------------------------------------------------------------------------------------
# batching (graph.collate)
# ---------------------------------------------------------------------------------------------

def test_batching_changes_no_structure_energy_forces_or_stress(cells):
    """E/F/sigma of a structure in a batch equal those of the structure alone. The three structures
    have different atom, edge, bond and angle counts, so an index that is not shifted by the earlier
    structures' counts (edges for bond_edge, bonds for angle_dst/angle_src) points at another
    structure's geometry (or out of range)."""
    structs = [cells[0], _bent_triatomic(1.5, 2.0, 100.0), _molecule(
        [[5.0, 5.0, 5.0], [6.6, 5.0, 5.0], [5.0, 6.8, 5.0], [5.2, 5.1, 6.5], [6.4, 6.3, 5.4]],
        numbers=[29, 79, 29, 79, 29])]
    ds = GraphDataset(structs, TINY.cutoff, TINY.three_body_cutoff)
    counts = [(s.num_atoms, len(t.edge_center), len(t.bond_edge), len(t.angle_dst))
              for s, t in zip(structs, ds.topologies)]
    for col in range(4):  # every count differs between structures
        assert len({c[col] for c in counts}) == 3, counts
    assert all(c[3] > 0 for c in counts)
    m = _model()
    e_all, f_all, s_all = m.energy_forces_stress(ds.batch([0, 1, 2], dtype=torch.float64))
    off = 0
    for k, s in enumerate(structs):
        e_k, f_k, s_k = m.energy_forces_stress(ds.batch([k], dtype=torch.float64))
        assert torch.allclose(e_all[k], e_k[0], rtol=0, atol=1e-10)
        assert torch.allclose(f_all[off:off + s.num_atoms], f_k, rtol=0, atol=1e-10)
        assert torch.allclose(s_all[k], s_k[0], rtol=0, atol=1e-10)
        off += s.num_atoms
    assert float(f_all.abs().max()) > 1e-3  # forces are not trivially zero


# ---------------------------------------------------------------------------------------------
# graph-parallel ranges (graph.balanced_ranges)
# ---------------------------------------------------------------------------------------------

def test_balanced_ranges_cut_where_the_weighted_count_reaches_its_share():
    """Edge counts per atom [6,0,0,0,0,6]; each atom weighs its edges + 1 -> [7,1,1,1,1,7] (18 in
    all), cumulative [7,8,9,10,11,18]. Two parts: the share is 18/2 = 9, first reached at atom 2, so
    the first range ends after atom 2: [(0,3),(3,6)]. (Without the +1 the cumulative counts are
    [6,6,6,6,6,12] and the cut would fall after atom 0.)"""
    ec = torch.tensor([0] * 6 + [5] * 6)
    assert balanced_ranges(ec, 6, 2) == [(0, 3), (3, 6)]
    # three parts: shares 6 and 12 -> first reached at atoms 0 (cum 7) and 5 (cum 18); the second cut
    # (after atom 5) is clamped to leave the last part one atom: [(0,1),(1,5),(5,6)]
    assert balanced_ranges(ec, 6, 3) == [(0, 1), (1, 5), (5, 6)]


def test_balanced_ranges_give_every_part_at_least_one_atom():
    """Counts [30,0,0,0] -> weights [31,1,1,1], cumulative [31,32,33,34]; three parts: both shares
    (11.3, 22.7) are reached at atom 0, so both cuts would fall after atom 0; the docstring's 'each
    range >= 1 atom' pushes the second cut one atom on: [(0,1),(1,2),(2,4)]."""
    assert balanced_ranges(torch.tensor([0] * 30), 4, 3) == [(0, 1), (1, 2), (2, 4)]


# ---------------------------------------------------------------------------------------------
# bases
# ---------------------------------------------------------------------------------------------

def _envelope(d: float, p: int = 5) -> float:
    return 1 - (p + 1) * (p + 2) / 2 * d ** p + p * (p + 2) * d ** (p + 1) - p * (p + 1) / 2 * d ** (p + 2) if d < 1 else 0.0


def test_polynomial_envelope_hand_values():
    # p = 5: u(d) = 1 - 21 d^5 + 35 d^6 - 15 d^7
    assert _envelope(0.2) == pytest.approx(1 - 21 * 0.00032 + 35 * 0.000064 - 15 * 0.0000128)
    assert _envelope(0.2) == pytest.approx(0.995328, abs=1e-12)
    assert _envelope(0.4) == pytest.approx(0.903744, abs=1e-12)


@pytest.mark.parametrize("r, u", [(1.0, 0.995328), (2.0, 0.903744)])
def test_bessel_basis_hand_values(r, u):
    """e_n(r) = sqrt(2/c) sin(n pi r/c) / r * u(r/c), n = 1..3, c = 5 (u by hand for d = 0.2, 0.4)."""
    basis, env = BesselBasis(3, 5.0).double()(torch.tensor([r], dtype=torch.float64))
    assert basis.shape == (1, 3)
    expected = [math.sqrt(2 / 5) * math.sin(n * math.pi * r / 5) / r * u for n in (1, 2, 3)]
    # the frequencies n*pi are a float32 buffer (rounded before .double()): ~1e-7 relative error
    assert basis[0].tolist() == pytest.approx(expected, rel=1e-6, abs=0)
    assert float(env[0]) == pytest.approx(u, abs=1e-12)


def test_bessel_basis_vanishes_beyond_the_cutoff():
    basis, env = BesselBasis(3, 5.0).double()(torch.tensor([5.0, 6.0], dtype=torch.float64))
    assert torch.all(basis == 0) and torch.all(env == 0)


def test_legendre_bonnet_recursion_hand_values():
    """P0..P4 at x = 0.5: 1, x, (3x^2-1)/2, (5x^3-3x)/2, (35x^4-30x^2+3)/8."""
    out = legendre(torch.tensor([0.5], dtype=torch.float64), 3)
    assert out.shape == (1, 4)
    assert out[0].tolist() == pytest.approx([1.0, 0.5, -0.125, -0.4375], abs=1e-15)
    out4 = legendre(torch.tensor([0.5, -0.3], dtype=torch.float64), 4)
    x = -0.3
    assert out4[0].tolist() == pytest.approx([1.0, 0.5, -0.125, -0.4375, -0.2890625], abs=1e-15)
    assert out4[1].tolist() == pytest.approx([1.0, x, (3 * x * x - 1) / 2, (5 * x ** 3 - 3 * x) / 2,
                                              (35 * x ** 4 - 30 * x ** 2 + 3) / 8], abs=1e-15)


def test_legendre_low_orders_have_max_l_plus_one_columns(cells):
    x = torch.tensor([0.5, -0.2], dtype=torch.float64)
    assert legendre(x, 0).shape == (2, 1)
    p1 = legendre(x, 1)
    assert p1.shape == (2, 2) and p1.tolist() == [[1.0, 0.5], [1.0, -0.2]]
    cfg = MlipModelConfig(hidden_dim=8, num_blocks=1, cutoff=3.0, three_body_cutoff=2.7, max_angular=1)
    m = _model(cfg)
    g = GraphDataset(cells[:1], cfg.cutoff, cfg.three_body_cutoff).batch([0], dtype=torch.float64)
    assert g.angle_dst.numel() > 0
    e = m(g)
    assert e.shape == (1,) and torch.isfinite(e).all()


# ---------------------------------------------------------------------------------------------
# geometry helper, readout, reference energies, edge residual (model.py)
# ---------------------------------------------------------------------------------------------

def test_angle_basis_uses_the_source_bond_and_weight_both_envelopes():
    """Bonds 0->1 (1.5 A) and 0->2 (2.0 A) at 100 deg, atoms 1-2 2.70 A apart (an edge inside the
    3.0 A cutoff, not a bond inside 2.2 A). The two angles at centre 0 pair the bonds both ways; for
    each, angle_basis = P_l(cos 100deg) (x) rbf(r_src) with the three-body Bessel basis, and
    angle_weight = u(r_dst/2.2) u(r_src/2.2)."""
    cut3 = 2.2
    cfg = MlipModelConfig(hidden_dim=8, num_blocks=1, num_radial=3, max_angular=3, cutoff=3.0,
                          three_body_cutoff=cut3)
    s = _bent_triatomic(1.5, 2.0, 100.0)
    g = GraphDataset([s], cfg.cutoff, cfg.three_body_cutoff).batch([0], dtype=torch.float64)
    assert g.edge_center.numel() == 6 and g.bond_edge.numel() == 4 and g.angle_dst.numel() == 2
    geom = _model(cfg).geometry(g, g.positions, None)
    x = math.cos(math.radians(100.0))
    P = [1.0, x, (3 * x * x - 1) / 2, (5 * x ** 3 - 3 * x) / 2]

    def rbf(r):
        return [math.sqrt(2 / cut3) * math.sin(n * math.pi * r / cut3) / r * _envelope(r / cut3) for n in (1, 2, 3)]

    lengths = {(0, 1): 1.5, (1, 0): 1.5, (0, 2): 2.0, (2, 0): 2.0, (1, 2): None}
    bond_len = [lengths[(int(g.edge_center[e]), int(g.edge_neighbor[e]))] for e in g.bond_edge.tolist()]
    seen = set()
    for a in range(2):
        r_dst, r_src = bond_len[int(g.angle_dst[a])], bond_len[int(g.angle_src[a])]
        seen.add((r_dst, r_src))
        expected = np.outer(P, rbf(r_src)).flatten()
        # (rel 1e-6: the Bessel frequencies n*pi are a float32 buffer)
        assert geom.angle_basis[a].tolist() == pytest.approx(expected.tolist(), rel=1e-6, abs=1e-9)
        assert float(geom.angle_weight[a]) == pytest.approx(_envelope(r_dst / cut3) * _envelope(r_src / cut3),
                                                            abs=1e-12)
    assert seen == {(1.5, 2.0), (2.0, 1.5)}  # unequal bonds, both orders: dst and src are told apart


def test_readout_adds_the_fitted_reference_energies(cells):
    """fit_atom_ref on [Cu, Cu] -> -6 eV and [Cu, Au] -> -7 eV solves exactly to E_ref[Cu] = -3,
    E_ref[Au] = -4. With the learned head scaled by 0, E = sum_i E_ref[Z_i]."""
    m = _model()
    ref = fit_atom_ref(m, [[29, 29], [29, 79]], [-6.0, -7.0])
    assert float(ref[29]) == pytest.approx(-3.0, abs=1e-10) and float(ref[79]) == pytest.approx(-4.0, abs=1e-10)
    assert float(ref.abs().sum()) == pytest.approx(7.0, abs=1e-10)  # every other element 0
    assert torch.equal(m.atom_ref, ref)
    with torch.no_grad():
        m.energy_scale.fill_(0.0)
    g = GraphDataset(cells, TINY.cutoff, TINY.three_body_cutoff).batch([0, 1, 2], dtype=torch.float64)
    expected = [-3.0 * int(np.sum(s.numbers == 29)) - 4.0 * int(np.sum(s.numbers == 79)) for s in cells]
    assert all(set(s.numbers.tolist()) <= {29, 79} for s in cells)
    assert m(g).tolist() == pytest.approx(expected, abs=1e-10)


def test_fit_atom_ref_rejects_atomic_number_zero():
    m = _model()
    with pytest.raises(InputError, match=r"atomic numbers \[0\]"):
        fit_atom_ref(m, [[0, 29], [29, 29]], [-1.0, -2.0])


def test_edge_and_node_updates_are_residuals():
    """With the edge MLP's output layer zeroed, e_upd = silu(0) * sigmoid(.) = 0: the layer must hand
    back the edge features unchanged (e + e_upd)."""
    torch.manual_seed(0)
    layer = GraphAttentionLayer(4).double()
    with torch.no_grad():
        out = layer.edge_update.core[-1]
        out.weight.zero_()
        out.bias.zero_()
    x = torch.randn(3, 4, dtype=torch.float64)
    e = torch.randn(4, 4, dtype=torch.float64)
    dst, src = torch.tensor([0, 0, 1, 2]), torch.tensor([1, 2, 0, 0])
    x_new, e_new = layer(x, x, e, dst, src, torch.ones(4, dtype=torch.float64))
    assert torch.equal(e_new, e)
    assert not torch.equal(x_new, x)  # the node update is live here
    with torch.no_grad():  # and likewise the node update: zero output layer -> nodes unchanged
        layer.node_update.core[-1].weight.zero_()
        layer.node_update.core[-1].bias.zero_()
    x_new, _ = layer(x, x, e, dst, src, torch.ones(4, dtype=torch.float64))
    assert torch.equal(x_new, x)
