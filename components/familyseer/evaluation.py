"""The evaluate stage's computation: numbers, tables and figures from the stored runs and latencies.

Pure library code (no MLflow/Prefect): the flow logs what :func:`evaluate_all` returns.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from components.base import InputError
from components.familyseer.analysis import (bootstrap_speedups, bootstrap_streams, interval, load_records, mean_curve,
                                            per_seed_speedups, ranking_quality, run_curve, search_speedup, set_aside,
                                            to_jsonable, untunable_tasks)
from components.familyseer.config import FamilySeerConfig
from components.familyseer.family import family_of, make_family_group
from components.familyseer.tuning import load_current_run
from components.io import read_json_record

#: seed resamples behind each speed-up's 90 % interval (one stream per model: analysis.bootstrap_streams)
BOOTSTRAP_RESAMPLES = 1000
#: held-out-candidate resamples behind the ranking gain's 90 % interval, and their root seed (one spawned
#: stream per model)
RANKING_BOOTSTRAP_RESAMPLES = 1000
RANKING_BOOTSTRAP_SEED = 1
#: the untuned builds every tuned one is compared with (entries of the compile stage's latency.json)
REFERENCE_BUILDS = ("pytorch_eager", "tvm_untuned")
#: (evaluate.method, evaluate.baseline) of components/familyseer/claims.yaml: only for this pair do the
#: metrics carry the keys the claims read (:func:`metric_keys`)
CLAIMED_PAIR = ("familyseer", "gradient")


def _finite(xs: list[float | None]) -> list[float]:
    return [float(x) for x in xs if x is not None and np.isfinite(x)]


def _median(xs: list[float | None]) -> float | None:
    """Median of the finite values (callers record how many there were next to it)."""
    xs = _finite(xs)
    return float(np.median(xs)) if xs else None


def _mean(xs: list[float | None]) -> float | None:
    """Mean of the finite values (callers record how many there were next to it)."""
    xs = _finite(xs)
    return float(np.mean(xs)) if xs else None


def read_manifest(tasks_file: Path, name: str) -> dict[str, Any]:
    """``tasks.json``, the data stage's manifest of model ``name``; InputError naming the file when it is
    missing, not JSON, or without a non-empty ``tasks`` list of named tasks."""
    what = (f"the data stage's task manifest of model {name!r} (run `python -m flows familyseer data`), a JSON "
            f"object whose 'tasks' is a non-empty list of objects with 'name' and 'core_op'")
    manifest = read_json_record(tasks_file, ("tasks",), what)
    tasks = manifest["tasks"]
    if not (isinstance(tasks, list) and tasks
            and all(isinstance(t, dict) and "name" in t and "core_op" in t for t in tasks)):
        raise InputError(f"{tasks_file}: 'tasks' is {str(tasks)[:120]!r}; expected {what}")
    return manifest


def read_tasks(tasks_file: Path, name: str) -> list[dict[str, Any]]:
    """The task list of :func:`read_manifest`."""
    return read_manifest(tasks_file, name)["tasks"]


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_latency(latency: Mapping[str, Any], cfg: FamilySeerConfig, latency_file: Path | str = "latency.json") -> None:
    """InputError naming ``latency_file`` (the compile stage's ``latency.json``), the model and what is
    expected unless it has an entry for every model of ``zoo.models`` with a numeric ``latency_ms_p50`` and
    ``latency_ms_p99`` for each reference build (:data:`REFERENCE_BUILDS`) and, per policy of
    ``tune.policies``, a ``latency_ms_p50`` for exactly the seeds of ``tune.seeds``."""
    tc = cfg.tune
    rerun = "re-run the compile stage (`python -m flows familyseer compile`)"
    seeds = sorted(str(s) for s in tc.seeds)
    if not isinstance(latency, Mapping):
        raise InputError(f"{latency_file}: a JSON {type(latency).__name__}, not an object; expected the compile "
                         f"stage's latencies of models {list(cfg.zoo.models)}; {rerun}")
    for name in cfg.zoo.models:
        lat = latency.get(name)
        if not isinstance(lat, Mapping):
            found = "missing" if lat is None else f"{str(lat)[:80]!r}"
            raise InputError(f"{latency_file}: model {name!r} is {found} (it has {sorted(latency)}); expected an "
                             f"object for every model of zoo.models {list(cfg.zoo.models)}; {rerun}")
        for key in REFERENCE_BUILDS:
            ref = lat.get(key)
            if not (isinstance(ref, Mapping)
                    and all(_is_number(ref.get(k)) for k in ("latency_ms_p50", "latency_ms_p99"))):
                found = "missing" if ref is None else f"{str(ref)[:80]!r}"
                raise InputError(f"{latency_file}: model {name!r}, {key!r} is {found}; expected an object with a "
                                 f"numeric 'latency_ms_p50' and 'latency_ms_p99' (the tuned builds are compared "
                                 f"with it); {rerun}")
        for p in tc.policies:
            per_seed = lat.get(f"tvm_{p}")
            found = sorted(per_seed) if isinstance(per_seed, Mapping) else per_seed
            if not isinstance(per_seed, Mapping) or sorted(per_seed) != seeds:
                raise InputError(f"{latency_file}: model {name!r}, 'tvm_{p}' has seeds {found}; expected the seeds "
                                 f"of tune.seeds {seeds}; {rerun}")
            for s, v in per_seed.items():
                if not (isinstance(v, Mapping) and _is_number(v.get("latency_ms_p50"))):
                    raise InputError(f"{latency_file}: model {name!r}, 'tvm_{p}' seed {s} is {str(v)[:80]!r}; "
                                     f"expected an object with a numeric 'latency_ms_p50'; {rerun}")


def _check_compiled_runs(latency: Mapping[str, Any], name: str, runs: Mapping[str, list[Mapping[str, Any]]],
                         seeds: list[int], latency_file: Path | str) -> None:
    """InputError unless every tuned build in ``latency`` was compiled from the run now on disk (the
    compile stage records each run's fingerprint as ``run_fingerprint``)."""
    for p, rs in runs.items():
        for s, run in zip(seeds, rs):
            got = latency[name][f"tvm_{p}"][str(s)].get("run_fingerprint")
            if got != run["fingerprint"]:
                raise InputError(f"{latency_file}: model {name!r}, 'tvm_{p}' seed {s} was compiled from the run "
                                 f"of fingerprint {got!r}; expected {run['fingerprint']!r}, the run now on disk: "
                                 f"re-run the compile stage (`python -m flows familyseer compile`)")


def final_latencies(runs: list[Mapping[str, Any]], budget: int) -> dict[str, Any]:
    """Each run's best weighted latency at the budget (us; None for a run that never measured every task
    validly) and their mean over the runs that have one, with how many did (``seeds_used``)."""
    per_seed: list[float | None] = []
    for run in runs:
        lat = run_curve(run)[0]
        value = float(lat[min(budget, lat.size) - 1]) * 1e3 if lat.size else float("inf")
        per_seed.append(value if np.isfinite(value) else None)
    used = _finite(per_seed)
    return {"mean_us": float(np.mean(used)) if used else None, "seeds": len(runs), "seeds_used": len(used),
            "per_seed_us": per_seed}


def final_ratio(baseline: Mapping[str, Any], method: Mapping[str, Any]) -> dict[str, Any]:
    """Baseline / method final latency (two :func:`final_latencies` of the same seeds) over the seeds both
    have one for: the ratio of their means over those seeds (None if there are none), with how many there
    were (``seeds_used``). ``method_missing``: the method has a final latency on no seed (each of its runs
    never measured some task validly); the headline then counts the model as one where the method fails
    "no worse than the baseline", not as one left out (:func:`_headline`)."""
    pairs = [(b, m) for b, m in zip(baseline["per_seed_us"], method["per_seed_us"])
             if b is not None and m is not None]
    b_mean = float(np.mean([b for b, _ in pairs])) if pairs else None
    m_mean = float(np.mean([m for _, m in pairs])) if pairs else None
    return {"ratio": b_mean / m_mean if (b_mean and m_mean) else None, "seeds_used": len(pairs),
            "method_missing": method["seeds_used"] == 0}


def metric_keys(method: str, baseline: str) -> tuple[str, str]:
    """(prefix of the search speed-up keys, key of the final-latency ratio) in the metrics. The claims
    (``claims.yaml``: FamilySeer against MetaSchedule's gradient scheduler) read the keys of
    :data:`CLAIMED_PAIR`, ``speedup_vs_gradient_*`` and ``ratio_baseline_over_method_mean``; any other pair's
    keys name both policies, so no claim reads another policy's figures (the report leaves them unjudged)."""
    if (method, baseline) == CLAIMED_PAIR:
        return f"speedup_vs_{baseline}", "ratio_baseline_over_method_mean"
    return f"speedup_{method}_vs_{baseline}", f"ratio_{baseline}_over_{method}_mean"


def _ranking_for_model(cfg: FamilySeerConfig, zoo_dir: Path, name: str, run_dirs: list[tuple[int, Path]],
                       tasks: list[dict[str, Any]], seed: int | np.random.SeedSequence = 0) -> dict[str, Any]:
    from tvm.s_tir.meta_schedule import TuneContext

    from components.familyseer.cost_model import make_xgb, store_features
    from components.familyseer.zoo import extract_tasks, load_model, make_target

    model = load_model(zoo_dir, name)
    target = make_target(cfg.tune.target_cores)
    extracted, infos = extract_tasks(model.fused, target, bool(model.manifest.get("complex_tasks_only", True)))
    contexts = {info.name: TuneContext(mod=t.dispatched[0], target=target, task_name=info.name)
                for t, info in zip(extracted, infos)}
    task_of_workload = {info.structural_hash: info.name for info in infos}
    groups = make_family_group(tasks, "op")
    family_of_task = {tasks[i]["name"]: fam for i, fam in family_of(groups).items()}
    records = load_records(run_dirs, task_of_workload)
    cm = cfg.tune.cost_model.model_copy(update={"adaptive_training": False})
    # every fold trains a global and a family model on the same records and scores the same held-out
    # ones: their features are extracted once (cached per task and scheduled module)
    features = store_features(cm.feature_threads, cache=True)

    def make_model(members: int, samples: int):
        # the same XGBModel settings as in tuning; trains once, when all its training samples are in
        model = make_xgb(cm, members, cfg.tune.trials_per_round, cm.threads, features)
        model.num_warmup_samples = max(int(samples), 1)
        return model

    return ranking_quality(records, contexts, family_of_task, make_model, min_test=cfg.evaluate.ranking_min_records,
                           resamples=RANKING_BOOTSTRAP_RESAMPLES, seed=seed)


def _plot_curves(name: str, curves: Mapping[str, tuple[np.ndarray, np.ndarray]], baseline: str,
                 path_trials: Path, path_wall: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for path, axis in ((path_trials, "trials"), (path_wall, "wall")):
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        for policy, (lat, wall) in curves.items():
            ok = np.isfinite(lat)
            x = np.arange(1, lat.size + 1)[ok] if axis == "trials" else wall[ok]
            ax.step(x, lat[ok] * 1e3, where="post", label=policy, lw=2.2 if policy != baseline else 1.6)
        ax.set_xlabel("measured trials" if axis == "trials" else "tuning wall time (s)")
        ax.set_ylabel("best weighted latency (us), seed mean")
        ax.set_title(f"{name}: best latency vs {'trials' if axis == 'trials' else 'wall time'}")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


def _plot_bars(path: Path, title: str, labels: list[str], series: Mapping[str, list[float | None]],
               ylabel: str, ref: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(labels) + 2), 4.0))
    width = 0.8 / max(len(series), 1)
    for k, (label, vals) in enumerate(series.items()):
        xs = np.arange(len(labels)) + k * width
        ax.bar(xs, [v if v is not None else 0.0 for v in vals], width, label=label)
    ax.set_xticks(np.arange(len(labels)) + width * (len(series) - 1) / 2)
    ax.set_xticklabels(labels, rotation=20, ha="right")
    if ref is not None:
        ax.axhline(ref, color="black", lw=1)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def evaluate_all(cfg: FamilySeerConfig, zoo_dir: Path, run_dir: Callable[[str, str, int], Path],
                 latency: Mapping[str, Any], plots: Path, run_seed: Callable[[int], int] = lambda s: s,
                 progress: Callable[[str], None] = lambda m: None,
                 latency_file: Path | str = "latency.json") -> dict[str, Any]:
    """Everything the evaluate stage reports; writes figures and CSVs into ``plots``.

    Its inputs are checked first (InputError naming the file): every model's task manifest, every run
    against the fingerprint the tune stage would give it now (``run_seed``: the seed a run of seed ``s``
    was tuned with), and ``latency`` (the compile stage's ``latency_file``) against ``zoo.models``,
    ``tune.seeds`` and the runs it was compiled from.
    """
    ev, tc = cfg.evaluate, cfg.tune
    per_model: dict[str, Any] = {}
    tables: dict[str, list[dict[str, Any]]] = {"search_speedup": [], "search_speedup_per_seed": [], "latency": [],
                                               "cost_model_ranking": [], "final_latency": []}
    policy_summary: dict[str, dict[str, float]] = {p: {} for p in tc.policies}
    boot_samples: dict[str, dict[str, np.ndarray]] = {}  # policy -> model -> bootstrap speed-ups
    streams = dict(zip(cfg.zoo.models, bootstrap_streams(len(cfg.zoo.models))))  # one per model
    # the held-out-candidate bootstrap of the ranking gain: its own stream per model
    ranking_streams = dict(zip(cfg.zoo.models, np.random.SeedSequence(RANKING_BOOTSTRAP_SEED).spawn(len(cfg.zoo.models))))
    ranking_boot: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # model -> multi-member (global, family) resamples
    manifests = {name: read_manifest(zoo_dir / name / "tasks.json", name) for name in cfg.zoo.models}
    check_latency(latency, cfg, latency_file)
    all_runs = {name: {p: [load_current_run(run_dir(name, p, s), manifests[name], p, run_seed(s), tc,
                                            zoo_dir / name / "tasks.json") for s in tc.seeds]
                       for p in tc.policies} for name in cfg.zoo.models}
    for name in cfg.zoo.models:
        _check_compiled_runs(latency, name, all_runs[name], list(tc.seeds), latency_file)
    for name in cfg.zoo.models:
        tasks = manifests[name]["tasks"]
        runs = all_runs[name]
        # a task no policy and seed could build and run is set aside for every policy alike
        untunable = untunable_tasks([r for rs in runs.values() for r in rs])
        if set(untunable) >= {str(t) for rs in runs.values() for r in rs for t in r["tasks"]}:
            # set aside, every task would weigh 0: a weighted latency of 0 us and a speed-up of 1.0 "reached"
            failed = [t["error"] for rs in runs.values() for r in rs for t in r["trials"]]
            raise InputError(
                f"{run_dir(name, ev.baseline, tc.seeds[0]).parent.parent}: model {name!r}: no trial of any policy "
                f"and seed measured any of its tasks {untunable} validly ({failed.count('build')} build and "
                f"{failed.count('run')} run failures in {len(failed)} trials); expected valid measurements: see "
                f"'errors' in the runs' run.json (a run timeout: raise tune.run_timeout_s={tc.run_timeout_s}; a "
                f"build timeout: tune.build_timeout_s={tc.build_timeout_s}) and re-run the tune stage")
        if untunable:
            progress(f"{name}: no valid measurement of {untunable} in any run: left out of every policy's "
                     f"weighted latency (their trials still count)")
            runs = {p: [set_aside(r, untunable) for r in rs] for p, rs in runs.items()}
        budget = min(r["budget"] for rs in runs.values() for r in rs)
        curves = {p: mean_curve(rs, budget) for p, rs in runs.items()}
        _plot_curves(name, curves, ev.baseline, plots / f"curve_trials_{name}.png", plots / f"curve_wall_{name}.png")
        length = max(c[0].size for c in curves.values())
        with open(plots / f"curve_{name}.csv", "w") as fh:
            fh.write("trial," + ",".join(f"{p}_us" for p in curves) + "\n")
            for i in range(length):
                vals = [c[0][min(i, c[0].size - 1)] * 1e3 for c in curves.values()]
                fh.write(f"{i + 1}," + ",".join(f"{v:.4f}" if np.isfinite(v) else "" for v in vals) + "\n")

        model_out: dict[str, Any] = {"tasks": len(tasks), "budget": budget, "untunable_tasks": untunable,
                                     "seeds": list(tc.seeds), "speedup": {}, "speedup_ci90": {}, "speedup_per_seed": {},
                                     "final_latency_us": {}, "final_latency_seeds_used": {},
                                     "final_latency_per_seed_us": {}}
        for p in tc.policies:
            if p == ev.baseline:
                continue
            boot = bootstrap_speedups(runs[ev.baseline], runs[p], budget, BOOTSTRAP_RESAMPLES, seed=streams[name])
            boot_samples.setdefault(p, {})[name] = boot
            # no interval around a speed-up that does not exist (the baseline's seed-mean curve never
            # covers every task), even where some resamples of the seeds give one
            point = search_speedup(runs[ev.baseline], runs[p], 1.0, budget)
            model_out["speedup_ci90"][p] = interval(boot) if point is not None else None
            model_out["speedup_per_seed"][p] = [
                None if s is None else {"trials": s.speedup_trials, "wall": s.speedup_wall, "reached": s.reached}
                for s in per_seed_speedups(runs[ev.baseline], runs[p], 1.0, budget)]
            for seed, s in zip(tc.seeds, model_out["speedup_per_seed"][p]):
                tables["search_speedup_per_seed"].append({
                    "model": name, "policy": p, "seed": seed, "speedup_trials": (s or {}).get("trials"),
                    "speedup_wall": (s or {}).get("wall"), "reached": None if s is None else bool(s["reached"]),
                    "note": (f"no speed-up: {ev.baseline}'s run of this seed never covers every task" if s is None
                             else "" if s["reached"] else
                             f"upper bound: this seed's {p} run never reached {ev.baseline}'s final latency")})
            for level in (1.0, 0.9):
                sp = search_speedup(runs[ev.baseline], runs[p], level, budget)
                if sp is None:
                    # flagged, not dropped: the headline mean is over the models that have a speed-up
                    tables["search_speedup"].append({
                        "model": name, "policy": p, "level": level, "baseline_trials": None, "method_trials": None,
                        "speedup_trials": None, "speedup_wall": None, "reached": None,
                        "note": f"no speed-up: {ev.baseline}'s seed-mean curve never covers every task (a seed "
                                f"never measured one validly); this model is left out of the means"})
                    continue
                key = f"{p}" if level == 1.0 else f"{p}_at90"
                model_out["speedup"][key] = to_jsonable(sp)
                tables["search_speedup"].append({
                    "model": name, "policy": p, "level": level, "baseline_trials": sp.baseline_trials,
                    "method_trials": sp.method_trials if sp.reached else f"> {len(curves[p][0])}",
                    "speedup_trials": sp.speedup_trials, "speedup_wall": sp.speedup_wall, "reached": sp.reached,
                    "note": ""})
        finals = {p: final_latencies(runs[p], budget) for p in tc.policies}  # at the budget
        for p in tc.policies:
            fin = finals[p]
            model_out["final_latency_us"][p] = fin["mean_us"]
            model_out["final_latency_seeds_used"][p] = fin["seeds_used"]
            model_out["final_latency_per_seed_us"][p] = fin["per_seed_us"]
            missing = [s for s, v in zip(tc.seeds, fin["per_seed_us"]) if v is None]
            tables["final_latency"].append({
                "model": name, "policy": p, "final_weighted_latency_us_mean": fin["mean_us"],
                "seeds": fin["seeds"], "seeds_used": fin["seeds_used"],
                "trials_mean": _mean([r["num_trials"] for r in runs[p]]),
                "tuning_wall_s_mean": _mean([r["wall_s"] for r in runs[p]]),
                "note": (f"mean over {fin['seeds_used']} of {fin['seeds']} seeds: seed(s) {missing} never measured "
                         f"every task validly" if missing else "")})
            policy_summary[p][f"{name}.final_weighted_latency_us"] = model_out["final_latency_us"][p] or float("nan")
        # over the seeds both policies have a final latency for (not each policy's own seeds)
        ratio = final_ratio(finals[ev.baseline], finals[ev.method])
        model_out["final_ratio_baseline_over_method"] = ratio["ratio"]
        model_out["final_ratio_seeds_used"] = ratio["seeds_used"]
        model_out["final_ratio_method_missing"] = ratio["method_missing"]
        if ratio["method_missing"]:
            progress(f"{name}: no run of {ev.method} measured every task validly: no final latency, so its final "
                     f"latency counts as worse than {ev.baseline}'s (the mean ratio over models is None)")
        elif ratio["seeds_used"] < len(tc.seeds):
            progress(f"{name}: final-latency ratio {ev.baseline} / {ev.method} over the {ratio['seeds_used']} of "
                     f"{len(tc.seeds)} seeds where both runs measured every task validly")

        # end-to-end latency of the compiled models
        lat = latency.get(name, {})
        lat_out: dict[str, Any] = {}
        for key in REFERENCE_BUILDS:  # check_latency: both there, with numeric p50 and p99
            lat_out[key] = {"latency_ms_p50": lat[key]["latency_ms_p50"], "latency_ms_p99": lat[key]["latency_ms_p99"]}
        for p in tc.policies:
            per_seed = lat.get(f"tvm_{p}", {})
            p50 = [v["latency_ms_p50"] for v in per_seed.values()]
            lat_out[f"tvm_{p}"] = {"latency_ms_p50": _median(p50), "latency_ms_p50_best": min(p50) if p50 else None,
                                   "max_abs_err": max((v.get("max_abs_err", 0.0) for v in per_seed.values()), default=None)}
        untuned = lat_out.get("tvm_untuned", {}).get("latency_ms_p50")
        torch_ms = lat_out.get("pytorch_eager", {}).get("latency_ms_p50")
        for p in tc.policies:
            tuned = lat_out[f"tvm_{p}"]["latency_ms_p50"]
            if tuned:
                lat_out[f"tvm_{p}"]["speedup_vs_untuned"] = untuned / tuned if untuned else None
                lat_out[f"tvm_{p}"]["speedup_vs_pytorch"] = torch_ms / tuned if torch_ms else None
        model_out["latency"] = lat_out
        for key, vals in lat_out.items():
            tables["latency"].append({"model": name, "build": key, **{k: v for k, v in vals.items()}})

        # cost-model ranking quality (op families vs one global model)
        progress(f"{name}: cost-model ranking quality (leave-one-seed-out over {len(tc.seeds)} seeds)")
        dirs = [(run_seed(s), run_dir(name, p, s)) for p in tc.policies for s in tc.seeds]
        rq = _ranking_for_model(cfg, zoo_dir, name, dirs, tasks, seed=ranking_streams[name])
        ranking_boot[name] = rq.pop("_bootstrap")["multi_member"]
        model_out["cost_model"] = rq
        for fam, d in rq["families"].items():
            ci = d.get("gain_pp_ci90")
            tables["cost_model_ranking"].append({"model": name, "family": fam, "members": len(d["members"]),
                                                 "held_out_pairs": d["pairs"], "global_accuracy": d["global_accuracy"],
                                                 "family_accuracy": d["family_accuracy"],
                                                 "gain_pp_ci90_low": ci[0] if ci else None,
                                                 "gain_pp_ci90_high": ci[1] if ci else None})
        per_model[name] = model_out
        progress(f"{name}: speed-up {model_out['speedup'].get(ev.method, {}).get('speedup_trials')}, "
                 f"ranking family {rq['family_accuracy']} vs global {rq['global_accuracy']}")

    metrics = _headline(cfg, per_model, ranking_boot)
    speedup_key, ratio_key = metric_keys(ev.method, ev.baseline)
    if (ev.method, ev.baseline) != CLAIMED_PAIR:
        progress(f"evaluate.method={ev.method!r}, evaluate.baseline={ev.baseline!r}: the claims (claims.yaml) are "
                 f"about {CLAIMED_PAIR[0]!r} against {CLAIMED_PAIR[1]!r}; the metrics name both policies "
                 f"({speedup_key}_*, final_latency.{ratio_key}) and the report leaves those claims unjudged")
    # the mean over models, with every model's seeds resampled: its 90 % interval
    mean_boot = pooled_bootstrap(boot_samples.get(ev.method, {}), per_model, ev.method)
    metrics["search_speedup"][f"{speedup_key}_trials_mean_ci90"] = interval(mean_boot)
    for m in per_model:
        metrics["search_speedup"]["per_model"][m]["trials_ci90"] = per_model[m]["speedup_ci90"].get(ev.method)
    # summary figures
    models = list(per_model)
    _plot_bars(plots / "search_speedup.png", f"search-time speed-up over {ev.baseline} (trials to its final latency)",
               models, {p: [per_model[m]["speedup"].get(p, {}).get("speedup_trials") for m in models]
                        for p in tc.policies if p != ev.baseline}, "speed-up (x)", ref=1.0)
    fam_rows = tables["cost_model_ranking"]
    if fam_rows:
        _plot_bars(plots / "cost_model_ranking.png", "held-out pairwise ranking accuracy",
                   [f"{r['model']}:{r['family']}" for r in fam_rows],
                   {"global model": [r["global_accuracy"] for r in fam_rows],
                    "family model": [r["family_accuracy"] for r in fam_rows]}, "accuracy", ref=0.5)
    lat_builds = ["pytorch_eager", "tvm_untuned"] + [f"tvm_{p}" for p in tc.policies]
    _plot_bars(plots / "latency.png", "end-to-end latency p50 (ms)", models,
               {b: [per_model[m]["latency"].get(b, {}).get("latency_ms_p50") for m in models] for b in lat_builds},
               "ms")
    (plots / "per_model.json").write_text(json.dumps(to_jsonable(per_model), indent=2))
    return {"metrics": to_jsonable(metrics), "tables": to_jsonable(tables), "per_model": to_jsonable(per_model),
            "policy_summary": policy_summary}


def pooled_ranking_gain(boots: Mapping[str, tuple[np.ndarray, np.ndarray]], per_model: Mapping[str, Any]) -> np.ndarray:
    """The bootstrap of ``cost_model.accuracy_gain_pp_multi_member``: per resample, 100 x (mean over the
    models with multi-member families of the family accuracy - the same mean of the global accuracy),
    the models' held-out candidates resampled independently (:func:`analysis.ranking_bootstrap`)."""
    used = [m for m in per_model if m in boots and len(boots[m][0])
            and (per_model[m]["cost_model"].get("multi_member") or {}).get("family_accuracy") is not None
            and per_model[m]["cost_model"]["multi_member"].get("global_accuracy") is not None]
    if not used:
        return np.array([])
    glob = np.mean([boots[m][0] for m in used], axis=0)
    fam = np.mean([boots[m][1] for m in used], axis=0)
    return 100 * (fam - glob)


def pooled_bootstrap(boots: Mapping[str, np.ndarray], per_model: Mapping[str, Any], method: str) -> np.ndarray:
    """The bootstrap of the headline mean speed-up: per resample, the mean over the models the headline
    mean is over (those with a finite trial speed-up of ``method``) of their resampled speed-ups."""
    used = [m for m in per_model if m in boots and _finite(
        [(per_model[m]["speedup"].get(method) or {}).get("speedup_trials")])]
    return np.mean([boots[m] for m in used], axis=0) if used else np.array([])


def _headline(cfg: FamilySeerConfig, per_model: Mapping[str, Any],
              ranking_boot: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None) -> dict[str, Any]:
    """The metrics file's figures from the per-model results. Every mean or median over models or seeds
    is over those that have the figure; ``models_used`` / ``seeds_used`` next to it say how many did
    (``models`` / ``seeds``: how many there were). One exception: the final-latency ratio's mean is None
    when the method has no final latency for some model (``final_ratio_method_missing``). Key names:
    :func:`metric_keys`. ``ranking_boot``: each model's multi-member ``(global, family)`` accuracies over
    the held-out-candidate resamples (``ranking_quality``'s ``"_bootstrap"``), for the gain's interval
    (None without them)."""
    ev, tc = cfg.evaluate, cfg.tune
    sk, ratio_key = metric_keys(ev.method, ev.baseline)
    sp = [per_model[m]["speedup"].get(ev.method) for m in per_model]
    sp90 = [per_model[m]["speedup"].get(f"{ev.method}_at90") for m in per_model]
    trials = _finite([s["speedup_trials"] for s in sp if s])
    walls = _finite([s["speedup_wall"] for s in sp if s])
    at90 = _finite([s["speedup_trials"] for s in sp90 if s])
    # the speed-ups of each seed alone (baseline and method runs of one seed): a stalled run moves the
    # seed-mean figure, not the median of these. reached_per_seed (1/0, None where the seed has no
    # speed-up) flags both lists: a 0 means the method's run never reached the baseline run's final
    # latency, and its trial and wall figures are upper bounds, not values
    seeds_sp = {m: per_model[m].get("speedup_per_seed", {}).get(ev.method, []) for m in per_model}
    wall_per_seed = {m: [(s or {}).get("wall") for s in seeds_sp[m]] for m in per_model}
    trials_per_seed = {m: [(s or {}).get("trials") for s in seeds_sp[m]] for m in per_model}
    reached_per_seed = {m: [None if s is None else int(bool(s.get("reached"))) for s in seeds_sp[m]]
                        for m in per_model}
    walls_seed = _finite([w for ws in wall_per_seed.values() for w in ws])
    trials_seed = _finite([t for ts in trials_per_seed.values() for t in ts])
    cms = {m: per_model[m]["cost_model"] for m in per_model}
    scored = [m for m in per_model if cms[m]["family_accuracy"] is not None and cms[m]["global_accuracy"] is not None]
    multi = [m for m in per_model if (cms[m].get("multi_member") or {}).get("family_accuracy") is not None
             and cms[m]["multi_member"].get("global_accuracy") is not None]
    fam_acc, glob_acc = _mean([cms[m]["family_accuracy"] for m in scored]), _mean([cms[m]["global_accuracy"] for m in scored])
    mm_fam = _mean([cms[m]["multi_member"]["family_accuracy"] for m in multi])
    mm_glob = _mean([cms[m]["multi_member"]["global_accuracy"] for m in multi])
    families = [d for m in per_model for d in cms[m]["families"].values()
                if d["family_accuracy"] is not None and d["global_accuracy"] is not None]
    tuned_vs_untuned = [per_model[m]["latency"].get(f"tvm_{p}", {}).get("speedup_vs_untuned")
                        for m in per_model for p in tc.policies]
    tuned_vs_untuned = [x for x in tuned_vs_untuned if x]
    ratios = _finite([per_model[m]["final_ratio_baseline_over_method"] for m in per_model])
    # a model where the method has no final latency at all does not meet "no worse than the baseline":
    # the mean is then None (the claim is not met), not a mean over the other models
    method_missing = [m for m in per_model if per_model[m].get("final_ratio_method_missing")]
    # the multi-member gain's 90 % interval (held-out candidates resampled); the claim reads its low end
    gain_ci = interval(pooled_ranking_gain(ranking_boot or {}, per_model)) if multi else None
    metrics: dict[str, Any] = {
        "search_speedup": {
            f"{sk}_trials_mean": _mean(trials),
            f"{sk}_trials_geomean": float(np.exp(np.mean(np.log(trials)))) if trials else None,
            f"{sk}_wall_mean": _mean(walls),
            f"{sk}_wall_seed_median": _median(walls_seed),
            f"{sk}_trials_mean_at90": _mean(at90),
            f"{sk}_trials_seed_median": _median(trials_seed),
            "models": len(per_model), "models_used": len(trials), "models_used_wall": len(walls),
            "models_used_at90": len(at90), "seeds": len(tc.seeds), "seeds_used_wall": len(walls_seed),
            "seeds_used_trials": len(trials_seed),
            "seeds_reached": sum(1 for rs in reached_per_seed.values() for r in rs if r),
            "models_reached": sum(1 for s in sp if s and s["reached"]),
            "per_model": {m: {"trials": (s or {}).get("speedup_trials"), "wall": (s or {}).get("speedup_wall"),
                              "wall_per_seed": wall_per_seed[m],
                              "wall_seed_median": _median(wall_per_seed[m]),
                              "trials_per_seed": trials_per_seed[m],
                              "trials_seed_median": _median(trials_per_seed[m]),
                              "reached_per_seed": reached_per_seed[m],
                              "reached": int(bool((s or {}).get("reached"))),
                              "baseline_trials": (s or {}).get("baseline_trials"),
                              "method_trials": (s or {}).get("method_trials")}
                          for m, s in zip(per_model, sp)},
        },
        "final_latency": {
            ratio_key: None if method_missing else _mean(ratios),
            "models": len(per_model), "models_used": len(ratios), "seeds": len(tc.seeds),
            "per_model_us": {m: per_model[m]["final_latency_us"] for m in per_model},
            "per_model_seeds_used": {m: per_model[m].get("final_latency_seeds_used", {}) for m in per_model},
        },
        "cost_model": {
            "family_accuracy": fam_acc, "global_accuracy": glob_acc,
            "accuracy_gain_pp": 100 * (fam_acc - glob_acc) if scored else None,
            "pairs": sum(int(cms[m].get("pairs", 0)) for m in scored),
            # families of >= 2 member tasks only (a one-member family's model is a per-task model)
            "accuracy_gain_pp_multi_member": 100 * (mm_fam - mm_glob) if multi else None,
            "accuracy_gain_pp_multi_member_ci90": gain_ci,
            "accuracy_gain_pp_multi_member_ci90_low": gain_ci[0] if gain_ci else None,
            "family_accuracy_multi_member": mm_fam, "global_accuracy_multi_member": mm_glob,
            "pairs_multi_member": sum(int(cms[m]["multi_member"]["pairs"]) for m in multi),
            "families_multi_member": sum(int(cms[m]["multi_member"]["families"]) for m in multi),
            "models": len(per_model), "models_used": len(scored), "models_used_multi_member": len(multi),
            "families_scored": len(families),
            "families_better": sum(1 for d in families if d["family_accuracy"] > d["global_accuracy"]),
            "per_model": {m: {fam: {"family": d["family_accuracy"], "global": d["global_accuracy"], "pairs": d["pairs"],
                                    "members": len(d["members"])}
                              for fam, d in cms[m]["families"].items()} for m in per_model},
        },
        "latency": {
            "speedup_tuned_vs_untuned_min": min(tuned_vs_untuned) if tuned_vs_untuned else None,
            **{m: {b_: {k: v for k, v in d.items() if k in ("latency_ms_p50", "latency_ms_p99", "speedup_vs_untuned",
                                                            "speedup_vs_pytorch")}
                   for b_, d in per_model[m]["latency"].items()} for m in per_model},
        },
    }
    return metrics
