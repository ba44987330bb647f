"""Training data: ASE molecular dynamics labelled by ASE's EMT calculator, and a loader for any
ASE-readable labelled data set.

:func:`generate_emt_dataset` runs one Langevin trajectory per (system, temperature) on a randomly
strained fcc supercell (random alloys for multi-element formulas), keeps every
``steps_between_frames``-th frame with its EMT energy, forces and stress, and writes
``train.extxyz``, ``val.extxyz`` and ``test.extxyz`` plus ``manifest.json``. Each trajectory is cut
into contiguous blocks (first 80 % train, next 10 % val, last 10 % test by default), so correlated
neighbouring frames do not leak between splits.

:func:`load_structures` reads any file ASE can read (extxyz, ASE trajectory, VASP OUTCAR, ...) and
checks that every frame carries the labels asked for; problems raise
:class:`components.base.InputError` naming the file and frame.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from components.base import InputError
from components.mlip.config import MlipDataConfig

SPLITS = ("train", "val", "test")
EV_PER_A3_TO_GPA = 160.21766208


@dataclass
class Structure:
    """One labelled atomic configuration (units: angstrom, eV, eV/angstrom, eV/angstrom^3)."""

    numbers: np.ndarray            # [N] atomic numbers
    positions: np.ndarray          # [N, 3]
    cell: np.ndarray               # [3, 3] rows are lattice vectors
    pbc: np.ndarray                # [3] bool
    energy: float | None = None
    forces: np.ndarray | None = None   # [N, 3]
    stress: np.ndarray | None = None   # [3, 3] (ASE sign convention: sigma = (1/V) dE/d(strain))

    @property
    def num_atoms(self) -> int:
        return int(len(self.numbers))

    @property
    def volume(self) -> float:
        return float(abs(np.linalg.det(self.cell)))


def _random_alloy(formula: str, supercell: int, rng: np.random.Generator):
    """fcc supercell with species drawn to the formula's composition (Vegard lattice constant)."""
    from ase.build import bulk
    from ase.data import atomic_numbers, reference_states
    from ase.formula import Formula

    count = Formula(formula).count()
    symbols = list(count)
    frac = np.array([count[s] for s in symbols], dtype=float)
    frac /= frac.sum()
    a = float(sum(f * reference_states[atomic_numbers[s]]["a"] for s, f in zip(symbols, frac)))
    atoms = bulk(symbols[0], "fcc", a=a, cubic=True).repeat(supercell)
    n = len(atoms)
    per = np.floor(frac * n).astype(int)
    per[np.argmax(frac)] += n - per.sum()
    species = np.repeat(symbols, per)
    rng.shuffle(species)
    atoms.set_chemical_symbols(list(species))
    return atoms


def run_trajectory(formula: str, temperature_K: float, cfg: MlipDataConfig, seed: int) -> list[Structure]:
    """One Langevin MD trajectory with EMT labels."""
    from ase import units
    from ase.calculators.emt import EMT
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    rng = np.random.default_rng(seed)
    atoms = _random_alloy(formula, cfg.supercell, rng)
    strain = rng.uniform(-cfg.max_strain, cfg.max_strain, size=(3, 3))
    strain = 0.5 * (strain + strain.T)
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + strain), scale_atoms=True)
    atoms.rattle(stdev=0.05, seed=int(rng.integers(2**31)))
    atoms.calc = EMT()
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)
    dyn = Langevin(atoms, cfg.timestep_fs * units.fs, temperature_K=temperature_K, friction=0.02, fixcm=False,
                   rng=rng)
    frames: list[Structure] = []
    for _ in range(cfg.frames_per_trajectory):
        dyn.run(cfg.steps_between_frames)
        frames.append(Structure(
            numbers=atoms.numbers.copy(), positions=atoms.positions.copy(), cell=atoms.cell.array.copy(),
            pbc=atoms.pbc.copy(), energy=float(atoms.get_potential_energy()),
            forces=atoms.get_forces().copy(), stress=atoms.get_stress(voigt=False).copy()))
    return frames


def random_emt_structures(formula: str = "Cu", n: int = 4, supercell: int = 1, rattle: float = 0.1,
                          max_strain: float = 0.02, seed: int = 0) -> list[Structure]:
    """``n`` randomly rattled and strained fcc cells labelled by EMT (small fixtures for tests/demos)."""
    from ase.calculators.emt import EMT

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        atoms = _random_alloy(formula, supercell, rng)
        strain = rng.uniform(-max_strain, max_strain, size=(3, 3))
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.5 * (strain + strain.T)), scale_atoms=True)
        atoms.rattle(stdev=rattle, seed=int(rng.integers(2**31)))
        atoms.calc = EMT()
        out.append(Structure(atoms.numbers.copy(), atoms.positions.copy(), atoms.cell.array.copy(), atoms.pbc.copy(),
                             float(atoms.get_potential_energy()), atoms.get_forces().copy(),
                             atoms.get_stress(voigt=False).copy()))
    return out


def split_blocks(n: int, fractions: Sequence[float]) -> list[range]:
    """Contiguous [train | val | test] index ranges of one trajectory; every split gets >= 1 frame."""
    n_val = max(1, int(round(fractions[1] * n)))
    n_test = max(1, int(round(fractions[2] * n)))
    n_train = n - n_val - n_test
    if n_train < 1:
        raise InputError(f"trajectory of {n} frames cannot be split {tuple(fractions)}; need >= 3 frames")
    return [range(0, n_train), range(n_train, n_train + n_val), range(n_train + n_val, n)]


def to_atoms(s: Structure):
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = Atoms(numbers=s.numbers, positions=s.positions, cell=s.cell, pbc=s.pbc)
    results = {}
    if s.energy is not None:
        results["energy"] = s.energy
    if s.forces is not None:
        results["forces"] = s.forces
    if s.stress is not None:
        results["stress"] = s.stress
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def write_extxyz(path: str | Path, structures: Sequence[Structure]) -> None:
    from ase.io import write

    write(str(path), [to_atoms(s) for s in structures], format="extxyz")


def generate_emt_dataset(cfg: MlipDataConfig, out_dir: str | Path, seed: int = 0,
                         progress: Callable[..., None] | None = None) -> dict:
    """Write ``{train,val,test}.extxyz`` and ``manifest.json`` into ``out_dir``; return the manifest."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    splits: dict[str, list[Structure]] = {s: [] for s in SPLITS}
    trajectories = []
    runs = [(f, t) for f in cfg.systems for t in cfg.temperatures_K]
    for i, (formula, temp) in enumerate(runs):
        frames = run_trajectory(formula, temp, cfg, seed=seed * 100_003 + i)
        for name, idx in zip(SPLITS, split_blocks(len(frames), cfg.split)):
            splits[name].extend(frames[j] for j in idx)
        e_atom = [f.energy / f.num_atoms for f in frames]
        trajectories.append({"system": formula, "temperature_K": temp, "frames": len(frames),
                             "energy_per_atom_min": float(min(e_atom)), "energy_per_atom_max": float(max(e_atom))})
        if progress:
            progress("EMT MD %d/%d: %s at %.0f K, %d frames", i + 1, len(runs), formula, temp, len(frames))
    for name, frames in splits.items():
        write_extxyz(out_dir / f"{name}.extxyz", frames)
    all_f = np.concatenate([f.forces for f in splits["train"]])
    manifest = {
        "calculator": "ase.calculators.emt.EMT",
        "splits": {name: len(frames) for name, frames in splits.items()},
        "atoms_per_structure": int(splits["train"][0].num_atoms),
        "elements": sorted({int(z) for f in splits["train"] for z in f.numbers}),
        "force_rms_eV_per_A": float(np.sqrt((all_f ** 2).mean())),
        "trajectories": trajectories,
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def load_structures(path: str | Path, require: Sequence[str] = ("energy", "forces"),
                    index: str = ":", format: str | None = None) -> list[Structure]:
    """Read labelled structures from any ASE-readable file.

    ``require`` names the labels every frame must have (``energy``, ``forces``, ``stress``).
    Raises :class:`InputError` for a missing/unreadable file, a malformed record or a missing label.
    """
    from ase.io import read

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found; expected an ASE-readable structure file (e.g. extxyz)")
    unknown = set(require) - {"energy", "forces", "stress"}
    if unknown:
        raise InputError(f"require={list(require)}: unknown label(s) {sorted(unknown)}; expected energy, forces, stress")
    try:
        frames = read(str(path), index=index, format=format)
    except Exception as err:  # ASE raises many types for malformed files
        raise InputError(f"{path}: cannot be read as {format or 'an ASE format'} ({type(err).__name__}: "
                         f"{str(err).strip()[:200]}); expected a well-formed file such as extxyz") from None
    if not isinstance(frames, list):
        frames = [frames]
    if not frames:
        raise InputError(f"{path}: no structures found; expected at least one frame")
    out = []
    for k, atoms in enumerate(frames):
        results = getattr(atoms.calc, "results", {}) if atoms.calc is not None else {}
        missing = [lab for lab in require if lab not in results]
        if missing:
            raise InputError(f"{path}: frame {k} has no {', '.join(missing)} label(s) (found: "
                             f"{sorted(results) or 'none'}); expected {list(require)} on every frame")
        forces = np.asarray(results["forces"], dtype=float) if "forces" in results else None
        if forces is not None and forces.shape != (len(atoms), 3):
            raise InputError(f"{path}: frame {k} forces have shape {forces.shape}; expected ({len(atoms)}, 3)")
        stress = None
        if "stress" in results:
            stress = np.asarray(results["stress"], dtype=float)
            if stress.shape == (6,):  # Voigt xx yy zz yz xz xy
                xx, yy, zz, yz, xz, xy = stress
                stress = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
            if stress.shape != (3, 3):
                raise InputError(f"{path}: frame {k} stress has shape {stress.shape}; expected (6,) or (3, 3)")
        energy = float(results["energy"]) if "energy" in results else None
        fields = {"positions": atoms.positions, "cell": atoms.cell.array, "energy": energy, "forces": forces,
                  "stress": stress}
        bad = [name for name, a in fields.items() if a is not None and not np.isfinite(a).all()]
        if bad:
            raise InputError(f"{path}: frame {k} has non-finite {', '.join(bad)} (NaN or inf); expected finite "
                             f"numbers")
        out.append(Structure(numbers=atoms.numbers.copy(), positions=atoms.positions.copy(),
                             cell=atoms.cell.array.copy(), pbc=atoms.pbc.copy(), energy=energy,
                             forces=forces, stress=stress))
    return out


def load_split(data_dir: str | Path, split: str, require: Sequence[str] = ("energy", "forces")) -> list[Structure]:
    if split not in SPLITS:
        raise InputError(f"split={split!r}: expected one of {SPLITS}")
    return load_structures(Path(data_dir) / f"{split}.extxyz", require=require)
