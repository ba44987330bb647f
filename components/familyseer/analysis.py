"""What the evaluation reports: search-time speed-up and cost-model ranking quality.

**Search-time speed-up** (the artifact's ``scripts/process_data.py`` metric). For each policy the
seeds' best-weighted-latency curves (``sum_i weight_i x best_i`` after every trial) are averaged on
the trial axis. ``L*`` is the baseline's final latency. The baseline needs ``t_base`` trials to first
reach ``L*``; the method needs ``t_method``; speed-up = ``t_base / t_method`` (and the same on the
wall-clock axis, the mean wall time at those trial counts). At the x% level the threshold is
``L0 - x (L0 - L*)`` with ``L0`` the baseline's first complete latency. A method that never reaches
the threshold gets ``t_base / (its last trial)`` — an upper bound — and ``reached = False``. All curves
are cut at the budget (a policy's last round may overshoot it; those trials are not counted).
:func:`per_seed_speedups` computes the same figure for each seed alone (the baseline's and the method's
runs of one seed, paired): the wall-clock figure of the seed-mean curves moves with one stalled run.

**Cost-model quality.** Measured records of a model (all runs, all policies) are split by seed:
records of seed ``s`` are held out, a global XGBoost model (all tasks) and one XGBoost model per
family are trained on the other seeds' records, and both rank the held-out candidates of each task.
Score: pairwise ranking accuracy (share of held-out pairs of the same task with different measured
latency that the model orders correctly), pooled per family over tasks and folds, and over all
families and over the multi-member families alone (a one-member family's model is a per-task model:
its score says nothing about sharing samples within a family). A task of a fold is scored by both
models or by neither (when one of them had nothing to train on), so the two accuracies are always
over the same pairs. The gain (family minus global, in points) comes with a 90 % interval from a
paired bootstrap of the held-out candidates (:func:`ranking_bootstrap`); the claim reads its lower
end, so a gain inside the resampling noise is not counted as "better".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from components.familyseer.scheduler import FAILED_MS, trajectory


# --------------------------------------------------------------------------------------------------
# curves and search-time speed-up


def untunable_tasks(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Names of the tasks that no trial of any of ``runs`` measured validly (every build or run failed
    on every policy and seed): they would hold every weighted-latency curve at inf."""
    names = [str(n) for r in runs for n in r["tasks"]]
    valid = {str(r["tasks"][int(t["task"])]) for r in runs for t in r["trials"] if float(t["latency_ms"]) < FAILED_MS}
    return sorted(set(names) - valid)


def set_aside(run: Mapping[str, Any], tasks: Sequence[str]) -> dict[str, Any]:
    """A copy of ``run`` in which ``tasks`` weigh 0: its curve is the weighted latency of the other
    tasks (the trials spent on them still count). ValueError if no task of non-zero weight would remain:
    the weighted latency of no task is 0, not a latency."""
    drop = set(tasks)
    weights = [0.0 if name in drop else w for name, w in zip(run["tasks"], run["weights"])]
    if not any(weights):
        raise ValueError(f"setting aside {sorted(drop)} leaves no task of non-zero weight among the run's tasks "
                         f"{list(run['tasks'])}: its weighted latency would be 0; expected at least one task kept")
    return {**run, "weights": weights}


def run_curve(run: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(best weighted latency in ms, wall seconds) after each trial of a run; inf before every task is
    measured. Runs can overshoot their budget by part of a round: callers cut curves at the budget."""
    curve = trajectory(run["trials"], run["weights"])
    lat = np.asarray(curve.latency_ms, dtype=float)
    return np.minimum.accumulate(lat) if lat.size else lat, np.asarray(curve.wall_s, dtype=float)


def seed_curves(runs: Sequence[Mapping[str, Any]], length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-run latency and wall-time curves as (runs, length) arrays on the trial grid 1..length (a run
    shorter than ``length`` holds its last value)."""
    curves = [run_curve(r) for r in runs]
    length = length or max(len(c[0]) for c in curves)
    lat = np.full((len(curves), length), np.inf)
    wall = np.zeros((len(curves), length))
    for k, (y, t) in enumerate(curves):
        m = min(len(y), length)
        lat[k, :m], wall[k, :m] = y[:m], t[:m]
        if m < length and m > 0:
            lat[k, m:], wall[k, m:] = y[m - 1], t[m - 1]
    return lat, wall


def mean_curve(runs: Sequence[Mapping[str, Any]], length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Seed-mean latency and wall-time curves on the trial grid 1..length (runs hold their last value)."""
    lat, wall = seed_curves(runs, length)
    return lat.mean(axis=0), wall.mean(axis=0)


def first_reach(curve: np.ndarray, threshold: float, rel_tol: float = 1e-9) -> int | None:
    """1-based trial at which ``curve`` first is <= threshold (None if never)."""
    hit = np.nonzero(curve <= threshold * (1 + rel_tol))[0]
    return int(hit[0]) + 1 if hit.size else None


@dataclass
class SpeedUp:
    level: float             # 1.0 = reach the baseline's final latency, 0.9 = 90 % of its improvement
    threshold_ms: float
    baseline_trials: int
    method_trials: int | None
    speedup_trials: float
    baseline_wall_s: float
    method_wall_s: float | None
    speedup_wall: float
    reached: bool


def search_speedup(baseline: Sequence[Mapping[str, Any]], method: Sequence[Mapping[str, Any]],
                   level: float = 1.0, budget: int | None = None) -> SpeedUp | None:
    """Speed-up of ``method`` over ``baseline`` (lists of runs, one per seed) within ``budget`` trials
    (default: each curve's full length); None if the baseline never measured every task."""
    b_lat, b_wall = mean_curve(baseline, budget)
    m_lat, m_wall = mean_curve(method, budget)
    return _speedup(b_lat, b_wall, m_lat, m_wall, level)


def _speedup(b_lat: np.ndarray, b_wall: np.ndarray, m_lat: np.ndarray, m_wall: np.ndarray,
             level: float) -> SpeedUp | None:
    finite = np.isfinite(b_lat)
    if not finite.any():
        return None
    final = float(b_lat[-1])
    start = float(b_lat[finite][0])
    threshold = start - level * (start - final)
    t_base = first_reach(b_lat, threshold)
    assert t_base is not None
    t_meth = first_reach(m_lat, threshold)
    reached = t_meth is not None
    t_eff = t_meth if reached else len(m_lat)
    w_base = float(b_wall[t_base - 1])
    w_meth = float(m_wall[t_eff - 1])
    return SpeedUp(level, threshold, t_base, t_meth, t_base / t_eff, w_base, w_meth if reached else None,
                   w_base / w_meth if w_meth > 0 else float("nan"), reached)


def per_seed_speedups(baseline: Sequence[Mapping[str, Any]], method: Sequence[Mapping[str, Any]],
                      level: float = 1.0, budget: int | None = None) -> list[SpeedUp | None]:
    """:func:`search_speedup` of the k-th method run over the k-th baseline run (runs listed in the same
    seed order), one per seed; None where that baseline run never measured every task."""
    if len(baseline) != len(method):
        raise ValueError(f"per-seed speed-ups pair runs by seed: got {len(baseline)} baseline and "
                         f"{len(method)} method runs")
    return [search_speedup([b], [m], level, budget) for b, m in zip(baseline, method)]


def bootstrap_streams(n: int) -> list[np.random.SeedSequence]:
    """One independent random stream per model for :func:`bootstrap_speedups`: the first model's is numpy
    seed 0 (``default_rng(0)``'s stream, so a one-model evaluation resamples as it always did), the others
    ``SeedSequence(0)``'s spawned children (independent of it and of each other)."""
    if n <= 0:
        return []
    return [np.random.SeedSequence(0)] + np.random.SeedSequence(0).spawn(n - 1)


def bootstrap_speedups(baseline: Sequence[Mapping[str, Any]], method: Sequence[Mapping[str, Any]],
                       budget: int | None = None, resamples: int = 1000,
                       seed: int | np.random.SeedSequence = 0) -> np.ndarray:
    """Trial speed-ups (level 1.0) of ``method`` over ``baseline`` with the seeds of each resampled with
    replacement, ``resamples`` times (numpy generator ``seed``, an int or a stream of
    :func:`bootstrap_streams`): how much the seed-mean figure owes to which seeds ran. NaN where a
    resampled baseline never measured every task."""
    b_lat, b_wall = seed_curves(baseline, budget)
    m_lat, m_wall = seed_curves(method, budget)
    rng = np.random.default_rng(seed)
    out = np.full(resamples, np.nan)
    for r in range(resamples):
        ib = rng.integers(len(b_lat), size=len(b_lat))
        im = rng.integers(len(m_lat), size=len(m_lat))
        sp = _speedup(b_lat[ib].mean(axis=0), b_wall[ib].mean(axis=0), m_lat[im].mean(axis=0),
                      m_wall[im].mean(axis=0), 1.0)
        out[r] = sp.speedup_trials if sp is not None else np.nan
    return out


def interval(samples: np.ndarray, coverage: float = 0.9) -> tuple[float, float] | None:
    """Central ``coverage`` percentile interval of the finite ``samples`` (None if there are none)."""
    x = np.asarray(samples, dtype=float)
    x = x[np.isfinite(x)]
    if not x.size:
        return None
    tail = 50 * (1 - coverage)
    return float(np.percentile(x, tail)), float(np.percentile(x, 100 - tail))


# --------------------------------------------------------------------------------------------------
# cost-model ranking quality


def pair_matrices(scores: Sequence[float], latencies: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric ``(correct, comparable)`` 0/1 matrices over the candidates: ``comparable[i, j]`` where
    the two latencies differ, ``correct[i, j]`` where the scores order that pair the right way round
    (zero diagonals). :func:`pairwise_accuracy` is their upper triangle's sum; with multiplicities ``w``
    of a resample of the candidates, ``w @ M @ w / 2`` counts that resample's pairs."""
    s = np.asarray(scores, dtype=float)
    y = np.asarray(latencies, dtype=float)
    ds = s[:, None] - s[None, :]
    dy = y[None, :] - y[:, None]  # > 0 where i is faster than j
    comparable = dy != 0
    correct = (np.sign(ds) == np.sign(dy)) & comparable
    return correct.astype(float), comparable.astype(float)


def ranking_bootstrap(groups: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], resamples: int,
                      seed: int | np.random.SeedSequence = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pooled pairwise accuracies of two models with the held-out candidates resampled.

    ``groups``: one ``(correct_a, correct_b, comparable)`` triple (:func:`pair_matrices`) per scored
    (fold, task); in each resample every group's candidates are drawn with replacement (its own count)
    and both models are scored on the same draw (paired). Returns the two arrays of ``resamples``
    pooled accuracies (NaN where a resample has no comparable pair). What it measures: how much the
    accuracy gap owes to which candidates happened to be held out, given the trained models - not the
    run-to-run spread of the tuning runs that produced the records."""
    rng = np.random.default_rng(seed)
    ca = np.zeros(resamples)
    cb = np.zeros(resamples)
    n = np.zeros(resamples)
    for a, b, comp in groups:
        k = comp.shape[0]
        w = rng.multinomial(k, np.full(k, 1.0 / k), size=resamples).astype(float)  # multiplicities
        ca += ((w @ a) * w).sum(axis=1) / 2
        cb += ((w @ b) * w).sum(axis=1) / 2
        n += ((w @ comp) * w).sum(axis=1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, ca / n, np.nan), np.where(n > 0, cb / n, np.nan)


def pairwise_accuracy(scores: Sequence[float], latencies: Sequence[float]) -> tuple[int, int]:
    """(correctly ordered pairs, pairs) over pairs with different latencies: a higher score must mean a
    lower latency (MetaSchedule's cost models predict normalized throughput)."""
    correct, comparable = pair_matrices(scores, latencies)
    return int(np.triu(correct, 1).sum()), int(np.triu(comparable, 1).sum())


@dataclass
class Record:
    task: str
    seed: int
    key: str        # trace text, for de-duplication
    latency_ms: float
    record: Any     # TuningRecord
    _candidate: Any = None

    @property
    def candidate(self) -> Any:
        """The record as a MeasureCandidate (its trace applied to the workload), built once."""
        if self._candidate is None:
            self._candidate = self.record.as_measure_candidate()
        return self._candidate


def load_records(run_dirs: Sequence[tuple[int, Any]], task_of_workload: Mapping[str, str]) -> list[Record]:
    """Valid measured records of the given runs ``(seed, run_dir)``, de-duplicated per seed."""
    from tvm.s_tir.meta_schedule.utils import shash2hex

    from components.familyseer.latency import load_database

    out: list[Record] = []
    seen: set[tuple[int, str, str]] = set()
    for seed, run_dir in run_dirs:
        for rec in load_database(run_dir).get_all_tuning_records():
            secs = [float(s) for s in (rec.run_secs or [])]
            if not secs or min(secs) <= 0 or float(np.median(secs)) * 1e3 >= FAILED_MS:
                continue
            task = task_of_workload.get(shash2hex(rec.workload.mod))
            if task is None:
                continue
            key = str(rec.trace.as_json())
            if (seed, task, key) in seen:
                continue
            seen.add((seed, task, key))
            out.append(Record(task, int(seed), key, float(np.median(secs)) * 1e3, rec))
    return out


def ranking_quality(records: Sequence[Record], contexts: Mapping[str, Any], family_of_task: Mapping[str, str],
                    make_model: Any, min_test: int = 8, resamples: int = 1000,
                    seed: int | np.random.SeedSequence = 0) -> dict[str, Any]:
    """Leave-one-seed-out pairwise ranking accuracy of per-family vs global models.

    ``contexts``: task name -> TuneContext (for feature extraction); ``make_model(members, samples)``
    returns a fresh cost model shared by ``members`` tasks that trains once it holds ``samples`` samples.
    Each family's gain (family minus global accuracy, in points) and the multi-member families' pooled
    gain come with a 90 % interval from :func:`ranking_bootstrap` (``resamples`` paired resamples of the
    held-out candidates, numpy seed ``seed``); ``"_bootstrap"`` holds the multi-member resamples'
    ``(global, family)`` accuracies for pooling over models (not JSON: pop it before writing).
    """
    from tvm.s_tir.meta_schedule.runner import RunnerResult

    seeds = sorted({r.seed for r in records})
    tasks = sorted({r.task for r in records})
    folds = seeds if len(seeds) > 1 else []
    pairs = {"global": {}, "family": {}}  # kind -> family -> [correct, total]
    per_task: dict[str, dict[str, list[int]]] = {}
    boot_groups: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}  # family -> (global, family, comparable)

    def train(model: Any, train_records: Sequence[Record], task_names: Sequence[str]) -> None:
        for t in task_names:
            recs = [r for r in train_records if r.task == t]
            if recs:
                model.update(contexts[t], [r.candidate for r in recs],
                             [RunnerResult([r.latency_ms / 1e3], None) for r in recs])

    for held in folds:
        train_recs = [r for r in records if r.seed != held]
        train_keys = {(r.task, r.key) for r in train_recs}
        test = [r for r in records if r.seed == held and (r.task, r.key) not in train_keys]
        global_model = make_model(len(tasks), len(train_recs))
        train(global_model, train_recs, tasks)
        fam_models: dict[str, Any] = {}
        for fam in sorted(set(family_of_task[t] for t in tasks)):
            members = [t for t in tasks if family_of_task[t] == fam]
            fam_models[fam] = make_model(len(members), sum(1 for r in train_recs if r.task in members))
            train(fam_models[fam], train_recs, members)
        for t in tasks:
            recs = [r for r in test if r.task == t]
            if len(recs) < min_test:
                continue
            cands = [r.candidate for r in recs]
            lat = [r.latency_ms for r in recs]
            fam = family_of_task[t]
            scorers = (("global", global_model), ("family", fam_models[fam]))
            if any(getattr(model, "booster", True) is None for _, model in scorers):
                # a model with nothing to train on (a family without training records) cannot rank: the
                # task is scored by neither, so both accuracies are always over the same pairs
                continue
            mats = {}
            for kind, model in scorers:
                mats[kind], comparable = pair_matrices(model.predict(contexts[t], cands), lat)
                c, n = int(np.triu(mats[kind], 1).sum()), int(np.triu(comparable, 1).sum())  # pairwise_accuracy
                acc = pairs[kind].setdefault(fam, [0, 0])
                acc[0] += c
                acc[1] += n
                tacc = per_task.setdefault(t, {}).setdefault(kind, [0, 0])
                tacc[0] += c
                tacc[1] += n
            boot_groups.setdefault(fam, []).append((mats["global"], mats["family"], comparable))

    def ratio(cn: Sequence[int]) -> float | None:
        return cn[0] / cn[1] if cn[1] else None

    def gain_interval(groups: list) -> tuple[tuple[float, float] | None, np.ndarray, np.ndarray]:
        # every interval draws from a fresh generator of ``seed``: a pooled gain over one family is
        # that family's own interval, not another draw of it
        glob, fam_ = ranking_bootstrap(groups, resamples, np.random.default_rng(seed)) if groups \
            else (np.array([]), np.array([]))
        return interval(100 * (fam_ - glob)), glob, fam_

    families = {}
    for fam in sorted(set(pairs["global"]) | set(pairs["family"])):
        g, f = pairs["global"].get(fam, [0, 0]), pairs["family"].get(fam, [0, 0])
        families[fam] = {"members": sorted(t for t in tasks if family_of_task[t] == fam),
                         "pairs": int(f[1]), "global_accuracy": ratio(g), "family_accuracy": ratio(f),
                         "gain_pp_ci90": gain_interval(boot_groups.get(fam, []))[0]}
    def pooled(fams: set[str]) -> dict[str, list[int]]:
        return {k: [sum(v[0] for f, v in pairs[k].items() if f in fams),
                    sum(v[1] for f, v in pairs[k].items() if f in fams)] for k in pairs}

    tot = pooled(set(families))
    # families of >= 2 member tasks: only there does a family model share samples across tasks (a
    # one-member family's model is a per-task model)
    multi = {fam for fam, d in families.items() if len(d["members"]) >= 2}
    mm = pooled(multi)
    mm_ci, mm_glob, mm_fam = gain_interval([grp for fam in sorted(multi) for grp in boot_groups.get(fam, [])])
    return {"folds": len(folds), "records": len(records), "families": families,
            "global_accuracy": ratio(tot["global"]), "family_accuracy": ratio(tot["family"]),
            "pairs": int(tot["family"][1]),
            "multi_member": {"families": len(multi), "pairs": int(mm["family"][1]),
                             "global_accuracy": ratio(mm["global"]), "family_accuracy": ratio(mm["family"]),
                             "gain_pp_ci90": mm_ci},
            "per_task": {t: {k: ratio(v) for k, v in d.items()} for t, d in per_task.items()},
            "_bootstrap": {"multi_member": (mm_glob, mm_fam)}}


def to_jsonable(obj: Any) -> Any:
    """Dataclasses/numpy -> JSON types; non-finite floats -> None."""
    if hasattr(obj, "__dataclass_fields__"):
        return {k: to_jsonable(getattr(obj, k)) for k in obj.__dataclass_fields__}
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    return obj
