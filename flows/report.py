"""The ``report`` flow: ``reports/README.md`` and figures from every paper's ``metrics/<paper>.json``."""
from __future__ import annotations

from typing import Any

from prefect import flow

from tasks.paths import repo_root
from tasks.report import build_report
from tasks.tracking import Tracker

STAGES = ("build",)


@flow(name="report", log_prints=True)
def report(papers: list[str] | None = None) -> dict[str, Any]:
    """Build the cross-paper report and log it to the ``report`` MLflow experiment."""
    root = repo_root()
    summary = build_report(root, papers=papers)
    tracker = Tracker("report", root)
    with tracker.parent_run("report:build", tags={"papers": ",".join(summary["papers"])},
                            description="# paperworks results report\n\nOne run per `dvc repro report`; "
                                        "the artifact `report/README.md` is the table of every paper's claims.") as run:
        run.log_metrics({"claims_met": summary["claims_met"], "claims_total": summary["claims_total"]})
        run.log_artifact(root / "reports", "report")
    print(f"report: {summary['claims_met']}/{summary['claims_total']} judged claims met "
          f"over {len(summary['papers'])} papers -> {root / 'reports' / 'README.md'}")
    return summary


FLOW = report
