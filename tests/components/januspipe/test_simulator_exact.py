"""The simulator's cost terms, timed and summed by hand on tiny schedules.

Every other test runs the simulator with the unit cost model (no per-stage extras, free messages,
no per-stage activation bytes); here each cost term is non-zero and different, so a term that goes to
the wrong stage, phase or instant changes an exact number. All values are binary fractions: the
simulator's sums are exact and compared with ``==``.
"""
from __future__ import annotations

import pytest

from components.januspipe.schedules import Action, Schedule, gpipe4, linear
from components.januspipe.simulator import CostModel, simulate

# num_blocks=3 on 2 stages: split_blocks -> stage 0 has blocks [0, 2) (2 blocks), stage 1 has [2, 3) (1 block)
COSTS = CostModel(
    block_s=(1.0, 2.0, 1.0, 2.0),
    stage_overhead_s=(0.5, 0.5, 0.5, 0.5),
    first_extra_s=(1.0, 0.0, 0.0, 0.0),       # only the first stage, only P1
    last_extra_s=(0.0, 0.0, 0.0, 2.0),        # only the last stage, only P4
    block_act_forward_bytes=10.0,
    block_act_force_bytes=100.0,
    stage_act_forward_bytes=1000.0,
    stage_act_force_bytes=10000.0,
    state_bytes=0.25,
    geo_bytes=1.0,                            # added to the P2 and P3 messages only
    latency_s=0.25,
    bandwidth_Bps=1.0,
)


def test_gpipe_on_two_devices_exact_timeline_makespan_and_peak_memory():
    # Stage compute, stage_overhead + blocks * block_s (+ first_extra on stage 0, + last_extra on stage 1):
    #   stage 0 (2 blocks): P1 0.5+2+1 = 3.5   P2 0.5+4 = 4.5   P3 0.5+2 = 2.5   P4 0.5+4   = 4.5
    #   stage 1 (1 block):  P1 0.5+1   = 1.5   P2 0.5+2 = 2.5   P3 0.5+1 = 1.5   P4 0.5+2+2 = 4.5
    # Messages (sender's phase): latency + bytes / bandwidth
    #   P1, P4: 0.25 + 0.25 = 0.5        P2, P3: 0.25 + (0.25 + 1.0) = 1.5
    # Chain of one micro-batch: P1s0 -d0->d1 (P1 msg) P1s1 -> P2s1 -d1->d0 (P2 msg) P2s0 -> P3s0
    #   -d0->d1 (P3 msg) P3s1 -> P4s1 -d1->d0 (P4 msg) P4s0; start = max(device free, pred end + msg).
    # gpipe4, phase-major: every device runs P1 m0, P1 m1, P2 m0, P2 m1, P3 m0, P3 m1, P4 m0, P4 m1.
    #   d0 P1 m0 [0, 3.5]       P1 m1 [3.5, 7]
    #   d1 P1 m0 [3.5+.5=4, 5.5]              P1 m1 [max(5.5, 7+.5)=7.5, 9]
    #   d1 P2 m0 [9, 11.5]      P2 m1 [11.5, 14]
    #   d0 P2 m0 [max(7, 11.5+1.5)=13, 17.5]  P2 m1 [max(17.5, 14+1.5), 22]
    #   d0 P3 m0 [22, 24.5]     P3 m1 [24.5, 27]
    #   d1 P3 m0 [max(14, 24.5+1.5)=26, 27.5] P3 m1 [max(27.5, 27+1.5)=28.5, 30]
    #   d1 P4 m0 [30, 34.5]     P4 m1 [34.5, 39]
    #   d0 P4 m0 [max(27, 34.5+.5)=35, 39.5]  P4 m1 [max(39.5, 39+.5), 44]
    # makespan 44; busy d0 = 2*(3.5+4.5+2.5+4.5) = 30, d1 = 2*(1.5+2.5+1.5+4.5) = 20;
    # bubble = 1 - 50 / (2 * 44).
    res = simulate(gpipe4(2, 2), COSTS, 3, keep_timeline=True)
    times = {(d, a.phase, a.microbatch): (s, e) for d, a, s, e in res.timeline}
    assert times == {
        (0, 1, 0): (0.0, 3.5), (0, 1, 1): (3.5, 7.0), (1, 1, 0): (4.0, 5.5), (1, 1, 1): (7.5, 9.0),
        (1, 2, 0): (9.0, 11.5), (1, 2, 1): (11.5, 14.0), (0, 2, 0): (13.0, 17.5), (0, 2, 1): (17.5, 22.0),
        (0, 3, 0): (22.0, 24.5), (0, 3, 1): (24.5, 27.0), (1, 3, 0): (26.0, 27.5), (1, 3, 1): (28.5, 30.0),
        (1, 4, 0): (30.0, 34.5), (1, 4, 1): (34.5, 39.0), (0, 4, 0): (35.0, 39.5), (0, 4, 1): (39.5, 44.0),
    }
    assert res.makespan_s == 44.0
    assert res.busy_s == [30.0, 20.0]
    assert res.bubble_ratio == 1.0 - 50.0 / 88.0
    # Activation bytes per stage: A1 = stage_act_forward + blocks * block_act_forward (held P1 start ..
    # P4 end), A2 = stage_act_force + blocks * block_act_force (held P2 start .. P3 end):
    #   stage 0: A1 = 1000 + 20 = 1020, A2 = 10000 + 200 = 10200
    #   stage 1: A1 = 1000 + 10 = 1010, A2 = 10000 + 100 = 10100
    # Phase-major: both micro-batches' A1 and A2 are allocated before the first P3 releases anything,
    # so the peak is 2 * (A1 + A2): d0 2 * 11220 = 22440, d1 2 * 11110 = 22220.
    assert res.peak_memory_bytes == [22440.0, 22220.0]
    # the memory is released at the ends of P3 and P4
    assert sorted(res.release_times) == [24.5, 27.0, 27.5, 30.0, 34.5, 39.0, 39.5, 44.0]


#: the one-device tests run on both simulators: the direct one, and the processor-sharing one with one
#: core shared with one external CPU-bound task (every action runs at half speed: all times doubled)
SHARED = pytest.mark.parametrize("shared", [False, True], ids=["direct", "shared-core"])


def _one_device_1f1b(stage_costs, order=None, shared=False):
    """One device, one stage, two micro-batches one after the other (1F1B with cap 1) or in ``order``
    ((phase, micro-batch) pairs); ``shared``: through the processor-sharing simulator at half speed."""
    order = order or [(p, m) for m in (0, 1) for p in (1, 2, 3, 4)]
    acts = tuple(Action(p, m, 0) for p, m in order)
    sched = Schedule("hand", linear(1), 2, (acts,)).validate()
    # num_blocks=2 on 1 stage: A1 = 1000 + 2*10 = 1020 and A2 = 2*1 = 2 (A1 > A2)
    costs = CostModel(block_s=(1.0,) * 4, stage_overhead_s=(0.0,) * 4, first_extra_s=(0.0,) * 4,
                      last_extra_s=(0.0,) * 4, block_act_forward_bytes=10.0, block_act_force_bytes=1.0,
                      stage_act_forward_bytes=1000.0)
    if shared:
        return simulate(sched, costs, 2, stage_costs=stage_costs, keep_timeline=True, cores=1, external_load=1.0)
    return simulate(sched, costs, 2, stage_costs=stage_costs, keep_timeline=True)


@SHARED
def test_memory_released_at_an_instant_is_free_for_an_allocation_at_the_same_instant(shared):
    k = 2.0 if shared else 1.0                # time scale
    # stage costs (1, 2, 1, 3): mb0 P1 [0,1] P2 [1,3] P3 [3,4] P4 [4,7]; mb1 P1 [7,8] ... P4 [11,14].
    # At t=7 mb0's P4 releases A1 and mb1's P1 allocates A1: releases count first, so the memory
    # never holds both A1s; the peak is A1 + A2 = 1022 (during P2), not 2 * A1 = 2040.
    res = _one_device_1f1b([(1.0, 2.0, 1.0, 3.0)], shared=shared)
    assert [(s, e) for _, _, s, e in res.timeline][3:5] == [(4 * k, 7 * k), (7 * k, 8 * k)]
    assert res.makespan_s == 14 * k
    assert res.peak_memory_bytes == [1022.0]


@SHARED
def test_activation_memory_is_held_from_the_start_of_its_action(shared):
    k = 2.0 if shared else 1.0                # time scale
    # A1 is allocated when P1 starts and A2 when P2 starts (the action builds them), and each is freed
    # when the consuming P4/P3 ends. With a zero-time P3, mb0: P1 [0,1] P2 [1,3] P3 [3,3] P4 [3,6]:
    # A2 is held over [1, 3], so the peak is A1 + A2 = 1022. (Were it counted only from P2's end,
    # its allocation and P3's release would fall on the same instant t=3, releases first, and the peak
    # would be A1 = 1020. With positive times the two conventions give the same peaks: one device
    # runs one action at a time, so no release falls strictly inside an allocating action.)
    res = _one_device_1f1b([(1.0, 2.0, 0.0, 3.0)], shared=shared)
    assert [(s, e) for _, _, s, e in res.timeline][:4] == [(0.0, k), (k, 3 * k), (3 * k, 3 * k), (3 * k, 6 * k)]
    assert res.makespan_s == 12 * k
    assert res.peak_memory_bytes == [1022.0]


@SHARED
def test_p3_frees_the_force_activations_and_p4_the_energy_activations(shared):
    k = 2.0 if shared else 1.0                # time scale
    # Order P1 m0, P2 m0, P3 m0, P1 m1, P2 m1, P3 m1, P4 m0, P4 m1 with costs (1, 2, 1, 3):
    # [0,1] [1,3] [3,4] [4,5] [5,7] [7,8] [8,11] [11,14]. After P3 m0 only mb0's A1 is held, so
    # during P2 m1 the device holds 2 * A1 + A2 = 2042 (were P3 to free A1, it would be A1 + 2 * A2).
    order = [(1, 0), (2, 0), (3, 0), (1, 1), (2, 1), (3, 1), (4, 0), (4, 1)]
    res = _one_device_1f1b([(1.0, 2.0, 1.0, 3.0)], order, shared)
    assert res.makespan_s == 14 * k
    assert res.peak_memory_bytes == [2042.0]
