"""The four-phase pipeline computes exactly the single-process double-backward gradients."""
from __future__ import annotations

import pytest
import torch

from components.januspipe.runtime import RunSpec, exactness_error, run_many
from components.januspipe.schedules import SCHEDULE_NAMES, family_grid
from components.januspipe.simulator import CostModel, build
from components.januspipe.stage import FourPhaseStage, run_local_pipeline, run_schedule_in_process
from components.mlip.config import MlipModelConfig
import numpy as np

from components.mlip.data import Structure
from components.mlip.graph import GraphDataset
from components.mlip.model import MatrisLikeMLIP, stage_modules
from components.mlip.train import LossWeights, prepare_model, reference_gradients

CFG = MlipModelConfig(hidden_dim=6, num_blocks=4, cutoff=3.0, three_body_cutoff=2.7, num_radial=4, max_angular=2)
UNIT = CostModel(block_s=(1.0, 1.1, 3.3, 1.06), stage_overhead_s=(0.0,) * 4, first_extra_s=(0.0,) * 4,
                 last_extra_s=(0.0,) * 4, block_act_forward_bytes=1.0, block_act_force_bytes=1.34)
FORCES = LossWeights(1.0, 1.0, 0.0)
STRESS = LossWeights(1.0, 1.0, 0.5)


def emt_clusters(n: int, seed: int = 0) -> list[Structure]:
    """Small non-periodic Cu/Au clusters (6 atoms cut from fcc, rattled) labelled by EMT: every code
    path (edges, three-body angles, stress) at a fraction of a periodic cell's cost."""
    from ase.build import bulk
    from ase.calculators.emt import EMT

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = bulk("Cu", "fcc", a=3.7, cubic=True).repeat(2)
        a = a[np.argsort(np.linalg.norm(a.positions - a.positions[0], axis=1))[:6]]
        a.symbols[rng.random(6) < 0.4] = "Au"
        a.pbc, a.cell = False, np.eye(3) * 12.0
        a.positions += rng.normal(0, 0.1, a.positions.shape)
        a.calc = EMT()
        out.append(Structure(a.numbers.copy(), a.positions.copy(), a.cell.array.copy(), a.pbc.copy(),
                             float(a.get_potential_energy()), a.get_forces().copy(), a.get_stress(voigt=False).copy()))
    return out


@pytest.fixture(scope="module")
def structures():
    return emt_clusters(4, seed=2)


def _reference(structures, weights):
    torch.manual_seed(0)
    model = MatrisLikeMLIP(CFG).double()
    prepare_model(model, structures)
    ds = GraphDataset(structures, CFG.cutoff, CFG.three_body_cutoff)
    grads = reference_gradients(model, [ds.batch([i], dtype=torch.float64) for i in range(len(structures))], weights)
    return model, grads


@pytest.mark.parametrize("weights", [FORCES, STRESS], ids=["energy+force", "energy+force+stress"])
@pytest.mark.parametrize("num_stages", [1, 2, 3, 4])
def test_local_four_phase_equals_double_backward(structures, weights, num_stages):
    """Stage by stage in one process (no communication): same gradients as loss.backward()."""
    model, ref = _reference(structures[:3], weights)
    model.zero_grad(set_to_none=True)
    ds = GraphDataset(structures[:3], CFG.cutoff, CFG.three_body_cutoff)
    mbs = [ds.batch([i], dtype=torch.float64) for i in range(3)]
    stages = [FourPhaseStage(m, weights, 1 / 3) for m in stage_modules(model, num_stages)]
    run_local_pipeline(stages, mbs)
    assert _rel_error(model, ref) <= 1e-12


def _rel_error(model, ref) -> float:
    got = {n: (p.grad if p.grad is not None else torch.zeros_like(p)) for n, p in model.named_parameters()}
    scale = max(float(g.abs().max()) for g in ref.values())
    assert scale > 0
    return max(float((got[n] - ref[n]).abs().max()) for n in ref) / scale


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_every_schedule_action_list_gives_exact_gradients(structures, name):
    """Each schedule's per-device action lists for every placement of 1..4 (virtual) stages on 1..4
    devices, executed device by device in one process: exact double-backward gradients."""
    M = 3
    model, ref = _reference(structures[:M], FORCES)
    ds = GraphDataset(structures[:M], CFG.cutoff, CFG.three_body_cutoff)
    mbs = [ds.batch([i], dtype=torch.float64) for i in range(M)]
    placements = 0
    for devices in (1, 2, 3, 4):
        grid = family_grid(name, devices, M, max_stages=CFG.num_blocks)
        # one configuration per placement: the smallest cap interleaves least, the largest most
        for params in {tuple(sorted(p.items())) for p in (grid[:1] + grid[-1:])}:
            sched = build(name, devices, M, UNIT, CFG.num_blocks, None, **dict(params))
            model.zero_grad(set_to_none=True)
            stages = [FourPhaseStage(m, FORCES, 1 / M) for m in stage_modules(model, sched.num_stages)]
            run_schedule_in_process(sched, stages, mbs)
            assert _rel_error(model, ref) <= 1e-12, sched.label
            placements += 1
    assert placements >= 2


def _spec(name, devices, structures, weights, dp=1, gp=1, M=2):
    params = family_grid(name, devices, M, max_stages=CFG.num_blocks)
    params = params[-1] if params else {}
    sched = build(name, devices, M, UNIT, CFG.num_blocks, None, **params)
    return RunSpec(sched, CFG, structures[: dp * M], weights, 1, dp=dp, gp=gp, steps=0, warmup=1, dtype="float64",
                   measure_memory=False, return_grads=True, optimizer_step=False)


def test_distributed_pipeline_equals_double_backward(structures):
    """Real gloo processes exchanging the four phases' messages: PP = 4 and PP = 2 (linear, V-fold
    and wave placements), PP x DP, PP x GP and DP x GP (with a stress term): parameter gradients
    equal single-process double backward (float64)."""
    from tasks.launch import spawn

    cases = [("1f1b4", 4, 1, 1, FORCES), ("wavek", 2, 1, 1, FORCES), ("hanayo4", 2, 1, 1, FORCES),
             ("1f1b4", 2, 2, 1, FORCES), ("wavek", 2, 1, 2, STRESS), ("gpipe4", 1, 2, 2, STRESS)]
    specs = [_spec(name, pp, structures, w, dp=dp, gp=gp) for name, pp, dp, gp, w in cases]
    results = spawn(run_many, 4, specs, timeout=600)
    refs = {}
    for k, (name, pp, dp, gp, w) in enumerate(cases):
        if (w, dp) not in refs:
            refs[(w, dp)] = _reference(structures[: 2 * dp], w)[1]
        err = exactness_error([r[k] for r in results], refs[(w, dp)])
        assert err <= 1e-9, f"{specs[k].schedule.label} PP{pp}xDP{dp}xGP{gp}: relative gradient error {err:.2e}"


def test_cached_topologies_equal_freshly_built_ones(structures):
    from components.januspipe import runtime

    fresh = GraphDataset(structures, CFG.cutoff, CFG.three_body_cutoff)
    a = runtime.dataset(structures, CFG.cutoff, CFG.three_body_cutoff)
    b = runtime.dataset(list(reversed(structures)), CFG.cutoff, CFG.three_body_cutoff)  # from the cache
    assert all(x is y for x, y in zip(b.topologies, reversed(a.topologies)))
    other = runtime.dataset(structures, CFG.cutoff, CFG.three_body_cutoff - 0.5)  # other cutoff: rebuilt
    for t, f, o in zip(a.topologies, fresh.topologies, other.topologies):
        for field in ("edge_center", "edge_neighbor", "edge_shift", "bond_edge", "angle_dst", "angle_src"):
            assert np.array_equal(getattr(t, field), getattr(f, field))
        assert len(o.bond_edge) <= len(t.bond_edge)
    ga, gf = a.batch([0, 2], dtype=torch.float64), fresh.batch([0, 2], dtype=torch.float64)
    assert torch.equal(ga.angle_src, gf.angle_src) and torch.equal(ga.positions, gf.positions)


def test_ranks_forked_from_the_fork_server_give_exact_gradients_and_report_their_cpu(structures):
    """``runtime.launch`` (what the pipeline stage uses): same exactness as ``tasks.launch.spawn``."""
    from components.januspipe.runtime import launch, start_fork_server
    from tasks.launch import LaunchError

    start_fork_server()
    cases = [("1f1b4", 2, 1, 1, FORCES), ("wavek", 2, 1, 1, FORCES)]
    specs = [_spec(name, pp, structures, w, dp=dp, gp=gp) for name, pp, dp, gp, w in cases]
    results, cpu_s = launch(run_many, 2, specs, timeout=300)
    assert cpu_s > 0
    ref = _reference(structures[:2], FORCES)[1]
    for k in range(len(cases)):
        assert exactness_error([r[k] for r in results], ref) <= 1e-9
    with pytest.raises(LaunchError, match="world_size"):
        launch(run_many, 1, specs[:1], timeout=60)  # a 2-device spec on 1 rank fails in the rank


def test_saved_tensor_meter_frees_every_micro_batch_and_keeps_gradients_exact(structures):
    """The meter held each saved tensor with its grad_fn, a cycle that retain_graph=True kept alive:
    every finished micro-batch leaked its saved activations and inflated the measured peak. Now the
    meter is back at 0 bytes after each micro-batch, and metering does not change a gradient."""
    import gc

    from components.januspipe.runtime import SavedTensorMeter

    model, ref = _reference(structures[:3], FORCES)
    model.zero_grad(set_to_none=True)
    ds = GraphDataset(structures[:3], CFG.cutoff, CFG.three_body_cutoff)
    mbs = [ds.batch([i], dtype=torch.float64) for i in range(3)]
    stages = [FourPhaseStage(m, FORCES, 1 / 3) for m in stage_modules(model, 2)]
    meter = SavedTensorMeter(exclude=list(model.parameters()))
    after = []
    with meter:
        for mb in mbs:
            run_local_pipeline(stages, [mb])
            gc.collect()
            after.append(meter.current)
    assert meter.peak > 0 and after == [0, 0, 0]
    assert _rel_error(model, ref) <= 1e-12
