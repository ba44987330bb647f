"""Figures of a Skrull run (PNG under plots/skrull/, also logged to MLflow)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from components.skrull.report import PAPER_SPEEDUPS


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def speedup_bars(results: Mapping[str, Any], title: str, path: Path, with_paper: bool) -> None:
    plt = _plt()
    keys = list(results)
    x = np.arange(len(keys))
    series = [("vs DeepSpeed (best fixed b)", "speedup_vs_deepspeed"), ("vs DeepSpeed b=1", "speedup_vs_deepspeed_b1"),
              ("vs sorted batching", "speedup_vs_sorted")]
    width = 0.8 / (len(series) + (1 if with_paper else 0))
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(keys)), 4))
    for i, (label, k) in enumerate(series):
        ax.bar(x + i * width, [results[key][k] for key in keys], width, label=label)
    if with_paper:
        ax.bar(x + len(series) * width, [PAPER_SPEEDUPS.get(k, 0.0) for k in keys], width,
               label="paper vs DeepSpeed [S]", color="grey")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xticks(x + width * (len(series) - (0 if with_paper else 1)) / 2)
    ax.set_xticklabels([k.replace("/", "\n") for k in keys], fontsize=8)
    ax.set_ylabel("Skrull speed-up (simulated)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def length_cdf(pools: Mapping[str, np.ndarray], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, lengths in pools.items():
        xs = np.sort(np.asarray(lengths))
        ax.plot(xs, np.arange(1, len(xs) + 1) / len(xs), label=f"{name} (n={len(xs)})")
    for t in (1024, 4096, 8192, 32768, 131072):
        ax.axvline(t, color="grey", lw=0.5, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel("share of sequences below")
    ax.set_title("Length distributions: Table 1 samplers and the local corpus", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sensitivity(rows, path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, kind, label in ((axes[0], "batch_size", "BatchSize (sequences per DP rank)"),
                            (axes[1], "bucket_tokens", "BucketSize C (tokens)")):
        rs = [r for r in rows if r["vary"] == kind]
        ax.plot([r["value"] for r in rs], [r["speedup_vs_deepspeed"] for r in rs], "o-", label="vs best fixed b")
        ax.plot([r["value"] for r in rs], [r["speedup_vs_deepspeed_b1"] for r in rs], "s--", label="vs b=1")
        ax.set_xlabel(label)
        ax.set_ylabel("speed-up")
        ax.legend(fontsize=8)
    fig.suptitle("Sensitivity (Qwen2.5-0.5B, ChatQA2, DP=1, CP=8, simulated)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def ilp_gap(rows, path: Path, title: str = "") -> None:
    plt = _plt()
    rs = [r for r in rows if r.get("solved")]
    pct = lambda g: np.nan if g is None else 100 * g     # noqa: E731  (unknown gap: no bar)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = np.arange(len(rs))
    ax.bar(x - 0.2, [pct(r["gap"]) for r in rs], 0.4, label="Skrull heuristic")
    ax.bar(x + 0.2, [pct(r["gap_dacp_literal"]) for r in rs], 0.4, label="DACP as printed (no guard)")
    ax.axhline(10, color="red", lw=0.8, ls="--", label="10 % target")
    ax.set_xticks(x)
    ax.set_xticklabels([f"{r['dataset']}\n#{r['instance']}" for r in rs], fontsize=7)
    ax.set_ylabel("gap to the ILP optimum / lower bound (%)")
    ax.set_yscale("symlog", linthresh=1)
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def real_run(train: Mapping[str, Any], path: Path) -> None:
    plt = _plt()
    v = train["variants"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    names = list(v)
    ax.bar(names, [v[n]["step_s_median"] for n in names], color="tab:blue", label="measured (median step)")
    ax.plot(names, [v[n]["predicted_step_s"] for n in names], "kD", label="cost model prediction")
    ax.set_ylabel("seconds per optimizer step")
    ax.set_title(f"Real run: {train['processes']} gloo processes (dp={train['dp']}, cp={train['cp']}), "
                 f"{train['speedup_vs_deepspeed']:.2f}x", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(inputs: Mapping[str, Any], pools: Mapping[str, np.ndarray], out: Path) -> None:
    speedup_bars(inputs["paper"], "Paper scale (H100 preset, 4 DP x 8 CP; 7B+ChatQA2 2 x 16)",
                 out / "speedup_paper_scale.png", with_paper=True)
    speedup_bars(inputs["local"], "Local scale (profiled CPU cost model)", out / "speedup_local_scale.png",
                 with_paper=False)
    length_cdf(pools, out / "length_cdf.png")
    sensitivity(inputs["sensitivity"], out / "sensitivity.png")
    if any(r.get("solved") for r in inputs["ilp"]):
        ilp_gap(inputs["ilp"], out / "ilp_gap.png", "paper-scale preset (claimed)")
    if any(r.get("solved") for r in inputs.get("ilp_local", ())):
        ilp_gap(inputs["ilp_local"], out / "ilp_gap_local.png", "profiled CPU model, local scale (reported)")
    real_run(inputs["train"], out / "real_run.png")
