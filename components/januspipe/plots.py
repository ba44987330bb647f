"""Figures: throughput and memory per schedule, schedule timelines (matplotlib, Agg backend)."""
from __future__ import annotations

from typing import Any, Sequence

PHASE_COLOURS = {1: "#4C72B0", 2: "#DD8452", 3: "#C44E52", 4: "#55A868"}
PHASE_NAMES = {1: "P1 energy fwd", 2: "P2 force bwd", 3: "P3 2nd-order", 4: "P4 bwd"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def close(fig) -> None:
    """Free a figure that was saved and is no longer needed."""
    _plt().close(fig)


def throughput_and_memory(rows: Sequence[dict[str, Any]], budget_mib: dict[int, float]):
    """Two panels over device counts: simulated throughput and peak activation memory per schedule."""
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(dict.fromkeys(r["schedule"] for r in rows))
    for name in names:
        rs = sorted((r for r in rows if r["schedule"] == name), key=lambda r: r["devices"])
        d = [r["devices"] for r in rs]
        ax1.plot(d, [r["throughput_structures_per_s"] for r in rs], marker="o", label=name)
        ax2.plot(d, [r["peak_activation_MiB"] for r in rs], marker="o", label=name)
    if budget_mib:
        ds = sorted(budget_mib)
        ax2.plot(ds, [budget_mib[d] for d in ds], "k--", lw=1, label="budget (1F1B-4, cap=D)")
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("pipeline devices (simulated, M = 2 x devices)")
        ax.grid(alpha=0.3)
    ax1.set_ylabel("structures / s")
    ax1.set_title("simulated throughput (measured phase costs)")
    ax2.set_ylabel("peak saved activations per device (MiB)")
    ax2.set_title("peak activation memory")
    ax1.legend(fontsize=8)
    fig.tight_layout()
    return fig


def timeline(events: Sequence[tuple[int, int, int, int, float, float]], num_devices: int, title: str,
             ax=None):
    """Gantt chart; ``events`` = (device, phase, microbatch, stage, start, end)."""
    plt = _plt()
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(11, 0.45 * num_devices + 1.2))
    # one bar call for every action (the same rectangles in the same order as one call per action,
    # which costs ~3 ms per action in matplotlib)
    if events:
        ax.barh([e[0] for e in events], [e[5] - e[4] for e in events], left=[e[4] for e in events],
                color=[PHASE_COLOURS[e[1]] for e in events], edgecolor="white", linewidth=0.4, height=0.8)
    for d, phase, mb, stage, t0, t1 in events:
        if num_devices <= 8 and (t1 - t0) > 0:
            ax.text(t0 + (t1 - t0) / 2, d, str(mb), ha="center", va="center", fontsize=6, color="white")
    ax.set_yticks(range(num_devices))
    ax.set_yticklabels([f"dev {d}" for d in range(num_devices)])
    ax.invert_yaxis()
    ax.set_xlabel("time (s)")
    ax.set_title(title, fontsize=9)
    if own:
        from matplotlib.patches import Patch

        ax.legend(handles=[Patch(color=c, label=PHASE_NAMES[p]) for p, c in PHASE_COLOURS.items()],
                  fontsize=7, ncol=4, loc="upper right")
        fig.tight_layout()
        return fig
    return ax


def timelines_real_vs_sim(real: Sequence, sim: Sequence, num_devices: int, title: str):
    plt = _plt()
    from matplotlib.patches import Patch

    fig, (a, b) = plt.subplots(2, 1, figsize=(11, 0.9 * num_devices + 2.4), sharex=True)
    timeline(real, num_devices, f"{title}: measured (gloo, 1 thread per process)", ax=a)
    timeline(sim, num_devices, f"{title}: simulated from the same run's phase costs", ax=b)
    a.legend(handles=[Patch(color=c, label=PHASE_NAMES[p]) for p, c in PHASE_COLOURS.items()],
             fontsize=7, ncol=4, loc="upper right")
    fig.tight_layout()
    return fig


def real_vs_sim_bars(rows: Sequence[dict[str, Any]]):
    plt = _plt()
    labels = [f"{r['schedule']}\n{r['processes']}p" for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(rows)), 3.6))
    ax.bar([i - 0.2 for i in x], [r["measured_makespan_s"] for r in rows], width=0.4, label="measured")
    ax.bar([i + 0.2 for i in x], [r["sim_makespan_s"] for r in rows], width=0.4, label="simulated")
    ax.set_xticks(list(x))
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel("pipeline makespan per step (s)")
    ax.set_title("real pipelined runs vs simulator (same action lists)")
    ax.legend()
    fig.tight_layout()
    return fig
