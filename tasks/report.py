"""The cross-paper results report and the per-paper MLflow experiment descriptions.

Each component declares what its paper claims in ``components/<paper>/claims.yaml``::

    title: Real-Time Human Action Recognition on Embedded Platforms
    short: RT-HARE / IMFE
    reference: arXiv 2409.05662
    reproduce: dvc repro har_evaluate
    claims:
      - id: imfe_speedup
        claim: IMFE motion extraction is >= 20x faster than TV-L1 at the same resolution
        paper: TV-L1 is 93 % of pipeline latency on a Jetson Xavier NX
        metric: latency.speedup_imfe_vs_tvl1     # dotted path into metrics/<paper>.json
        baseline: latency.tvl1_ms_p50            # optional: the baseline measured in the same run
        baseline_label: TV-L1 p50 (ms)
        unit: x
        target: ">= 20"                          # optional: <op> <number>

A claim whose metric is the low end of an interval (a gain that resampling must not be able to tell
from zero) may name the point estimate and the interval, both optional, and the measured column then
shows all three::

        metric: gain.fedavg.vfda.held_in_ci90_low
        estimate: gain.fedavg.vfda.held_in       # a number in the metrics
        interval: gain.fedavg.vfda.held_in_ci90  # [low, high] in the metrics

The ``report`` stage reads every ``metrics/<paper>.json`` next to its claims and writes
``reports/README.md`` (one table per paper: claim, paper's figure, target, our measured value, the
baseline measured in the same run, met or not) plus PNG figures under ``reports/figures/``.
"""
from __future__ import annotations

import math
import operator
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

import yaml

from components.base import InputError
from tasks.io import atomic_dir, read_json
from tasks.paths import repo_root

_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}
_TARGET = re.compile(r"^\s*(>=|<=|>|<|==)\s*([-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)\s*$")


class ReportError(InputError):
    """A claims or metrics file the report reads is malformed (an :class:`InputError`, a ``ValueError``)."""


def load_claims(paper: str, root: Path | None = None) -> dict[str, Any] | None:
    path = (root or repo_root()) / "components" / paper / "claims.yaml"
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ReportError(f"{path}: not valid YAML ({err}); expected a mapping with a 'claims' list") from None
    if not isinstance(data, dict) or not isinstance(data.get("claims", []), list):
        raise ReportError(f"{path}: expected a mapping with a 'claims' list")
    for i, c in enumerate(data.get("claims", [])):
        if not isinstance(c, dict):
            raise ReportError(f"{path}: claims[{i}]={c!r}; expected a mapping with id, claim and metric")
        for key in ("id", "claim", "metric"):
            if key not in c:
                raise ReportError(f"{path}: claims[{i}] has no {key!r}")
        if "target" in c and not _TARGET.match(str(c["target"])):
            raise ReportError(f"{path}: claims[{i}].target={c['target']!r}; expected '<op> <number>' with op in {list(_OPS)}")
        for key in ("estimate", "interval"):
            if key in c and (not isinstance(c[key], str) or not c[key].strip()):
                raise ReportError(f"{path}: claims[{i}].{key}={c[key]!r}; expected a dotted path into the metrics")
    return data


def lookup(metrics: Mapping[str, Any], dotted: str) -> Any:
    """``a.b.c`` in nested dicts (None when absent)."""
    cur: Any = metrics
    for part in dotted.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_target(value: Any, target: str | None) -> bool | None:
    if target is None or not _is_number(value):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return False
    m = _TARGET.match(str(target))
    assert m, target
    return bool(_OPS[m.group(1)](float(value), float(m.group(2))))


def claim_rows(claims: Mapping[str, Any], metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for c in claims.get("claims", []):
        measured = lookup(metrics, c["metric"])
        baseline = lookup(metrics, c["baseline"]) if c.get("baseline") else None
        estimate = lookup(metrics, c["estimate"]) if c.get("estimate") else None
        interval = lookup(metrics, c["interval"]) if c.get("interval") else None
        if estimate is not None and not _is_number(estimate):
            raise ReportError(f"claim {c['id']}: estimate {c['estimate']}={estimate!r}; expected a number in the metrics")
        if interval is not None and not (isinstance(interval, (list, tuple)) and len(interval) == 2
                                         and all(_is_number(v) for v in interval)):
            raise ReportError(f"claim {c['id']}: interval {c['interval']}={interval!r}; expected [low, high], two "
                              f"numbers, in the metrics")
        rows.append({
            "id": c["id"], "claim": c["claim"], "paper": c.get("paper", ""),
            "target": c.get("target", ""), "measured": measured, "unit": c.get("unit", ""),
            "baseline": baseline, "baseline_label": c.get("baseline_label", c.get("baseline", "")),
            "estimate": estimate, "interval": list(interval) if interval is not None else None,
            "met": check_target(measured, c.get("target")),
        })
    return rows


def _measured_cell(r: Mapping[str, Any]) -> str:
    text = f"{_fmt(r['measured'])} {_cell(r['unit'])}"
    extra = []
    if r.get("estimate") is not None:
        extra.append(f"estimate {_fmt(r['estimate'])}")
    if r.get("interval") is not None:
        extra.append(f"interval [{_fmt(r['interval'][0])}, {_fmt(r['interval'][1])}]")
    return f"{text.rstrip()} ({'; '.join(extra)})" if extra else text


def _cell(text: Any) -> str:
    """Text for a Markdown table cell: a literal ``|`` (e.g. ``|IMFE - TV-L1|``) would end the cell."""
    return "" if text is None else str(text).replace("|", "\\|")


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"
    return str(v)


def experiment_description(paper: str, root: Path | None = None) -> str:
    """Markdown for the paper's MLflow experiment: the paper, its claims, how to reproduce."""
    claims = load_claims(paper, root)
    if not claims:
        return f"# {paper}\n\nReproduce: `dvc repro` (stages `{paper}_*`)."
    lines = [f"# {claims.get('short', paper)}: {claims.get('title', '')}", ""]
    if claims.get("reference"):
        lines += [f"Reference: {claims['reference']}", ""]
    lines += ["## Claims checked here", ""]
    for c in claims.get("claims", []):
        tgt = f" (target {c['target']})" if c.get("target") else ""
        lines.append(f"- **{c['id']}**: {c['claim']}{tgt}. Paper: {c.get('paper', '—')}")
    lines += ["", "## Reproduce", "", f"`{claims.get('reproduce', 'dvc repro')}` — component README: "
              f"`components/{paper}/README.md`; metrics in `metrics/{paper}.json`."]
    return "\n".join(lines)


_FIGURE_CLIP = (1e-2, 1e2)


def _bar(ratio: float) -> tuple[float, str]:
    """The bar length (the ratio clipped to ``_FIGURE_CLIP``) and its label."""
    lo, hi = _FIGURE_CLIP
    if ratio >= hi:
        return hi, f"≥ {hi:g}"
    if ratio <= lo:
        return lo, f"≤ {lo:g}"
    return ratio, f"{ratio:.3g}"


def _claims_figure(all_rows: Mapping[str, list[dict[str, Any]]], path: Path) -> bool:
    """One bar per claim with a numeric target: measured / target (>= 1 means met for '>=' claims)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, ratios, colours = [], [], []
    for paper, rows in all_rows.items():
        for r in rows:
            m = _TARGET.match(str(r["target"])) if r["target"] else None
            if not m or not isinstance(r["measured"], (int, float)) or float(m.group(2)) == 0:
                continue
            op, tgt = m.group(1), float(m.group(2))
            ratio = float(r["measured"]) / tgt if op in (">=", ">") else tgt / max(float(r["measured"]), 1e-12)
            labels.append(f"{paper}:{r['id']}")
            ratios.append(ratio)
            colours.append("tab:green" if r["met"] else "tab:red")
    if not labels:
        return False
    # log axis, clipped to [1/100, 100]: a '<=' claim measured at 0 (no frame dropped) is an infinite
    # ratio, a '>=' claim measured negative a negative one; on a linear axis one such bar hid the rest
    lo, hi = _FIGURE_CLIP
    bars = [_bar(r) for r in ratios]
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(labels) + 1.2))
    ax.barh(labels, [v for v, _ in bars], color=colours)
    ax.set_xscale("log")
    ax.set_xlim(lo / 1.5, hi * 1.5)
    for y, (v, text) in enumerate(bars):
        ax.text(v * 1.05, y, text, va="center", fontsize=7)
    ax.axvline(1.0, color="black", lw=1)
    ax.set_xlabel(f"measured relative to target (≥ 1: met)\nlog scale, clipped to {lo:g}–{hi:g}; claims with "
                  f"a target of 0 are left out")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _read_metrics(path: Path) -> dict[str, Any]:
    """``metrics/<paper>.json``: a JSON object (an :class:`InputError` naming the file otherwise)."""
    metrics = read_json(path)
    if not isinstance(metrics, dict):
        found = {list: "list", str: "string", bool: "boolean", type(None): "null"}.get(type(metrics), "number")
        raise ReportError(f"{path}: a JSON {found}; expected a JSON object of metrics (as the paper's evaluate "
                          f"stage writes it; re-run that stage)")
    return metrics


def build_report(root: Path | None = None, out_dir: Path | None = None,
                 papers: list[str] | None = None) -> dict[str, Any]:
    """Write ``reports/README.md`` and ``reports/figures/``; return a summary dict."""
    root = root or repo_root()
    out_dir = out_dir or root / "reports"
    metrics_dir = root / "metrics"
    found = sorted(p.stem for p in metrics_dir.glob("*.json")) if metrics_dir.is_dir() else []
    if papers is not None:
        papers = list(dict.fromkeys(papers))                   # a paper named twice is reported once
        missing = [p for p in papers if p not in found]
        if missing or not papers:
            raise ReportError(f"report papers={missing or papers}: no metrics/<paper>.json for "
                              f"{'them' if missing else 'an empty list'}; expected a non-empty subset of the "
                              f"papers with metrics in {metrics_dir}: {found or 'none (run `dvc repro` first)'}")
    papers = list(papers or found)
    all_rows: dict[str, list[dict[str, Any]]] = {}
    summary: dict[str, Any] = {"papers": {}, "claims_total": 0, "claims_met": 0}
    with atomic_dir(out_dir) as tmp:
        figs = tmp / "figures"
        figs.mkdir()
        lines = ["# paperworks results report", "",
                 "Built by `dvc repro report` (`python -m flows report build`) from `metrics/*.json` and each",
                 "component's `claims.yaml`. Every value below was measured by the stage that wrote the metrics",
                 "file; the baseline column is the baseline measured in the same run. Quick profile unless the",
                 "profile column says otherwise.", ""]
        metrics_of: dict[str, dict[str, Any]] = {}
        for paper in papers:
            metrics = metrics_of[paper] = _read_metrics(metrics_dir / f"{paper}.json")
            claims = load_claims(paper, root) or {"claims": []}
            rows = claim_rows(claims, metrics)
            all_rows[paper] = rows
            met = sum(1 for r in rows if r["met"])
            judged = sum(1 for r in rows if r["met"] is not None)
            summary["papers"][paper] = {"claims": len(rows), "met": met, "judged": judged}
            summary["claims_total"] += judged
            summary["claims_met"] += met
            lines += [f'<a id="{paper}"></a>', "", f"## {claims.get('short', paper)} — {claims.get('title', '')}", "",
                      f"Component `components/{paper}` · profile `{_fmt(metrics.get('profile'))}` · "
                      f"reproduce: `{claims.get('reproduce', 'dvc repro')}`", ""]
            if rows:
                lines += ["| claim | paper | target | measured | baseline (same run) | met |",
                          "|---|---|---|---|---|---|"]
                for r in rows:
                    base = f"{_fmt(r['baseline'])} ({_cell(r['baseline_label'])})" if r["baseline"] is not None else "—"
                    lines.append(f"| {_cell(r['claim'])} | {_cell(r['paper']) or '—'} | {_cell(r['target']) or '—'} | "
                                 f"{_measured_cell(r)} | {base} | {_fmt(r['met'])} |")
                lines.append("")
            src = root / "plots" / paper
            pngs = sorted(src.glob("*.png")) if src.is_dir() else []
            if pngs:
                (figs / paper).mkdir()
                for png in pngs:
                    shutil.copy2(png, figs / paper / png.name)
                    lines += [f"![{paper}: {png.stem}](figures/{paper}/{png.name})", ""]
        head: list[str] = []
        if papers:
            head += ["| paper | claims met / judged | profile |", "|---|---|---|"]
            for paper in papers:
                s = summary["papers"][paper]
                head.append(f"| [{paper}](#{paper}) | {s['met']} / {s['judged']} | "
                            f"{_fmt(metrics_of[paper].get('profile'))} |")
            head.append("")
        if _claims_figure(all_rows, figs / "claims.png"):
            head += ["![measured vs target, every claim](figures/claims.png)", ""]
        lines[7:7] = head
        if not papers:
            lines.append("No metrics found: run `dvc repro` first.")
        (tmp / "README.md").write_text("\n".join(lines) + "\n")
    return summary
