"""The report stage on fixture metrics: one table per paper, targets judged, figures written."""
from __future__ import annotations

import json
import re

import pytest

from tasks.report import ReportError, build_report, check_target, claim_rows, experiment_description, load_claims

CLAIMS = """\
title: A Paper About Speed
short: SPEEDY
reference: arXiv 0000.00000
reproduce: dvc repro speedy_evaluate
claims:
  - id: speedup
    claim: method is at least 2x faster than the baseline
    paper: 3.1x on 8 GPUs
    metric: bench.speedup_vs_base
    baseline: bench.base_ms
    baseline_label: baseline ms/step
    unit: x
    target: ">= 2"
  - id: error
    claim: error below 0.1
    metric: quality.err
    target: "< 0.1"
  - id: info
    claim: informational, no target (|x - y| in points)
    metric: quality.count
"""


@pytest.fixture
def fixture_root(tmp_path):
    (tmp_path / "components" / "speedy").mkdir(parents=True)
    (tmp_path / "components" / "speedy" / "claims.yaml").write_text(CLAIMS)
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "speedy.json").write_text(json.dumps(
        {"paper": "speedy", "profile": "quick", "bench": {"speedup_vs_base": 2.5, "base_ms": 40.0},
         "quality": {"err": 0.2, "count": 7}}))
    plots = tmp_path / "plots" / "speedy"
    plots.mkdir(parents=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([1, 2], [3, 4])
    fig.savefig(plots / "curve.png")
    plt.close(fig)
    return tmp_path


def test_report_tables_judge_targets(fixture_root):
    summary = build_report(fixture_root)
    assert summary["papers"]["speedy"] == {"claims": 3, "met": 1, "judged": 2}
    text = (fixture_root / "reports" / "README.md").read_text()
    assert "## SPEEDY — A Paper About Speed" in text
    assert "| method is at least 2x faster than the baseline | 3.1x on 8 GPUs | >= 2 | 2.5 x | 40 (baseline ms/step) | yes |" in text
    assert "| error below 0.1 | — | < 0.1 | 0.2  | — | no |" in text
    # a literal | in a claim is escaped: every row keeps the header's six cells
    assert "| informational, no target (\\|x - y\\| in points) | — | — | 7  | — | — |" in text
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and "SPEEDY" not in ln and "[speedy]" not in ln]
    assert {len(ln.replace("\\|", "").split("|")) for ln in rows if "claims met" not in ln} == {8}
    assert "| [speedy](#speedy) | 1 / 2 | quick |" in text
    assert (fixture_root / "reports" / "figures" / "claims.png").stat().st_size > 1000
    assert (fixture_root / "reports" / "figures" / "speedy" / "curve.png").is_file()
    assert "figures/speedy/curve.png" in text


def test_report_without_metrics_says_so(tmp_path):
    build_report(tmp_path)
    assert "No metrics found" in (tmp_path / "reports" / "README.md").read_text()


def test_missing_metric_is_reported_not_invented(fixture_root):
    rows = claim_rows(load_claims("speedy", fixture_root), {"bench": {}})
    assert rows[0]["measured"] is None and rows[0]["met"] is None


@pytest.mark.parametrize("value,target,ok", [(2.0, ">= 2", True), (1.99, ">= 2", False), (0.05, "< 0.1", True),
                                             (float("nan"), ">= 1", False), ("x", ">= 1", None), (3, None, None),
                                             # the boundaries: a gain of exactly 0 does not meet "> 0"
                                             (0.0, "> 0", False), (1e-9, "> 0", True), (0.1, "<= 0.1", True),
                                             (0.1, "< 0.1", False), (0.10001, "<= 0.1", False), (2, "== 2", True)])
def test_check_target(value, target, ok):
    assert check_target(value, target) is ok


def test_bad_claims_file_is_rejected(tmp_path):
    (tmp_path / "components" / "bad").mkdir(parents=True)
    (tmp_path / "components" / "bad" / "claims.yaml").write_text("claims:\n  - id: x\n    claim: y\n    metric: z\n    target: 'about 3'\n")
    with pytest.raises(ReportError, match="target='about 3'"):
        load_claims("bad", tmp_path)


@pytest.mark.parametrize("target", [">= 1-2", ">= .", ">= e", ">= 1e", ">= --1", ">= 1.2.3", ">= +", ">= inf"])
def test_a_target_that_is_not_a_number_is_rejected_when_the_claims_are_read(tmp_path, target):
    """The pattern used to accept any run of digits, dots, e, + and - ('1-2', '.', 'e'): load_claims passed
    them and check_target then failed on float() without naming the file."""
    (tmp_path / "components" / "bad").mkdir(parents=True)
    (tmp_path / "components" / "bad" / "claims.yaml").write_text(
        f"claims:\n  - id: x\n    claim: y\n    metric: z\n    target: '{target}'\n")
    with pytest.raises(ReportError, match=r"claims\.yaml: claims\[0\]\.target="):
        load_claims("bad", tmp_path)


@pytest.mark.parametrize("target,ok", [(">= -1.5", True), ("<= +2", True), ("> .5", True), ("< 5.", True),
                                       ("<= 1e-6", False), ("< 2E+1", True), ("== -0", False)])
def test_number_forms_in_targets(target, ok):
    assert check_target(1.0, target) is ok


def test_experiment_description_lists_claims(fixture_root):
    md = experiment_description("speedy", fixture_root)
    assert md.startswith("# SPEEDY: A Paper About Speed") and "**speedup**" in md and "dvc repro speedy_evaluate" in md


def test_compare_runs_judges_both_checkouts_and_flags_flips(fixture_root, tmp_path):
    import importlib.util
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "compare_runs.py"
    spec = importlib.util.spec_from_file_location("compare_runs", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    other = tmp_path / "other"
    (other / "metrics").mkdir(parents=True)
    metrics = json.loads((fixture_root / "metrics" / "speedy.json").read_text())
    metrics["bench"]["speedup_vs_base"] = 1.5                       # the other run misses the 2x target
    (other / "metrics" / "speedy.json").write_text(json.dumps(metrics))
    rows = {r["claim"]: r for r in mod.compare(fixture_root, other, ["speedy"], claims_root=fixture_root)}
    assert rows["speedup"]["base_met"] is True and rows["speedup"]["other_met"] is False
    assert rows["speedup"]["same"] is False and rows["error"]["same"] is True
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "missing")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "other=" in proc.stderr and "no metrics/ folder" in proc.stderr

    del metrics["quality"]                                           # a metric both runs lack is not "same"
    (other / "metrics" / "speedy.json").write_text(json.dumps(metrics))
    (fixture_root / "metrics" / "speedy.json").write_text(json.dumps(metrics))
    rows = {r["claim"]: r for r in mod.compare(fixture_root, other, ["speedy"], claims_root=fixture_root)}
    assert rows["error"]["base"] is None and rows["error"]["same"] is False
    for argv, needle in (([str(other), "--papers", "hra"], "--papers hra: no components/<paper>/claims.yaml"),):
        proc = subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr
    (other / "metrics" / "har.json").mkdir()                         # a folder where the metrics file should be
    proc = subprocess.run([sys.executable, str(script), str(other), "--papers", "har"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "har.json" in proc.stderr


@pytest.mark.parametrize("text, found", [("[1, 2]", "a JSON list"), ('"done"', "a JSON string"), ("3.5", "a JSON number"),
                                         ("null", "a JSON null")])
def test_metrics_file_that_is_not_an_object_names_the_file(fixture_root, text, found):
    """A metrics file holding a JSON list was an AttributeError ('list' object has no attribute 'get')."""
    (fixture_root / "metrics" / "speedy.json").write_text(text)
    with pytest.raises(ReportError) as err:
        build_report(fixture_root)
    assert f"speedy.json: {found}; expected a JSON object of metrics" in str(err.value)
    assert not (fixture_root / "reports").exists()                  # nothing half-written


def test_report_input_errors_are_user_errors(fixture_root):
    from components.base import InputError

    assert issubclass(ReportError, InputError) and issubclass(ReportError, ValueError)
    (fixture_root / "metrics" / "speedy.json").write_text("{truncated")
    with pytest.raises(InputError, match=r"speedy\.json: not valid JSON"):
        build_report(fixture_root)
    (fixture_root / "components" / "speedy" / "claims.yaml").write_text("claims: [unclosed\n")
    with pytest.raises(ReportError, match=r"claims\.yaml: not valid YAML"):
        load_claims("speedy", fixture_root)
    (fixture_root / "components" / "speedy" / "claims.yaml").write_text("claims:\n  - just a string\n")
    with pytest.raises(ReportError, match=r"claims\[0\]='just a string'; expected a mapping"):
        load_claims("speedy", fixture_root)


def test_booleans_are_not_judged_against_numeric_targets():
    """bool is an int subclass: True >= 1 would read as 'met'; a flag is not a measurement."""
    assert check_target(True, ">= 1") is None
    assert check_target(False, "< 1") is None


def test_lookup_through_a_non_mapping_is_absent():
    from tasks.report import lookup

    assert lookup({"a": 3.0}, "a.b") is None
    assert lookup({"a": "xbx"}, "a.b") is None          # a string 'contains' b, but is not a mapping
    assert lookup({"a": {"b": 4}}, "a.b") == 4


def test_summary_totals_count_judged_and_met_claims(fixture_root):
    """speedy: speedup 2.5 >= 2 met, err 0.2 < 0.1 not met, info has no target -> 2 judged, 1 met."""
    summary = build_report(fixture_root)
    assert summary["claims_total"] == 2 and summary["claims_met"] == 1


def _add_other_paper(root):
    """A second paper 'other' with one judged claim, met (0.9 >= 0.5)."""
    (root / "components" / "other").mkdir(parents=True)
    (root / "components" / "other" / "claims.yaml").write_text(
        "title: Other\nshort: OTHER\nclaims:\n  - id: acc\n    claim: accuracy\n    metric: acc\n    target: '>= 0.5'\n")
    (root / "metrics" / "other.json").write_text(json.dumps({"acc": 0.9, "profile": "quick"}))


def test_summary_totals_add_up_over_papers(fixture_root):
    """other: 1 judged, 1 met; speedy: 2 judged, 1 met -> 3 judged, 2 met in all."""
    _add_other_paper(fixture_root)
    summary = build_report(fixture_root)
    assert summary["papers"]["other"] == {"claims": 1, "met": 1, "judged": 1}
    assert summary["claims_total"] == 3 and summary["claims_met"] == 2


def test_papers_argument_selects_among_the_metrics_found(fixture_root):
    _add_other_paper(fixture_root)
    summary = build_report(fixture_root, papers=["speedy"])
    assert list(summary["papers"]) == ["speedy"]
    text = (fixture_root / "reports" / "README.md").read_text()
    assert '<a id="speedy"></a>' in text and '<a id="other"></a>' not in text and "OTHER" not in text

    summary = build_report(fixture_root, papers=["speedy", "speedy"])   # named twice: reported once
    text = (fixture_root / "reports" / "README.md").read_text()
    assert summary["claims_total"] == 2 and text.count('<a id="speedy"></a>') == 1

    before = (fixture_root / "reports" / "README.md").read_text()
    for bad, named in ((["nope"], "['nope']"), (["speedy", "Other"], "['Other']"), ([], "[]")):
        with pytest.raises(ReportError, match=re.escape(f"report papers={named}: no metrics/<paper>.json")
                           + r".*expected a non-empty subset .*\['other', 'speedy'\]"):
            build_report(fixture_root, papers=bad)
    assert (fixture_root / "reports" / "README.md").read_text() == before   # the old report is left as it was


def test_bar_of_the_claims_figure_is_clipped_and_labelled():
    """A '<=' claim measured at 0 is an infinite ratio and a '>=' claim measured negative a negative one:
    the log-scale bar is clipped to the figure's range and labelled so (one such bar hid every other one)."""
    from tasks.report import _FIGURE_CLIP, _bar

    lo, hi = _FIGURE_CLIP
    assert _bar(1e10) == (hi, f"≥ {hi:g}") and _bar(-0.17) == (lo, f"≤ {lo:g}") and _bar(0.0) == (lo, f"≤ {lo:g}")
    assert _bar(1.214) == (1.214, "1.21") and _bar(0.9892) == (0.9892, "0.989")


def test_report_starts_with_title_then_intro_then_summary_table(fixture_root):
    build_report(fixture_root)
    text = (fixture_root / "reports" / "README.md").read_text()
    assert text.startswith("# paperworks results report\n")
    lines = text.splitlines()
    table = lines.index("| paper | claims met / judged | profile |")
    intro_end = next(i for i, ln in enumerate(lines) if ln.endswith("profile column says otherwise."))
    anchor = lines.index('<a id="speedy"></a>')
    assert intro_end < table < anchor
    assert table == intro_end + 2 and lines[intro_end + 1] == ""   # a blank line, then the table


def test_a_claim_on_an_interval_end_shows_the_estimate_and_the_interval(tmp_path):
    """A claim that reads the low end of a gain's interval names the point estimate and the interval;
    the report's measured cell shows all three, the verdict still follows the metric alone."""
    (tmp_path / "components" / "gains").mkdir(parents=True)
    (tmp_path / "components" / "gains" / "claims.yaml").write_text(
        "claims:\n"
        "  - id: g\n    claim: the gain is above noise\n    metric: gain.low\n    estimate: gain.mean\n"
        "    interval: gain.ci\n    unit: pp\n    target: '> 0'\n"
        "  - id: h\n    claim: no interval recorded\n    metric: other.low\n    estimate: other.mean\n"
        "    interval: other.ci\n    target: '> 0'\n")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "gains.json").write_text(json.dumps(
        {"profile": "quick", "gain": {"low": -0.5, "mean": 0.25, "ci": [-0.5, 1.0]}, "other": {"low": 0.1}}))
    rows = claim_rows(load_claims("gains", tmp_path), json.loads((tmp_path / "metrics" / "gains.json").read_text()))
    assert rows[0]["met"] is False and rows[0]["estimate"] == 0.25 and rows[0]["interval"] == [-0.5, 1.0]
    assert rows[1]["met"] is True and rows[1]["estimate"] is None and rows[1]["interval"] is None
    build_report(tmp_path)
    text = (tmp_path / "reports" / "README.md").read_text()
    assert "| -0.5 pp (estimate 0.25; interval [-0.5, 1]) | — | no |" in text
    assert "| 0.1  | — | yes |" in text


@pytest.mark.parametrize("value, needle", [("[1]", "expected [low, high]"), ('"wide"', "expected [low, high]"),
                                           ("[1, true]", "expected [low, high]")])
def test_a_malformed_interval_in_the_metrics_names_the_claim(tmp_path, value, needle):
    (tmp_path / "components" / "gains").mkdir(parents=True)
    (tmp_path / "components" / "gains" / "claims.yaml").write_text(
        "claims:\n  - id: g\n    claim: c\n    metric: gain.low\n    interval: gain.ci\n    target: '> 0'\n")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "gains.json").write_text(f'{{"gain": {{"low": 0.1, "ci": {value}}}}}')
    with pytest.raises(ReportError, match=rf"claim g: interval gain\.ci=.*{re.escape(needle)}"):
        build_report(tmp_path)
    assert not (tmp_path / "reports").exists()


def test_an_estimate_key_that_is_not_a_path_is_rejected(tmp_path):
    (tmp_path / "components" / "bad").mkdir(parents=True)
    (tmp_path / "components" / "bad" / "claims.yaml").write_text(
        "claims:\n  - id: x\n    claim: y\n    metric: z\n    estimate: [a, b]\n")
    with pytest.raises(ReportError, match=r"claims\[0\]\.estimate=\['a', 'b'\]; expected a dotted path"):
        load_claims("bad", tmp_path)


def test_compare_runs_does_not_count_a_claim_one_run_cannot_judge_as_a_flip(tmp_path, capsys):
    """A metrics file written before a claim's metric existed (VFDA's interval ends, 2026-11-29) leaves
    that claim unjudged there: the summary says so instead of counting it as a verdict that differs."""
    import importlib.util
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("compare_runs", repo / "benchmarks" / "compare_runs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    metrics = json.loads((repo / "metrics" / "vfda.json").read_text())
    for root in (tmp_path / "new", tmp_path / "old"):
        (root / "metrics").mkdir(parents=True)
    (tmp_path / "new" / "metrics" / "vfda.json").write_text(json.dumps(metrics))
    for g in metrics["gain"].values():
        for d in g.values():
            for key in [k for k in d if "_ci90" in k]:
                del d[key]
    (tmp_path / "old" / "metrics" / "vfda.json").write_text(json.dumps(metrics))
    assert mod.main([str(tmp_path / "old"), "--root", str(tmp_path / "new"), "--papers", "vfda"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("5 claims: 1 identical values, 0 verdicts differ (4 claims not judged in both runs")
