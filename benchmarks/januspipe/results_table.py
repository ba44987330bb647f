"""Print the README tables of components/januspipe from metrics/januspipe.json (the januspipe_simulate
stage's output) and the targets in components/januspipe/claims.yaml.

    .venv/bin/python benchmarks/januspipe/results_table.py [metrics/januspipe.json]
"""
from __future__ import annotations

import argparse
import json
import operator
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from components.base import InputError  # noqa: E402
from benchmarks._cli import print_table  # noqa: E402
from components.io import read_json_record  # noqa: E402

WHAT = "the metrics/januspipe.json that the januspipe_simulate stage writes (`dvc repro januspipe_simulate`)"
#: the sections the tables are built from (a metrics file without them would print a table of "—")
KEYS = ("profile", "headline", "throughput", "real_runs", "accuracy")
OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}


def _get(m: dict, dotted: str):
    cur = m
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.2e}" if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5) else f"{v:.{digits}g}"
    return str(v)


def load_metrics(path: Path) -> dict:
    """metrics/januspipe.json; InputError naming the file when it is missing, not JSON or lacks a section."""
    m = read_json_record(path, KEYS, WHAT)
    for key in KEYS[1:]:
        if not isinstance(m[key], dict) or not m[key]:
            raise InputError(f"{path}: '{key}' is {m[key]!r}; expected a non-empty JSON object, in {WHAT}")
    return m


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("metrics", nargs="?", type=Path, default=ROOT / "metrics" / "januspipe.json",
                    help="the januspipe_simulate stage's metrics (default: metrics/januspipe.json of this checkout)")
    a = ap.parse_args(argv)
    return print_table(lambda: load_metrics(a.metrics), lambda m: render(a.metrics, m), str(a.metrics), WHAT)


def render(path: Path, m: dict) -> None:
    claims = yaml.safe_load((ROOT / "components" / "januspipe" / "claims.yaml").read_text())["claims"]

    print(f"### Claims of the issue ({path.name}, profile {m.get('profile')})\n")
    print("| claim | metric | target | paper | measured | met |")
    print("|---|---|---|---|---|---|")
    for c in claims:
        v = _get(m, c["metric"])
        op, thr = c["target"].split()
        met = "—" if v is None else ("yes" if OPS[op](float(v), float(thr)) else "**no**")
        shown = _fmt(v)
        if v is not None and isinstance(v, float) and shown == _fmt(float(thr)):  # 1.198 vs 1.2: not "1.2 ... no"
            shown = _fmt(v, 4)
        print(f"| {c['id']} | `{c['metric']}` | {c['target']} | {c.get('paper', '—')} | {shown} | {met} |")

    h = m.get("headline", {})
    print(f"\n### Simulated throughput at {h.get('devices')} devices, {h.get('microbatches')} micro-batches, "
          f"memory budget {_fmt(h.get('memory_budget_MiB'), 4)} MiB (1F1B-4's peak; GPipe-4 unbounded)\n")
    print("| schedule | structures/s | vs 1F1B-4 | bubble | peak activation (MiB) |")
    print("|---|---|---|---|---|")
    thr = m.get("throughput", {})
    base = thr.get("1f1b4", {}).get("throughput_structures_per_s")
    for name, r in thr.items():
        t = r["throughput_structures_per_s"]
        print(f"| {name} | {t:.3f} | {t / base if base else float('nan'):.2f}× | {r['bubble_ratio']:.1%} | "
              f"{r['peak_activation_MiB']:.0f} |")

    print("\n### Real runs (gloo, 1 thread per process) vs the simulator (same action lists)\n")
    print("| run | measured makespan (s) | simulated, in-run costs (s) | error | load-model error | "
          "idle-machine error | external load | message delay (ms) | structures/s | peak saved (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for key, r in m.get("real_runs", {}).items():
        print(f"| {key} | {r['measured_makespan_s']:.3f} | {r['sim_makespan_s']:.3f} | {r['sim_error']:+.1%} | "
              + (f"{r['sim_load_model_error']:+.1%}" if "sim_load_model_error" in r else "—") + " | "
              + (f"{r['sim_idle_machine_error']:+.1%}" if "sim_idle_machine_error" in r else "—") + " | "
              + (f"{r['external_load']:.2f}" if "external_load" in r else "—") + " | "
              + (f"{r['message_delay_ms']:.1f}" if "message_delay_ms" in r else "—") + " | "
              f"{r['throughput_structures_per_s']:.3f} | {r['measured_peak_saved_MiB']:.0f} |")
    sim = m.get("simulator", {})
    print("\nsimulator max |error|: " + ", ".join(f"{k} {_fmt(v)}" for k, v in sim.items()))

    a = m.get("accuracy", {})
    print("\n### Accuracy (reference trainer, test split) and phase costs\n")
    print("| quantity | value |")
    print("|---|---|")
    for k in ("force_mae_eV_per_A", "baseline_force_mae_eV_per_A", "force_mae_ratio_baseline_over_model",
              "energy_mae_eV_per_atom", "baseline_energy_mae_eV_per_atom", "fd_force_max_abs_err_eV_per_A",
              "fd_stress_max_abs_err_eV_per_A3"):
        print(f"| {k} | {_fmt(a.get(k))} |")
    print(f"| exactness max rel. grad error | {_fmt(_get(m, 'exactness.max_rel_grad_error'))} |")
    pc = m.get("phase_costs", {})
    ratios = pc.get("ratio_vs_P1", {})
    print(f"| phase cost P1:P2:P3:P4 (per block) | {' : '.join(f'{v:.2f}' for v in ratios.values())} |")
    print(f"| saved bytes, force graph / forward | {_fmt(pc.get('force_graph_over_forward_bytes'))} |")
    print(f"| gloo p2p latency (µs) | {_fmt(pc.get('p2p_latency_us'))} |")
    print(f"| quick profile wall / CPU (s) | {_fmt(m.get('quick_profile_seconds'), 4)} / "
          f"{_fmt(m.get('quick_profile_cpu_seconds'), 4)} |")
    print("\nstage seconds: " + json.dumps({k: round(v, 1) for k, v in m.get("stage_seconds", {}).items()}))


if __name__ == "__main__":
    sys.exit(main())
