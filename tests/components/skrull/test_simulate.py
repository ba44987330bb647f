"""The simulator's studies: sensitivity sweeps change one thing per row; the ILP study never writes
a non-finite gap; the report's ILP summary."""
import numpy as np
import pytest

from components.skrull import simulate as sim
from components.skrull.cost_model import paper_preset
from components.skrull.ilp import ILPResult
from components.skrull.lengths import TABLE1
from components.skrull.report import ilp_summary
from components.skrull.simulate import ilp_study, max_group_length, sensitivity
from tasks.io import read_json, write_json


def test_sensitivity_truncates_once_so_bucket_rows_share_their_batches(monkeypatch):
    """Every bucket row runs on the same batches (truncated once, at what the smallest C holds), so a
    row differs from another only in C; before, each C truncated its own batches."""
    seen = []
    real_compare = sim.compare

    def spy(batches, dp, cp, cost, seed=0):
        seen.append((cost.bucket_size, [b.copy() for b in batches]))
        return real_compare(batches, dp, cp, cost, seed)

    monkeypatch.setattr(sim, "compare", spy)
    cost = paper_preset("qwen2.5-0.5b")
    cp, buckets = 2, [2048, 8192, cost.bucket_size]
    pool = np.array([300, 1200, 3000, 9000, 40000, 60000])       # 40K / 60K exceed what C = 2K can hold
    rows = sensitivity(pool, cost, cp, [4, 8], buckets, 2, seed=0)
    max_len = max_group_length(cp, 2048)
    assert all(r["max_len"] == max_len for r in rows)
    bucket_batches = [b for c, b in seen[2:]]
    assert [c for c, _ in seen[2:]] == buckets
    assert max(int(b.max()) for b in bucket_batches[0]) == max_len   # the long documents were truncated
    for other in bucket_batches[1:]:
        assert all(np.array_equal(x, y) for x, y in zip(bucket_batches[0], other))
    # the bucket row at the preset's C is the batch-size row at the largest batch size
    by = {(r["vary"], r["value"]): r for r in rows}
    assert by[("bucket_tokens", cost.bucket_size)]["speedup_vs_deepspeed"] == by[("batch_size", 8)]["speedup_vs_deepspeed"]


def test_ilp_study_writes_no_infinite_gap_when_the_solver_has_no_bound(monkeypatch, tmp_path):
    """A time-limited solve without a positive lower bound leaves the gap unknown (None, with a note),
    not inf: tasks.io.write_json refuses non-finite numbers, so inf killed the simulate stage at its end."""
    real = sim.solve_exact

    def no_bound(lengths, dp, cp, cost, **kw):
        res = real(lengths, dp, cp, cost, **kw)
        return ILPResult(schedule=res.schedule, objective_s=res.objective_s, bound_s=None, optimal=False,
                         seconds=res.seconds, status="time limit reached")

    monkeypatch.setattr(sim, "solve_exact", no_bound)
    cost = paper_preset("qwen2.5-0.5b")
    pools = {"chatqa2": TABLE1["chatqa2"].sample(200, np.random.default_rng(0))}
    rows = ilp_study(pools, cost, 1, 2, 4, 2, 20.0, seed=0)
    assert all(r["solved"] and r["gap"] is None and r["gap_dacp_literal"] is None for r in rows)
    assert all("no positive lower bound" in r["gap_note"] and r["gap_vs_best_known"] >= 0 for r in rows)
    write_json(tmp_path / "ilp.json", rows)                              # allow_nan=False: must not raise
    assert read_json(tmp_path / "ilp.json")[0]["gap"] is None
    s = ilp_summary(rows)
    assert s["gap_unknown"] == 2 and s["max_gap"] is None and s["mean_gap"] is None and s["solved"] == 2


def test_ilp_summary_skips_unknown_gaps():
    rows = [{"solved": True, "optimal": True, "gap": 0.05, "gap_vs_best_known": 0.05, "gap_dacp_literal": 0.5,
             "heuristic_ms": 1.0, "ilp_solve_s": 2.0},
            {"solved": True, "optimal": False, "gap": 0.15, "gap_vs_best_known": 0.0, "gap_dacp_literal": 0.7,
             "heuristic_ms": 2.0, "ilp_solve_s": 10.0},
            {"solved": True, "optimal": False, "gap": None, "gap_vs_best_known": 0.02, "gap_dacp_literal": None,
             "heuristic_ms": 3.0, "ilp_solve_s": 10.0},
            {"solved": False, "status": "infeasible"}]
    s = ilp_summary(rows)
    assert s == {"instances": 4, "solved": 3, "proven_optimal": 1, "gap_unknown": 1, "max_gap": 0.15,
                 "mean_gap": pytest.approx(0.10), "instances_over_10pct": 1, "max_gap_vs_best_known": 0.05,
                 "max_gap_dacp_literal": 0.7, "heuristic_ms_max": 3.0, "ilp_solve_s_max": 10.0}




@pytest.mark.parametrize("rows", [
    [],                                                                       # ilp.instances: 0
    [{"instance": 0, "solved": False, "status": "time limit reached"}] * 2,   # nothing solved
    [{"solved": True, "optimal": False, "gap": None, "gap_vs_best_known": 0.0, "gap_dacp_literal": None,
      "heuristic_ms": 1.0, "ilp_solve_s": 10.0}],                             # solved, no positive lower bound
], ids=["no-instances", "none-solved", "gap-unknown"])
def test_no_known_gap_leaves_the_ilp_claim_unknown_not_met(rows, tmp_path):
    """Without a single known gap the summary's gaps are None (JSON null) and the report's check of
    the ``ilp_gap`` claim (``ilp.max_gap <= 0.10``) says unknown; the summary used to say 0.0: met."""
    from tasks.report import claim_rows, load_claims

    s = ilp_summary(rows)
    assert s["max_gap"] is None and s["mean_gap"] is None and s["max_gap_dacp_literal"] is None
    assert s["instances_over_10pct"] == 0 and s["instances"] == len(rows)
    write_json(tmp_path / "m.json", {"ilp": s})                            # null, not a number: writable
    metrics = read_json(tmp_path / "m.json")
    row = next(r for r in claim_rows(load_claims("skrull"), {"ilp": metrics["ilp"], "ilp_local": metrics["ilp"]})
               if r["id"] == "ilp_gap")
    assert row["measured"] is None and row["baseline"] is None and row["met"] is None
    # a known gap still decides the claim
    known = [{"solved": True, "optimal": True, "gap": 0.0, "gap_vs_best_known": 0.0, "gap_dacp_literal": 0.3,
              "heuristic_ms": 1.0, "ilp_solve_s": 1.0}]
    row = next(r for r in claim_rows(load_claims("skrull"), {"ilp": ilp_summary(rows + known)})
               if r["id"] == "ilp_gap")
    assert row["measured"] == 0.0 and row["met"] is True
