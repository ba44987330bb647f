"""One Prefect flow per paper; ``python -m flows <paper> <stage>`` is the CLI that dvc.yaml calls.

The registry below is static on purpose: ``python -m flows --help`` must list papers and stages
without importing prefect, torch or any component library. ``tests/flows/test_cli.py`` checks
that it matches each flow module's ``STAGES``.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PaperEntry:
    module: str           # flow module (defines FLOW, CONFIG, STAGES)
    stages: tuple[str, ...]
    title: str


PAPERS: dict[str, PaperEntry] = {
    "har": PaperEntry("flows.har", ("data", "teacher", "imfe", "evaluate"),
                      "RT-HARE: real-time action recognition, TV-L1 flow vs the IMFE motion extractor"),
    "vfda": PaperEntry("flows.vfda", ("data", "federate", "evaluate"),
                       "VFDA: vicinal feature-statistics augmentation for federated 3D segmentation"),
    "januspipe": PaperEntry("flows.januspipe", ("data", "train", "profile", "pipeline", "simulate"),
                            "JanusPipe: four-phase pipeline-parallel training for conservative MLIPs"),
    "skrull": PaperEntry("flows.skrull", ("data", "profile", "simulate", "train", "evaluate"),
                         "Skrull: dynamic data scheduling (DACP + GDS) for long-context fine-tuning"),
    "familyseer": PaperEntry("flows.familyseer", ("data", "tune", "compile", "evaluate"),
                             "FamilySeer: subgraph-family auto-tuning on TVM MetaSchedule"),
}

#: the cross-paper report (not a paper): ``python -m flows report build``
REPORT = PaperEntry("flows.report", ("build",), "results report over every paper's metrics")
