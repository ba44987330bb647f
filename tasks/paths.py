"""Where things live in a paperworks checkout."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def repo_root() -> Path:
    """The checkout root: ``$PAPERWORKS_ROOT`` if set, else the folder holding this package."""
    env = os.environ.get("PAPERWORKS_ROOT")
    return Path(env).resolve() if env else _PACKAGE_ROOT


@dataclass(frozen=True)
class PaperPaths:
    """The DVC-visible outputs of one paper, relative to a root."""

    root: Path
    paper: str

    @property
    def data(self) -> Path:
        return self.root / "data" / self.paper

    @property
    def models(self) -> Path:
        return self.root / "models" / self.paper

    @property
    def plots(self) -> Path:
        return self.root / "plots" / self.paper

    @property
    def metrics(self) -> Path:
        return self.root / "metrics" / f"{self.paper}.json"

    @property
    def results(self) -> Path:
        """Intermediate, DVC-tracked results (tables, JSON) that later stages read."""
        return self.root / "results" / self.paper


def paper_paths(paper: str, root: Path | None = None) -> PaperPaths:
    return PaperPaths(root or repo_root(), paper)
