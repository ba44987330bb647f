"""Properties of the MLIP library: conservative forces/stress, invariances, data I/O, bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from components.base import InputError
from components.mlip.config import MlipDataConfig, MlipModelConfig, MlipTrainConfig
from components.mlip.data import (Structure, generate_emt_dataset, load_split, load_structures, random_emt_structures,
                                  write_extxyz)
from components.mlip.graph import GraphDataset
from components.mlip.model import MatrisLikeMLIP, split_blocks, stage_modules
from components.mlip.train import (LossWeights, conservative_loss, finite_difference_check, per_element_mean_baseline,
                                   prepare_model, train_reference)

TINY = MlipModelConfig(hidden_dim=8, num_blocks=2, cutoff=3.0, three_body_cutoff=2.7)


def _model(cfg: MlipModelConfig = TINY, seed: int = 0, structures=None) -> MatrisLikeMLIP:
    torch.manual_seed(seed)
    m = MatrisLikeMLIP(cfg).double()
    with torch.no_grad():  # larger weights than at init, so forces are far from zero
        for p in m.parameters():
            p.mul_(3.0)
    if structures is not None:
        prepare_model(m, structures)
    return m


@pytest.fixture(scope="module")
def cells():
    return random_emt_structures("CuAu", n=3, supercell=1, rattle=0.1, seed=1)


def test_forces_and_stress_are_energy_derivatives(cells):
    """F = -dE/dx and sigma = (1/V) dE/d(strain) match central finite differences."""
    m = _model(structures=cells)
    res = finite_difference_check(m, GraphDataset(cells, TINY.cutoff, TINY.three_body_cutoff), atoms=(0, 1, 3), h=1e-5)
    assert res["force_scale_eV_per_A"] > 1e-4  # non-trivial forces, 1000x the FD tolerance below
    assert res["force_max_abs_err_eV_per_A"] < 1e-7 * max(1.0, res["force_scale_eV_per_A"])
    assert res["stress_max_abs_err_eV_per_A3"] < 1e-7


def test_energy_is_invariant_and_forces_rotate(cells):
    m = _model(structures=cells)
    ds = GraphDataset(cells[:1], TINY.cutoff, TINY.three_body_cutoff)
    g = ds.batch([0], dtype=torch.float64)
    e0, f0, _ = m.energy_forces_stress(g, stress=False)
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    shift = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    g_rot = g.to(torch.float64)
    g_rot.positions = g.positions @ q.T + shift
    g_rot.cell = g.cell @ q.T
    e1, f1, _ = m.energy_forces_stress(g_rot, stress=False)
    assert torch.allclose(e0, e1, atol=1e-10)
    assert torch.allclose(f0 @ q.T, f1, atol=1e-9)


@pytest.mark.parametrize("case", ["two-body", "three-body"])
def test_energy_and_forces_are_continuous_across_the_cutoffs(case):
    """An atom's last neighbour leaving the atom-graph cutoff (two-body), or a bond's last angle
    partner leaving the three-body cutoff (three-body): E and F on either side within δ = 1e-6 Å agree
    to O(δ). Without the attention sink E jumped by 42 meV (an only neighbour kept α = 1 down to the
    cutoff), and without running the line graph when no angle exists anywhere it jumped by ~3 meV
    with forces blowing up; sampling only at 2.99999 Å, where the envelope is already ~1e-15, hid both."""
    m = _model(MlipModelConfig(hidden_dim=8, num_blocks=2, cutoff=3.0, three_body_cutoff=2.5))

    def energy_forces(d):
        if case == "two-body":
            pos = [[5.0, 5, 5], [5.0 + d, 5, 5]]
        else:  # a 2.0 Å bond 0-1, atom 2 at distance d from atom 0 (2-1 beyond the 3.0 Å cutoff)
            pos = [[5.0, 5, 5], [7.0, 5, 5], [5.0, 5 + d, 5]]
        s = Structure(np.full(len(pos), 29), np.array(pos), np.eye(3) * 20,
                      np.array([False] * 3), 0.0, np.zeros((len(pos), 3)), None)
        e, f, _ = m.energy_forces_stress(GraphDataset([s], 3.0, 2.5).batch([0], dtype=torch.float64), stress=False)
        return float(e.detach()), f.detach().numpy()

    cut = 3.0 if case == "two-body" else 2.5
    (e_in, f_in), (e_out, f_out) = energy_forces(cut - 1e-6), energy_forces(cut + 1e-6)
    assert abs(e_in - e_out) < 1e-5
    assert np.abs(f_in - f_out).max() < 1e-4


def test_stage_split_and_too_many_stages():
    assert split_blocks(8, 3) == [(0, 3), (3, 6), (6, 8)]
    with pytest.raises(ValueError, match="5 pipeline stages but the model has only 4"):
        split_blocks(4, 5)
    m = _model(MlipModelConfig(hidden_dim=8, num_blocks=4, cutoff=3.0, three_body_cutoff=2.7))
    stages = stage_modules(m, 2)
    owned = sum(p.numel() for st in stages for p in st.parameters())
    assert owned == sum(p.numel() for p in m.parameters())  # every parameter on exactly one stage


def test_graph_partition_covers_the_batch(cells):
    ds = GraphDataset(cells, TINY.cutoff, TINY.three_body_cutoff)
    g = ds.batch([0, 1, 2])
    parts = [g.partition(k, 3) for k in range(3)]
    assert sum(p.num_local_atoms for p in parts) == g.num_atoms_total
    assert sum(int(p.edge_center.numel()) for p in parts) == int(g.edge_center.numel())
    assert sum(int(p.angle_dst.numel()) for p in parts) == int(g.angle_dst.numel())
    for p in parts:  # local angles only reference local bonds, local bonds only local edges
        if p.angle_dst.numel():
            assert int(p.angle_dst.max()) < p.bond_edge.numel() and int(p.angle_src.max()) < p.bond_edge.numel()
        if p.bond_edge.numel():
            assert int(p.bond_edge.max()) < p.edge_center.numel()
        assert bool(((p.edge_center >= p.atom_range[0]) & (p.edge_center < p.atom_range[1])).all())


def test_dataset_generation_splits_and_roundtrip(tmp_path):
    cfg = MlipDataConfig(systems=["Cu", "NiAl"], temperatures_K=[500.0], supercell=1, frames_per_trajectory=10,
                         steps_between_frames=2)
    manifest = generate_emt_dataset(cfg, tmp_path, seed=3)
    assert manifest["splits"] == {"train": 16, "val": 2, "test": 2}
    train = load_split(tmp_path, "train", require=("energy", "forces", "stress"))
    assert len(train) == 16 and train[0].stress.shape == (3, 3)
    # labels are EMT's (extxyz stores positions to 1e-8 A)
    from ase.calculators.emt import EMT
    from components.mlip.data import to_atoms

    atoms = to_atoms(train[5])
    atoms.calc = EMT()
    assert math.isclose(atoms.get_potential_energy(), train[5].energy, rel_tol=0, abs_tol=1e-6)
    assert np.allclose(atoms.get_forces(), train[5].forces, atol=1e-5)


def test_loader_rejects_bad_input(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        load_structures(tmp_path / "none.extxyz")
    bad = tmp_path / "bad.extxyz"
    bad.write_text("3\nLattice=\"1 0 0 0 1 0 0 0 1\" Properties=species:S:1:pos:R:3\nCu 0 0 0\nCu 1 1\n")
    with pytest.raises(InputError, match="bad.extxyz: cannot be read"):
        load_structures(bad)
    s = random_emt_structures("Cu", n=2, seed=0)
    s[1].forces = None
    path = tmp_path / "noforces.extxyz"
    write_extxyz(path, s)
    with pytest.raises(InputError, match="frame 1 has no forces"):
        load_structures(path)
    assert len(load_structures(path, require=("energy",))) == 2


@pytest.mark.parametrize("field,where", [("positions", (1, 0)), ("energy", None), ("forces", (0, 2)),
                                         ("stress", (1, 1)), ("cell", (2, 2))])
def test_loader_names_the_frame_and_field_of_a_non_finite_value(tmp_path, field, where):
    """Stress and cell used to be read unchecked: a NaN stress label or an inf lattice vector passed
    the loader and surfaced later as a NaN loss or a broken neighbour list."""
    s = random_emt_structures("Cu", n=2, seed=0)
    bad = s[1]
    if field == "energy":
        bad.energy = float("nan")
    else:
        arr = getattr(bad, field).copy()
        arr[where] = np.inf if field == "cell" else np.nan
        setattr(bad, field, arr)
    path = tmp_path / f"{field}.extxyz"
    write_extxyz(path, s)
    with pytest.raises(InputError, match=rf"{field}.extxyz: frame 1 has non-finite {field} \(NaN or inf\)"):
        load_structures(path, require=("energy", "forces", "stress"))
    write_extxyz(path, s[:1])                                      # the finite frame alone loads
    assert len(load_structures(path, require=("energy", "forces", "stress"))) == 1


def test_training_beats_the_per_element_baseline():
    """A few hundred force labels, a few dozen double-backward steps: the force MAE drops well
    below the per-element mean baseline on held-out cells."""
    train = random_emt_structures("CuAu", n=24, supercell=1, rattle=0.12, seed=5)
    test = random_emt_structures("CuAu", n=6, supercell=1, rattle=0.12, seed=6)
    cfg = MlipModelConfig(hidden_dim=16, num_blocks=2, cutoff=3.0, three_body_cutoff=2.7)
    torch.manual_seed(0)
    m = MatrisLikeMLIP(cfg)
    prepare_model(m, train)
    ds, dt = GraphDataset(train, cfg.cutoff, cfg.three_body_cutoff), GraphDataset(test, cfg.cutoff, cfg.three_body_cutoff)
    w = LossWeights(1.0, 1.0, 0.0)
    before = float(conservative_loss(m, dt.batch(range(6)), w))
    train_reference(m, ds, dt, MlipTrainConfig(epochs=12, batch_size=4, lr=5e-3), seed=0)
    after = float(conservative_loss(m, dt.batch(range(6)), w))
    from components.mlip.train import evaluate

    model_mae = evaluate(m, dt)["force_mae_eV_per_A"]
    base_mae = per_element_mean_baseline(train, test)["force_mae_eV_per_A"]
    assert after < 0.5 * before
    assert model_mae < 0.5 * base_mae


def test_finite_difference_error_is_inf_for_nan_not_zero():
    import math

    from components.mlip.train import _max_err

    assert _max_err(0.5, float("nan")) == math.inf
    assert _max_err(0.5, float("-inf")) == math.inf
    assert _max_err(0.5, -0.7) == 0.7 and _max_err(0.5, 0.1) == 0.5


def test_atomic_number_above_max_z_is_an_input_error(cells):
    from components.base import InputError
    from components.mlip.config import MlipModelConfig
    from components.mlip.model import MatrisLikeMLIP
    from components.mlip.train import prepare_model

    structs = cells[:2]
    max_z = int(max(max(s.numbers) for s in structs)) - 1   # one below the heaviest element present
    model = MatrisLikeMLIP(MlipModelConfig(hidden_dim=8, num_blocks=1, max_z=max_z))
    with pytest.raises(InputError, match=f"model.max_z={max_z}"):
        prepare_model(model, structs)
