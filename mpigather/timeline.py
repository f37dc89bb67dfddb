"""``mpigather report PATH --plot timeline.png``: a per-worker Gantt chart of one run.

One lane per worker. Each task is a bar from its start to its end, colored by outcome;
the gaps between bars are the time the worker spent waiting for work or sending results.
The data are the ``spans`` each worker sends in its BYE message: (task id, start offset,
duration, outcome), the offset counted from that worker's own start.

Above ``workerstats.LANES_MAX`` workers, lanes would be hairlines: the picture shows instead how
many workers were busy (and alive) over time, from the profiles the workers send, and below it a
lane for each outlier worker (the slowest, the least busy, those with failed tasks, the lost).

matplotlib is imported lazily (Agg backend, no display needed); it is an optional
dependency: ``pip install mpigather[plot]``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from . import workerstats as WS
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


Span = tuple[str, float, float, str, str]  # task id, start, duration, outcome, step name
STEP_COLORS = ("#4C72B0", "#55A868", "#8172B2", "#CCB974", "#64B5CD", "#8C8C8C", "#C44E52", "#DA8BC3")


def _lanes(info: dict[str, Any]) -> list[tuple[int, dict[str, Any], list[Span]]]:
    lanes = []
    for rank, w in sorted(info.get("workers", {}).items(), key=lambda kv: int(kv[0])):
        spans: list[Span] = []
        for s in w.get("spans") or []:
            try:
                tid, start, dur, outcome = str(s[0]), float(s[1]), float(s[2]), str(s[3])
            except (IndexError, TypeError, ValueError):
                continue
            spans.append((tid, start, max(dur, 0.0), outcome, str(s[4]) if len(s) > 4 else ""))
        lanes.append((int(rank), w, spans))
    return lanes


def _fmt_s(x: float) -> str:
    return f"{x:.2f} s" if x < 100 else f"{x:.0f} s"


def _colors(lanes: list[tuple[int, dict[str, Any], list[Span]]]) -> dict[str, str]:
    """A color per step of multi-step tasks (in the order they first appear); one color otherwise."""
    names: list[str] = []
    for _r, _w, spans in lanes:
        for s in spans:
            if s[4] not in names:
                names.append(s[4])
    if len(names) <= 1:
        return {n: DONE_COLOR for n in names}
    return {n: STEP_COLORS[i % len(STEP_COLORS)] for i, n in enumerate(names)}


def _draw_lane(ax: Any, y: float, w: dict[str, Any], spans: list[Span], colors: dict[str, str], px: float,
               bar: float) -> None:
    """One worker: its lifetime in gray, its tasks (or steps) as bars, failed ones in red."""
    wall = float(w.get("wall") or 0.0) or max((a + d for _t, a, d, _o, _n in spans), default=0.0)
    ax.broken_barh([(0.0, wall)], (y - bar / 2, bar), facecolors=LANE_COLOR, edgecolor="none", zorder=1)
    groups: dict[str, list[tuple[float, float]]] = {}
    for _t, a, d, o, name in spans:
        groups.setdefault(FAILED_COLOR if o == "failed" else colors.get(name, DONE_COLOR), []).append((a, d))
    for color, bars in groups.items():
        wide = [(a, d) for a, d in bars if d >= 4 * px]  # outlined, so that neighbours stay apart
        thin = [(a, max(d, 1.5 * px)) for a, d in bars if d < 4 * px]  # at least visible
        if wide:
            ax.broken_barh(wide, (y - bar / 2, bar), facecolors=color, edgecolor="white",
                           linewidth=0.5 if len(wide) < 2000 else 0, zorder=2)
        if thin:
            ax.broken_barh(thin, (y - bar / 2, bar), facecolors=color, edgecolor="none",
                           zorder=2.5 if color == FAILED_COLOR else 2)


def _label_bars(ax: Any, y: float, spans: list[Span], xmax: float, width_px: float) -> None:
    for tid, a, d, _o, _n in spans:
        if d / xmax * width_px >= 7 * len(tid) + 4:  # only where the id fits inside its bar
            ax.text(a + d / 2, y, tid, ha="center", va="center", fontsize=7, color="white", zorder=3, clip_on=True)


def _axes(ax: Any, lanes: list[tuple[int, dict[str, Any], list[Span]]], xmax: float) -> None:
    n = len(lanes)
    labels = [f"rank {r}" + (" (lost)" if w.get("lost") else "")
              + (f"\n{str(w.get('host'))[:18]}" if w.get("host") and n <= 16 else "") for r, w, _s in lanes]
    every = max(1, math.ceil(n / 40))
    ax.set_yticks(list(range(n))[::every])
    ax.set_yticklabels(labels[::every], fontsize=8 if n <= 16 else 6)
    ax.set_ylim(n - 0.5 if lanes else 0.5, -0.5)  # rank 1 on top
    _time_axis(ax, xmax, "seconds since the worker started", "worker")


def _time_axis(ax: Any, xmax: float, xlabel: str, ylabel: str) -> None:
    """Time along x from 0, labels, a light vertical grid behind the bars, no top or right frame."""
    ax.set_xlim(0, xmax * 1.01)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(axis="x", color="#DDDDDD", linewidth=0.6, zorder=0)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _title_and_legend(fig: Any, ax: Any, info: dict[str, Any], lanes: list[tuple[int, dict[str, Any], list[Span]]],
                      colors: dict[str, str]) -> None:
    from matplotlib.patches import Patch

    n_done = sum(1 for _r, _w, s in lanes for x in s if x[3] == "done")
    n_failed = sum(1 for _r, _w, s in lanes for x in s if x[3] == "failed")
    name = Path(str(info.get("out", ""))).name or "run"
    run_note = f", run {info.get('run', info['runs'])} of {info['runs']}" if int(info.get("runs", 1) or 1) > 1 else ""
    wall_note = f", wall {_fmt_s(float(info['wall']))}" if info.get("wall") else ""
    ax.set_title(f"mpigather timeline: {name}{run_note} \u2014 {len(lanes)} worker(s), "
                 f"{n_done} task(s) done, {n_failed} failed{wall_note}", fontsize=10)
    if len(colors) > 1:
        handles = [Patch(facecolor=c, label=f"step {s}") for s, c in colors.items()]
    else:
        handles = [Patch(facecolor=DONE_COLOR, label="task done")]
    handles += [Patch(facecolor=FAILED_COLOR, label="failed"),
                Patch(facecolor=LANE_COLOR, edgecolor="#BBBBBB", linewidth=0.5,
                      label="gap: waiting for work or sending")]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 0.0))
    if not lanes:
        ax.text(0.5, 0.5, "no worker statistics in this journal", transform=ax.transAxes, ha="center",
                va="center", color="#777777")


def draw(info: dict[str, Any], png_path: str | Path) -> Path:
    """Draw the per-worker timeline of ``info`` (from ``report.collect``) into ``png_path``; the
    steps of multi-step tasks get a color each. A run of more than ``workerstats.LANES_MAX``
    workers gets the busy workers over time, and a lane per outlier."""
    plt = _import_pyplot()
    n_fleet = int((info.get("fleet") or {}).get("n") or 0)
    if n_fleet > WS.LANES_MAX:
        return _draw_fleet(plt, info, png_path)
    lanes = _lanes(info)
    n = max(len(lanes), 1)
    xmax = max([1e-9, *(float(w.get("wall") or 0.0) for _r, w, _s in lanes),
                *(a + d for _r, _w, s in lanes for _t, a, d, _o, _n in s)])
    colors = _colors(lanes)
    lane_h = 0.42 if n <= 16 else max(0.06, 6.7 / n)  # inches per lane; many workers get thin lanes
    height = min(max(2.6, 1.7 + lane_h * n), 40.0)
    fig, ax = plt.subplots(figsize=(11.0, height), dpi=100)
    try:
        width_px = fig.get_figwidth() * fig.dpi * 0.8  # the axes' approximate width in pixels
        label_ok = 0 < sum(len(s) for _r, _w, s in lanes) <= MAX_LABELS and n <= 32
        for y, (_rank, w, spans) in enumerate(lanes):
            _draw_lane(ax, y, w, spans, colors, xmax / width_px, 0.72)
            if label_ok:
                _label_bars(ax, y, spans, xmax, width_px)
            wall, busy = float(w.get("wall") or 0.0), float(w.get("compute") or 0.0)
            if n <= 32 and wall > 0:
                ax.text(1.005, y, f"{100 * busy / wall:.0f}% busy", transform=ax.get_yaxis_transform(),
                        ha="left", va="center", fontsize=7, color="#555555")
        _axes(ax, lanes, xmax)
        _title_and_legend(fig, ax, info, lanes, colors)
        fig.tight_layout(rect=(0, min(0.35 / height, 0.2), 1, 1))
        out = Path(png_path)
        fig.savefig(out, dpi=100)
    finally:
        plt.close(fig)
    return out


def _curve(rec: dict[str, Any] | None) -> tuple[list[float], list[float]]:
    """A profile (``workerstats.Profile.export``) as a step curve: workers busy (or alive) on average
    in each bin, against the bins' edges."""
    if not rec or not rec.get("v"):
        return [], []
    t0, w, v = float(rec.get("t0") or 0.0), float(rec.get("w") or 1.0), rec["v"]
    xs, ys = [], []
    for i, x in enumerate(v):
        xs += [t0 + i * w, t0 + (i + 1) * w]
        ys += [float(x) / w] * 2
    return xs, ys


def _outlier_lanes(info: dict[str, Any]) -> list[tuple[int, dict[str, Any], list[Span], str]]:
    """The outlier workers whose stats the journal kept, in the order of ``workerstats.KINDS``."""
    fleet = info.get("fleet") or {}
    by_rank = {r: (w, spans) for r, w, spans in _lanes(info)}
    kinds: dict[int, list[str]] = {}  # in the order of the kinds, then of each kind's list
    for kind in WS.KINDS:
        for r in (fleet.get("outliers") or {}).get(kind) or []:
            if r in by_rank:
                kinds.setdefault(r, []).append(kind.replace("_", " "))
    return [(r, *by_rank[r], ", ".join(k)) for r, k in kinds.items()]


def _draw_fleet(plt: Any, info: dict[str, Any], png_path: str | Path) -> Path:
    """Many workers: busy and alive workers over time on top, a lane per outlier below."""
    from matplotlib.patches import Patch

    fleet = info.get("fleet") or {}
    prof = fleet.get("profiles") or {}
    lanes = _outlier_lanes(info)
    plain = [(r, w, s) for r, w, s, _k in lanes]
    colors = _colors(plain)
    bx, by = _curve(prof.get("busy"))
    ax_, ay = _curve(prof.get("alive"))
    xmax = max([1e-9, *bx, *ax_, *(float(w.get("wall") or 0.0) for _r, w, _s in plain),
                *(a + d for _r, _w, s in plain for _t, a, d, _o, _n in s)])
    n_l = max(len(lanes), 1)
    lane_h = 0.32
    height = min(3.6 + 1.2 + lane_h * n_l, 40.0)
    fig, (top, ax) = plt.subplots(2, 1, figsize=(11.0, height), dpi=100, sharex=True,
                                  gridspec_kw={"height_ratios": [3.0, max(lane_h * n_l, 1.0)]})
    try:
        if bx:
            top.fill_between(bx, by, color=DONE_COLOR, linewidth=0, label="busy workers")
        if ax_:
            top.plot(ax_, ay, color="#555555", linewidth=1.0, label="workers alive")
        n = int(fleet.get("n") or 0)
        top.set_ylim(0, max([n, *ay, *by, 1]) * 1.05)
        top.set_ylabel("workers")
        top.grid(color="#DDDDDD", linewidth=0.6)
        top.legend(loc="upper right", fontsize=8, frameon=False)
        for side in ("top", "right"):
            top.spines[side].set_visible(False)
        t = fleet.get("totals") or {}
        busy = 100.0 * float(t.get("compute") or 0.0) / float(t["wall"]) if t.get("wall") else 0.0
        name = Path(str(info.get("out", ""))).name or "run"
        run_note = f", run {info.get('run')} of {info['runs']}" if int(info.get("runs", 1) or 1) > 1 else ""
        wall_note = f", wall {_fmt_s(float(info['wall']))}" if info.get("wall") else ""
        top.set_title(f"mpigather timeline: {name}{run_note} \u2014 {n} workers, {t.get('tasks', 0)} task(s),"
                      f" {t.get('failed', 0)} failed, {busy:.0f}% busy{wall_note}", fontsize=10)
        width_px = fig.get_figwidth() * fig.dpi * 0.8
        for y, (_r, w, spans, _k) in enumerate(lanes):
            _draw_lane(ax, y, w, spans, colors, xmax / width_px, 0.72)
            b = WS.busy_pct(w)
            if b is not None:
                ax.text(1.005, y, f"{b:.0f}% busy", transform=ax.get_yaxis_transform(), ha="left", va="center",
                        fontsize=7, color="#555555")
        ax.set_yticks(list(range(len(lanes))))
        ax.set_yticklabels([f"rank {r} ({k})" for r, _w, _s, k in lanes], fontsize=7)
        ax.set_ylim(n_l - 0.5, -0.5)
        _time_axis(ax, xmax, "seconds since the workers started", "outlier workers")
        if not lanes:
            ax.text(0.5, 0.5, "no outlier worker's spans in this journal", transform=ax.transAxes, ha="center",
                    va="center", color="#777777")
        handles = ([Patch(facecolor=c, label=f"step {s}") for s, c in colors.items()] if len(colors) > 1
                   else [Patch(facecolor=DONE_COLOR, label="task done")])
        handles += [Patch(facecolor=FAILED_COLOR, label="failed"),
                    Patch(facecolor=LANE_COLOR, edgecolor="#BBBBBB", linewidth=0.5,
                          label="gap: waiting for work or sending")]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False,
                   bbox_to_anchor=(0.5, 0.0))
        fig.tight_layout(rect=(0, min(0.35 / height, 0.2), 1, 1))
        out = Path(png_path)
        fig.savefig(out, dpi=100)
    finally:
        plt.close(fig)
    return out


__all__ = ["check_available", "draw"]
