"""``mpigather report PATH --plot timeline.png``: a per-worker Gantt chart of one run.

One lane per worker. Each task is a bar from its start to its end, colored by outcome;
the gaps between bars are the time the worker spent waiting for work or sending results.
The data are the ``spans`` each worker sends in its BYE message: (task id, start offset,
duration, outcome), the offset counted from that worker's own start.

matplotlib is imported lazily (Agg backend, no display needed); it is an optional
dependency: ``pip install mpigather[plot]``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .errors import UsageError

DONE_COLOR = "#4C72B0"  # blue: finished tasks
FAILED_COLOR = "#DD4444"  # red: tasks that raised (or returned what cannot be stored)
LANE_COLOR = "#EEEEEE"  # light gray: the worker's lifetime; gaps in the bars show on it
MAX_LABELS = 400  # task ids written inside bars, at most, over the whole chart


def _import_pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise UsageError("drawing a timeline needs matplotlib: pip install mpigather[plot]"
                         " (or pip install matplotlib)") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def check_available() -> None:
    """Raise UsageError, with the install command, when matplotlib is missing."""
    _import_pyplot()


def _lanes(info: dict[str, Any]) -> list[tuple[int, dict[str, Any], list[tuple[str, float, float, str]]]]:
    lanes = []
    for rank, w in sorted(info.get("workers", {}).items(), key=lambda kv: int(kv[0])):
        spans = []
        for s in w.get("spans") or []:
            try:
                tid, start, dur, outcome = str(s[0]), float(s[1]), float(s[2]), str(s[3])
            except (IndexError, TypeError, ValueError):
                continue
            spans.append((tid, start, max(dur, 0.0), outcome))
        lanes.append((int(rank), w, spans))
    return lanes


def _fmt_s(x: float) -> str:
    return f"{x:.2f} s" if x < 100 else f"{x:.0f} s"


def draw(info: dict[str, Any], png_path: str | Path) -> Path:
    """Draw the per-worker timeline of ``info`` (from ``report.collect``) into ``png_path``."""
    plt = _import_pyplot()
    from matplotlib.patches import Patch

    lanes = _lanes(info)
    n = max(len(lanes), 1)
    xmax = 0.0
    for _rank, w, spans in lanes:
        xmax = max(xmax, float(w.get("wall") or 0.0), *(a + d for _t, a, d, _o in spans))
    xmax = xmax if xmax > 0 else 1.0

    lane_h = 0.42 if n <= 16 else max(0.06, 6.7 / n)  # inches per lane; many workers get thin lanes
    height = min(max(2.6, 1.7 + lane_h * n), 40.0)
    fig, ax = plt.subplots(figsize=(11.0, height), dpi=100)
    try:
        bar = 0.72
        total_spans = sum(len(s) for _r, _w, s in lanes)
        label_ok = 0 < total_spans <= MAX_LABELS
        width_px = fig.get_figwidth() * fig.dpi * 0.8  # the axes' approximate width in pixels
        px = xmax / width_px  # seconds per pixel
        for y, (_rank, w, spans) in enumerate(lanes):
            wall = float(w.get("wall") or 0.0) or max((a + d for _t, a, d, _o in spans), default=0.0)
            ax.broken_barh([(0.0, wall)], (y - bar / 2, bar), facecolors=LANE_COLOR, edgecolor="none", zorder=1)
            for outcome, color in (("done", DONE_COLOR), ("failed", FAILED_COLOR)):
                bars = [(a, d) for _t, a, d, o in spans if (o == "done") == (outcome == "done")]
                wide = [(a, d) for a, d in bars if d >= 4 * px]  # outlined, so that neighbours stay apart
                thin = [(a, max(d, 1.5 * px)) for a, d in bars if d < 4 * px]  # at least visible
                if wide:
                    ax.broken_barh(wide, (y - bar / 2, bar), facecolors=color,
                                   edgecolor="white", linewidth=0.5 if len(wide) < 2000 else 0, zorder=2)
                if thin:
                    ax.broken_barh(thin, (y - bar / 2, bar), facecolors=color, edgecolor="none",
                                   zorder=2 if outcome == "done" else 2.5)
            if label_ok and n <= 32:
                for tid, a, d, _o in spans:
                    if d / xmax * width_px >= 7 * len(tid) + 4:  # only where the id fits inside its bar
                        ax.text(a + d / 2, y, tid, ha="center", va="center", fontsize=7, color="white",
                                zorder=3, clip_on=True)
            busy = float(w.get("compute") or 0.0)
            if n <= 32 and wall > 0:
                ax.text(1.005, y, f"{100 * busy / wall:.0f}% busy", transform=ax.get_yaxis_transform(),
                        ha="left", va="center", fontsize=7, color="#555555")

        ticks = list(range(len(lanes)))
        labels = [f"rank {r}" + (f"\n{str(w.get('host'))[:18]}" if w.get("host") and n <= 16 else "")
                  for r, w, _s in lanes]
        step = max(1, math.ceil(len(lanes) / 40))
        ax.set_yticks(ticks[::step])
        ax.set_yticklabels(labels[::step], fontsize=8 if n <= 16 else 6)
        ax.set_ylim(len(lanes) - 0.5 if lanes else 0.5, -0.5)  # rank 1 on top
        ax.set_xlim(0, xmax * 1.01)
        ax.set_xlabel("seconds since the worker started")
        ax.set_ylabel("worker")
        ax.grid(axis="x", color="#DDDDDD", linewidth=0.6, zorder=0)
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)

        n_done = sum(1 for _r, _w, s in lanes for x in s if x[3] == "done")
        n_failed = sum(1 for _r, _w, s in lanes for x in s if x[3] != "done")
        name = Path(str(info.get("out", ""))).name or "run"
        run_note = ""
        if info.get("runs", 1) and int(info.get("runs", 1)) > 1:
            run_note = f", run {info.get('run', info['runs'])} of {info['runs']}"
        run_wall = info.get("wall")
        wall_note = f", wall {_fmt_s(float(run_wall))}" if run_wall else ""
        ax.set_title(f"mpigather timeline: {name}{run_note} \u2014 {len(lanes)} worker(s), "
                     f"{n_done} task(s) done, {n_failed} failed{wall_note}", fontsize=10)
        handles = [Patch(facecolor=DONE_COLOR, label="task done"),
                   Patch(facecolor=FAILED_COLOR, label="task failed"),
                   Patch(facecolor=LANE_COLOR, edgecolor="#BBBBBB", linewidth=0.5,
                         label="gap: waiting for work or sending")]
        fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False,
                   bbox_to_anchor=(0.5, 0.0))
        if not lanes:
            ax.text(0.5, 0.5, "no worker statistics in this journal", transform=ax.transAxes,
                    ha="center", va="center", color="#777777")
        legend_in = 0.35
        fig.tight_layout(rect=(0, min(legend_in / height, 0.2), 1, 1))
        out = Path(png_path)
        fig.savefig(out, dpi=100)
    finally:
        plt.close(fig)
    return out


__all__ = ["check_available", "draw"]
