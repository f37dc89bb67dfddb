"""``mpigather report`` (text, JSON, timeline PNG), the per-worker stats behind it, and progress output.

One small real run under mpiexec feeds the report tests; two more check the progress bar and
--quiet. Everything else (drawing, the journal's runs, the progress lines) runs without MPI.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import env, gather, show

from mpigather import report as R
from mpigather.progress import Progress, interval_from_env

pytestmark = pytest.mark.mpi

RANKS = 3
N = 12
DONE_RGB = np.array([0x4C, 0x72, 0xB0]) / 255  # timeline.DONE_COLOR
FAILED_RGB = np.array([0xDD, 0x44, 0x44]) / 255  # timeline.FAILED_COLOR
LOG_LINE = re.compile(r"progress: (\d+)/(\d+) done \(\d+%\)(?: \[\d+ by earlier runs\])?, (\d+) failed,"
                      r" [\d.e+-]+ tasks/s, [\d.]+ (?:B|KiB|MiB|GiB) gathered \([\d.]+ (?:B|KiB|MiB|GiB)/s\),"
                      r" ETA (?:\?|\d+s|\d+m\d+s|\d+h\d+m|\d+d\d+h)")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """taskfuncs:out_of_order on 2 workers, progress left on 'auto' (stderr is a pipe: log lines)."""
    out = tmp_path_factory.mktemp("report") / "o.h5"
    p = gather(RANKS, "taskfuncs:out_of_order", out, "--range", str(N), "--progress", "auto", "--prefetch", "1",
               timeout=90, extra_env={"MPIGATHER_PROGRESS_INTERVAL": "0.05"})
    assert p.returncode == 0, show(p)
    return out, p


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mpigather", *args], capture_output=True, text=True,
                          timeout=timeout, env=env())


def lanes(png: Path, rgb: np.ndarray, min_px: int = 60) -> list[tuple[int, int]]:
    """Bands of rows (top, bottom) with at least ``min_px`` pixels of color ``rgb``: the lanes' bars
    (the legend's small patch of the same color stays under ``min_px``)."""
    import matplotlib.image as mpimg

    img = mpimg.imread(str(png))[..., :3]
    hits = (np.abs(img - rgb).max(axis=2) < 0.02).sum(axis=1) >= min_px
    bands, start = [], None
    for y, h in enumerate(hits):
        if h and start is None:
            start = y
        elif not h and start is not None:
            bands.append((start, y))
            start = None
    if start is not None:
        bands.append((start, len(hits)))
    return bands


# -- the real run ----------------------------------------------------------------------------------


def test_stats_add_up_per_worker(run):
    out, _p = run
    info = R.collect(str(out))
    assert sorted(info["workers"], key=int) == [str(r) for r in range(1, RANKS)]
    assert sum(w["tasks"] for w in info["workers"].values()) == N
    for rank, w in info["workers"].items():
        acc = w["compute"] + w["send"] + w["idle"]
        assert w["wall"] > 0
        assert abs(acc - w["wall"]) <= 0.05 * w["wall"], f"rank {rank}: {acc:.4f} s accounted of {w['wall']:.4f} s"
        assert len(w["spans"]) == w["tasks"]
        assert all(s[3] == "done" and s[1] >= 0 and s[2] >= 0 for s in w["spans"])
        # the journal keeps each span to the microsecond: n spans sum to within n/2 µs of the total
        assert sum(s[2] for s in w["spans"]) == pytest.approx(w["compute"], rel=1e-6, abs=1e-6 * len(w["spans"]))
    assert sorted(int(s[0]) for w in info["workers"].values() for s in w["spans"]) == list(range(N))


def test_report_text_and_json(run):
    out, _p = run
    p = cli("report", str(out))
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith(f"{out}: wall ") and f"{N} done, 0 failed, exit 0" in lines[0]
    assert "compute" in lines[1] and "idle" in lines[1] and "wall" in lines[1]
    rows = [ln.split() for ln in lines[2:] if re.match(r"\s+\d+\s", ln)]
    assert [r[0] for r in rows] == ["1", "2"]
    assert sum(int(r[2]) for r in rows) == N
    assert any(ln.strip().startswith("master: receiving") for ln in lines)

    p = cli("report", str(out), "--json")
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert set(info["workers"]) == {"1", "2"}
    assert all("spans" not in w for w in info["workers"].values())
    assert info["done"] == N and info["exit"] == 0 and info["runs"] == 1
    assert info["totals"]["tasks"] == N
    assert {"recv", "write", "wait"} <= set(info["master"])


def test_timeline_png_one_lane_per_worker(run, tmp_path):
    out, _p = run
    png = tmp_path / "timeline.png"
    p = cli("report", str(out), "--plot", str(png))
    assert p.returncode == 0, p.stderr
    assert f"timeline written to {png}" in p.stdout
    import matplotlib.image as mpimg

    img = mpimg.imread(str(png))
    assert img.shape[1] == 1100 and 250 <= img.shape[0] <= 600, img.shape
    bands = lanes(png, DONE_RGB)
    assert len(bands) == RANKS - 1, bands
    assert all(b - a >= 10 for a, b in bands)  # lanes readable, not hairlines


def test_progress_log_lines_when_not_a_tty(run):
    _out, p = run
    lines = [ln for ln in p.stderr.splitlines() if LOG_LINE.search(ln)]
    assert len(lines) >= 2, p.stderr
    got = [tuple(int(x) for x in LOG_LINE.search(ln).groups()) for ln in lines]
    assert all(total == N and failed == 0 for _d, total, failed in got)
    assert [d for d, _t, _f in got] == sorted(d for d, _t, _f in got)  # never goes back
    assert re.search(rf"progress: finished: {N}/{N} done, 0 failed in \d+s", p.stderr), p.stderr
    assert "%|" not in p.stderr  # no bar in a log file


# -- more runs: the bar, --quiet -------------------------------------------------------------------


def test_progress_bar_when_forced(tmp_path):
    p = gather(RANKS, "taskfuncs:out_of_order", tmp_path / "o", "--range", "6", "--progress", "bar", timeout=90)
    assert p.returncode == 0, show(p)
    bars = [ln for ln in p.stderr.splitlines() if "%|" in ln]  # tqdm's lines (\r-separated; text mode splits them)
    assert len(bars) >= 2 and "6/6" in bars[-1] and "task/s" in bars[-1], p.stderr
    assert "0 failed" in p.stderr
    assert not LOG_LINE.search(p.stderr)


def test_quiet_silences_progress_and_summary(tmp_path):
    p = gather(RANKS, "taskfuncs:out_of_order", tmp_path / "o", "--range", "6", "--progress", "log", "--quiet",
               timeout=90, extra_env={"MPIGATHER_PROGRESS_INTERVAL": "0.01"})
    assert p.returncode == 0, show(p)
    assert p.stdout == ""
    assert "progress" not in p.stderr and "%|" not in p.stderr, p.stderr
    assert " INFO " not in p.stderr, p.stderr  # --quiet means WARNING and up, unless --log-level says otherwise


# -- no MPI ----------------------------------------------------------------------------------------


def _info(n_workers: int, n_tasks: int, fail_every: int = 0) -> dict:
    workers = {}
    for r in range(1, n_workers + 1):
        t, spans = 0.01, []
        for k in range(n_tasks):
            d = 0.2 + 0.1 * ((r + k) % 3)
            bad = fail_every and (r + k) % fail_every == 0
            spans.append([f"{r}.{k}", t, d, "failed" if bad else "done"])
            t += d + 0.02 * (k % 2)
        workers[str(r)] = {"rank": r, "host": f"node{r:02d}", "compute": sum(s[2] for s in spans),
                           "send": 0.0, "idle": 0.0, "tasks": n_tasks, "wall": t + 0.05, "spans": spans}
    return {"out": "x.h5", "workers": workers, "wall": max(w["wall"] for w in workers.values()), "runs": 1}


def test_timeline_failed_tasks_and_many_workers(tmp_path):
    from mpigather.timeline import draw

    png = draw(_info(4, 6, fail_every=4), tmp_path / "a.png")
    assert len(lanes(png, DONE_RGB, min_px=30)) == 4
    assert lanes(png, FAILED_RGB, min_px=10), "failed tasks are not drawn in their color"

    png = draw(_info(40, 5), tmp_path / "b.png")
    bands = lanes(png, DONE_RGB, min_px=60)
    assert len(bands) == 40 and all(b - a >= 5 for a, b in bands)

    png = draw({"out": "empty.h5", "workers": {}}, tmp_path / "c.png")  # a run without stats still draws
    assert png.stat().st_size > 0


def _journal(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_report_takes_the_last_run_of_a_resumed_journal(tmp_path):
    out = tmp_path / "o.h5"
    stats = {"compute": 1.0, "send": 0.1, "idle": 0.2, "wall": 1.3, "tasks": 2, "bytes": 10, "host": "h", "spans": []}
    _journal(tmp_path / "o.h5.journal", [
        {"ev": "start", "total": 6}, {"ev": "done", "id": 0}, {"ev": "done", "id": 1},
        *[{"ev": "stats", "rank": r, **stats} for r in (1, 2, 3, 4)],
        {"ev": "end", "exit": 75, "interrupted": True, "wall": 2.0, "master": {}},
        {"ev": "start", "total": 6}, *[{"ev": "done", "id": i} for i in range(2, 6)],
        *[{"ev": "stats", "rank": r, **stats} for r in (1, 2)],
        {"ev": "end", "exit": 0, "interrupted": False, "wall": 1.5, "master": {"recv": 0.1}},
        {"ev": "start", "total": 6},  # a third start that died at once: no stats, no end
    ])
    info = R.collect(str(out))
    assert sorted(info["workers"]) == ["1", "2"]  # ranks 3 and 4 were in the first run only
    assert (info["runs"], info["run"], info["done"], info["exit"], info["wall"]) == (3, 2, 4, 0, 1.5)
    assert info["workers"]["1"]["busy_pct"] == pytest.approx(76.9, abs=0.1)
    assert "(run 2 of 3)" in R.text(info)


def test_report_errors(tmp_path):
    p = cli("report", str(tmp_path / "nothing.h5"))
    assert p.returncode == 2 and "no journal" in p.stderr and p.stdout == ""

    _journal(tmp_path / "o.h5.journal", [{"ev": "start", "total": 1}])
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from mpigather.cli import main\n"
            f"sys.exit(main(['report', {str(tmp_path / 'o.h5')!r}, '--plot', {str(tmp_path / 't.png')!r}]))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env())
    assert p.returncode == 2, p.stderr
    assert "pip install mpigather[plot]" in p.stderr and p.stdout == ""
    assert not (tmp_path / "t.png").exists()


def _summary(done: int, failed: int = 0, nbytes: int = 0, interrupted: bool = False) -> SimpleNamespace:
    return SimpleNamespace(done=done, failed={i: "x" for i in range(failed)}, bytes=nbytes, skipped=0,
                           interrupted=interrupted)


def test_progress_line_numbers():
    pr = Progress("log", 100, interval=1.0, done_before=20)
    t0 = pr._t0
    line = pr.line(_summary(30, failed=2, nbytes=3 << 30), t0 + 10)
    # 20 done before + 30 now; 32 ended in 10 s; 48 left at 3.2/s = 15 s
    assert "progress: 50/100 done (52%) [20 by earlier runs], 2 failed, 3.2 tasks/s" in line
    assert "3.00 GiB gathered (307.20 MiB/s), ETA 15s" in line
    assert LOG_LINE.search(line)
    assert "ETA ?" in pr.line(_summary(0), t0 + 1)
    assert "progress: 3/? done" in Progress("log", None, interval=1.0).line(_summary(3), t0 + 1)
    assert Progress("log", 10, interval=1.0).numbers(_summary(10), t0 + 1)["eta"] == 0.0


def test_progress_log_interval(monkeypatch):
    monkeypatch.setenv("MPIGATHER_PROGRESS_INTERVAL", "2.5")
    assert interval_from_env() == 2.5
    for bad in ("soon", "0", "-1"):
        monkeypatch.setenv("MPIGATHER_PROGRESS_INTERVAL", bad)
        assert interval_from_env() == 10.0
    monkeypatch.delenv("MPIGATHER_PROGRESS_INTERVAL")
    assert interval_from_env() == 10.0

    import logging

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            got.append(record.getMessage())

    got: list[str] = []
    logger = logging.getLogger("mpigather")
    keep = Keep(logging.INFO)
    logger.addHandler(keep)
    old = logger.level
    logger.setLevel(logging.INFO)  # setLevel, not the attribute: it clears the logger's cache
    try:
        pr = Progress("log", 10, interval=5.0)
        t0 = pr._t0
        for dt in (0.1, 1, 4.9, 5.1, 6, 9.9, 10.3):  # due at 5.1 and 10.3 only
            pr.update(None, _summary(int(dt)), t0 + dt)
        assert len(got) == 2 and all(LOG_LINE.search(m) for m in got), got
        pr.close()
        assert len(got) == 3 and got[-1].startswith("progress: finished: 10/10 done"), got
    finally:
        logger.removeHandler(keep)
        logger.setLevel(old)


def test_progress_bar_ends_on_the_final_count(monkeypatch):
    buf = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buf)
    pr = Progress("bar", 10, done_before=4)
    s = _summary(0)
    pr.update(None, s, pr._t0 + 1)
    s.done = 6  # the last tasks end between two refreshes
    pr.update(None, s, pr._t0 + 1.05)
    pr.close()
    assert "10/10" in buf.getvalue(), buf.getvalue()
    assert Progress.make("off", 10) is None
    assert Progress.make("auto", 10).mode == "log"  # stderr is not a terminal here
