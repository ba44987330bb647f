"""Schedules are valid action lists; the simulator's timing and memory follow its model."""
from __future__ import annotations

import pytest

from components.base import ConfigError
from components.januspipe.schedules import (SCHEDULE_NAMES, Action, Schedule, ScheduleError, chain, check_stages,
                                            family_grid, gpipe4, linear, vfold, wave)
from components.januspipe.simulator import (CostModel, build, budget_admission, canonical_1f1b_budget, simulate,
                                            tune)
from components.januspipe.schedules import janus_sweeps

UNIT = CostModel(block_s=(1.0, 1.1, 3.3, 1.06), stage_overhead_s=(0.0,) * 4, first_extra_s=(0.0,) * 4,
                 last_extra_s=(0.0,) * 4, block_act_forward_bytes=1.0, block_act_force_bytes=1.34,
                 state_bytes=100.0, latency_s=0.01, bandwidth_Bps=1e4)


def test_chain_alternates_direction():
    assert chain(3) == [(1, 0), (1, 1), (1, 2), (2, 2), (2, 1), (2, 0), (3, 0), (3, 1), (3, 2), (4, 2), (4, 1), (4, 0)]


def test_vfold_is_symmetric_and_waves_zigzag():
    assert vfold(3).stage_device == (0, 1, 2, 2, 1, 0)
    assert wave(2, 2).stage_device == (0, 1, 1, 0, 0, 1, 1, 0)
    assert all(len(vfold(4).stages_of(d)) == 2 for d in range(4))


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
@pytest.mark.parametrize("devices", [1, 2, 3, 4])
def test_every_schedule_is_a_valid_deadlock_free_action_list(name, devices):
    M = 2 * devices
    nb = 4 * devices
    budget = canonical_1f1b_budget(devices, M, UNIT, nb)
    for params in family_grid(name, devices, M, max_stages=nb):
        try:
            sched = build(name, devices, M, UNIT, nb, budget, **params)
        except ScheduleError:  # a budget-admitted micro-batch that alone exceeds the budget
            assert params.get("admission") == "budget" or name == "wavek"
            continue
        sched.validate()
        res = simulate(sched, UNIT, nb)  # raises on deadlock
        work = M * sum(sum(c) for c in UNIT.stage_costs(sched.num_stages, nb))
        assert res.makespan_s >= work / devices - 1e-9
        assert 0.0 <= res.bubble_ratio < 1.0


def test_simulator_single_device_has_no_bubble_and_one_microbatch_is_the_chain():
    nb = 4
    one_dev = simulate(gpipe4(1, 5), UNIT, nb)
    assert one_dev.bubble_ratio == pytest.approx(0.0, abs=1e-12)
    assert one_dev.makespan_s == pytest.approx(5 * nb * sum(UNIT.block_s))
    # one micro-batch over 4 devices: the whole chain in sequence plus one message per device hop
    res = simulate(gpipe4(4, 1), UNIT, nb)
    hops = 3 * sum(UNIT.message_s(p) for p in (1, 2, 3, 4))  # each phase crosses 3 device boundaries
    assert res.makespan_s == pytest.approx(nb * sum(UNIT.block_s) + hops)
    # memory: one micro-batch on one device holds A1 + A2 of the whole model at the P2/P3 turn
    res1 = simulate(gpipe4(1, 1), UNIT, nb)
    assert res1.peak_memory_max_bytes == pytest.approx(nb * (1.0 + 1.34))


def test_1f1b_cap_bounds_memory_and_phase_major_gpipe_holds_everything():
    D, M, nb = 4, 8, 8
    a1, a2 = 1.0 * nb / D, 1.34 * nb / D  # per stage
    g = simulate(gpipe4(D, M), UNIT, nb)
    assert g.peak_memory_max_bytes == pytest.approx(M * (a1 + a2))
    for cap in (1, 2, 4):
        r = simulate(build("1f1b4", D, M, UNIT, nb, cap=cap), UNIT, nb)
        assert r.peak_memory_max_bytes <= cap * (a1 + a2) + 1e-9


def test_budget_admission_respects_the_budget():
    D, M, nb = 4, 8, 16
    budget = canonical_1f1b_budget(D, M, UNIT, nb)
    for K in (1, 2):
        sched = budget_admission("wavek", vfold(D), M, UNIT, nb, janus_sweeps, budget, wave_size=K)
        assert simulate(sched, UNIT, nb).peak_memory_max_bytes <= budget * (1 + 1e-9)
    with pytest.raises(ScheduleError, match="never fits the memory budget"):
        budget_admission("wavek", vfold(D), M, UNIT, nb, janus_sweeps, 1.0)


def test_tuning_picks_the_fastest_candidate_within_budget():
    D, M, nb = 4, 8, 16
    budget = canonical_1f1b_budget(D, M, UNIT, nb)
    t = tune("hanayo4", D, M, UNIT, nb, budget)
    fitting = [c for c in t.candidates if c.peak_memory_max_bytes <= budget * (1 + 1e-9)]
    assert t.best.makespan_s == min(c.makespan_s for c in fitting)
    assert len(t.candidates) == len(family_grid("hanayo4", D, M, max_stages=nb))


def test_invalid_action_lists_are_rejected():
    pl = linear(2)
    good = gpipe4(2, 1)
    with pytest.raises(ScheduleError, match="listed twice|actions; expected"):
        Schedule("x", pl, 1, (good.actions[0] + good.actions[0][:1], good.actions[1])).validate()
    with pytest.raises(ScheduleError, match="stage lives on device"):
        Schedule("x", pl, 1, (good.actions[1], good.actions[0])).validate()
    # device 0 waits for P2 before doing its own P1: deadlock
    dead = Schedule("dead", pl, 1, ((Action(2, 0, 0), Action(1, 0, 0), Action(3, 0, 0), Action(4, 0, 0)),
                                    good.actions[1])).validate()
    with pytest.raises(ScheduleError, match="deadlock"):
        simulate(dead, UNIT, 2)


def test_more_stages_than_blocks_is_a_clear_error():
    with pytest.raises(ConfigError, match="needs 8 pipeline stages but the model has only 4"):
        check_stages(8, 4, "symfold at 4 processes")
    assert family_grid("symfold", 4, 8, max_stages=4) == []


def test_external_load_shares_the_cores_with_the_devices():
    """Processor sharing: a device busy alongside L CPU-bound tasks of other jobs on C cores runs at
    min(1, C / (busy devices + L)); without load and with enough cores nothing changes."""
    nb = 4
    alone = simulate(gpipe4(1, 3), UNIT, nb)
    assert simulate(gpipe4(1, 3), UNIT, nb, cores=1).makespan_s == pytest.approx(alone.makespan_s)
    shared = simulate(gpipe4(1, 3), UNIT, nb, cores=1, external_load=1.0)
    assert shared.makespan_s == pytest.approx(2 * alone.makespan_s)
    # one micro-batch on two devices: one device busy at a time, 2 cores shared with 2 external
    # tasks -> 2/3 of a core; the messages are not slowed
    two = simulate(gpipe4(2, 1), UNIT, nb)
    loaded = simulate(gpipe4(2, 1), UNIT, nb, cores=2, external_load=2.0)
    hops = sum(UNIT.message_s(p) for p in (1, 2, 3, 4))
    assert loaded.makespan_s == pytest.approx(1.5 * (two.makespan_s - hops) + hops)
    with pytest.raises(ValueError, match="external_load"):
        simulate(gpipe4(1, 1), UNIT, nb, cores=1, external_load=-1.0)


def test_wavek_tunes_its_order_inside_the_window():
    grid = family_grid("wavek", 8, 16)
    assert {p["order"] for p in grid} == {"sweeps", "phase"}
    with pytest.raises(ScheduleError, match="order"):
        build("wavek", 2, 4, UNIT, 4, None, K=1, order="random")


def _same_result(a, b):
    assert (a.label, a.makespan_s, a.bubble_ratio, a.peak_memory_bytes, a.busy_s) == \
        (b.label, b.makespan_s, b.bubble_ratio, b.peak_memory_bytes, b.busy_s)


def test_tuning_on_candidates_precomputed_in_a_process_pool_equals_plain_tuning():
    """The simulate stage builds the grid candidates in worker processes first and tunes on the memo:
    same candidates, same pick, same action lists as tuning without it."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from components.januspipe.simulator import candidate_jobs, simulate_candidates

    nb = 24
    points = [(2, 4), (4, 8), (4, 8)]  # a repeated point is looked up, not rebuilt
    budgets = {p: canonical_1f1b_budget(*p, UNIT, nb) for p in points}
    jobs = [(n, D, M, None if n == "gpipe4" else budgets[(D, M)]) for D, M in points for n in SCHEDULE_NAMES]
    with ProcessPoolExecutor(2, mp_context=mp.get_context("forkserver")) as pool:
        cache = dict(simulate_candidates(jobs, UNIT, nb, map_fn=lambda f, xs: pool.map(f, xs, chunksize=1)))
    assert candidate_jobs(jobs, UNIT, nb, cache) == []
    for D, M in dict.fromkeys(points):
        for name in SCHEDULE_NAMES:
            budget = None if name == "gpipe4" else budgets[(D, M)]
            plain, memo = tune(name, D, M, UNIT, nb, budget), tune(name, D, M, UNIT, nb, budget, cache=cache)
            assert len(plain.candidates) == len(memo.candidates)
            for a, b in zip(plain.candidates, memo.candidates):
                _same_result(a, b)
            _same_result(plain.best, memo.best)
            assert plain.schedule.actions == memo.schedule.actions
    # the bisections' builds landed in the memo too: tuning again computes nothing new
    n = len(cache)
    tune("1f1b4", 4, 8, UNIT, nb, budgets[(4, 8)], cache=cache)
    assert len(cache) == n
