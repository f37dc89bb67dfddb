"""Output and memory that stay bounded with thousands of workers, from synthetic goodbyes (no MPI).

A run of 10,000 workers is built from fake ``Bye`` stats (made by the real ``SpanLog``), fed to
the real ``Summary``, journaled as ``api._finish`` does, and read back by ``report``, the timeline
and ``status``: each output is checked for its size, its contents (the planted outliers are named)
and its time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from mpigather import report as R
from mpigather import status as S
from mpigather import workerstats as WS
from mpigather.journal import Journal, journal_path
from mpigather.summary import Summary

SLOW = (77, 4242)  # ranks whose tasks take 5x longer
FAILING = (13, 999, 5000)  # ranks with failed tasks
LOST = tuple(range(9000, 9015))  # 15 lost ranks
STUCK = {8000 + k: f"task-{k}" for k in range(12)}  # 12 stuck ranks


def bye(rank: int, n_workers: int, n_tasks: int = 8) -> dict:
    """A worker's goodbye, as ``Worker._bye`` makes it, for tasks of 0.1 s (0.5 s on SLOW ranks)."""
    log = WS.SpanLog(5000)
    log.origin = 0.0
    t, compute = 0.05, 0.0
    d = 0.5 if rank in SLOW else 0.1 + 0.001 * (rank % 7)
    for k in range(n_tasks):
        bad = rank in FAILING and k % 2 == 0
        log.append((f"{rank}.{k}", t, d, "failed" if bad else "done", "task"))
        compute += d
        t += d + 0.01
    stats = {"compute": compute, "send": 0.001 * n_tasks, "idle": t - compute, "tasks": n_tasks, "bytes": 100 * n_tasks,
             "wall": t + 0.01, "host": f"node{rank // 64:04d}"}
    stats.update(log.export(0.0, n_workers))
    return stats


def fleet_summary(n: int) -> Summary:
    s = Summary(total=8 * n, done=8 * n, wall=10.0)
    for rank in range(1, n + 1):
        if rank in LOST:
            s.workers.setdefault(rank, {"host": "gone", "lost": True, "tasks": 0})  # as the master does
        elif rank not in STUCK:
            s.add_worker(rank, bye(rank, n))
    s.lost = [r for r in LOST if r <= n]
    s.stuck = {r: t for r, t in STUCK.items() if r <= n}
    return s


@pytest.fixture(scope="module")
def big() -> Summary:
    return fleet_summary(10_000)


def write_journal(out: Path, s: Summary) -> Path:
    """The end of a run, as ``api._finish`` journals it."""
    j = Journal(journal_path(out))
    j.start(total=s.total, time=1.0)
    fleet = s.fleet_summary()
    for rank in WS.journaled(fleet, s.workers):
        j.stats(rank, s.workers[rank])
    j.fleet(fleet)
    j.end(done=s.done, failed=0, interrupted=False, exit=0, wall=s.wall, master={})
    j.close()
    return journal_path(out)


# -- the pieces -------------------------------------------------------------------------------------


def test_profile_keeps_the_mass_and_doubles_its_width():
    p = WS.Profile()
    p.add(0.005, 0.02)
    p.add(1.0, 0.5)
    assert p.width == WS.PROFILE_WIDTH and p.v.sum() == pytest.approx(0.52)
    p.add(100.0, 3.0)  # past 2.56 s: the width doubles until 103 s fits in 256 bins
    assert p.width == pytest.approx(0.64) and len(p.v) <= WS.PROFILE_BINS
    assert p.v.sum() == pytest.approx(3.52)
    assert p.v[int(100.0 / p.width)] > 0 and p.v[: int(99 / p.width)].sum() == pytest.approx(0.52)
    rng = np.random.default_rng(1)
    a, d = rng.uniform(0, 50, 1000), rng.uniform(0, 3, 1000)
    q = WS.Profile()
    q.add_many(a, d)
    assert q.v.sum() == pytest.approx(d.sum())
    r = WS.Profile()
    r.merge(2.0, q.width, q.v)  # shifted by 2 s: same mass, later
    assert r.v.sum() == pytest.approx(d.sum())
    assert np.argmax(np.cumsum(r.v) > d.sum() / 2) * r.width > np.argmax(np.cumsum(q.v) > d.sum() / 2) * q.width
    back = WS.Profile.of(q.export())
    assert back.width == q.width and np.allclose(back.v, q.v, atol=1e-4)


def test_profiles_on_the_same_bins_are_summed_first_with_the_same_result():
    """The master merges thousands of goodbyes' profiles; those on the same bins (t0 and width)
    are summed bin by bin first. The sum equals merging each alone, lists and arrays alike."""
    rng = np.random.default_rng(3)
    profs = [(0.0, 0.08, rng.uniform(0, 0.08, rng.integers(1, 250))) for _ in range(300)]
    profs += [(0.0, 0.16, list(rng.uniform(0, 0.16, 40))), (0.003, 0.08, rng.uniform(0, 0.08, 30)), (0.0, 0.08, [])]
    together, alone = WS.Profile(), WS.Profile()
    together.merge_many(profs)
    together.flush()
    for t0, w, v in profs:
        alone.merge(t0, w, v)
    assert together.width == alone.width and np.allclose(together.v, alone.v, rtol=1e-12, atol=1e-12)
    assert together.v.sum() == pytest.approx(sum(float(np.sum(v)) for _t, _w, v in profs))


def test_spanlog_keeps_the_last_spans_and_counts_every_one():
    log = WS.SpanLog(keep=100)
    log.origin = 0.0
    for k in range(1000):
        log.append((k, float(k), 0.5, "failed" if k % 10 == 0 else "done", "task"))
    assert len(log) < 200  # older spans are folded, a batch at a time
    out = log.export(0.0, n_workers=2)
    assert [int(s[0]) for s in out["spans"]] == list(range(900, 1000))
    assert out["failed"] == 100
    prof = WS.Profile.of(out["profile"])
    assert prof.v.sum() == pytest.approx(500.0, rel=1e-4)
    assert len(log.export(0.0, n_workers=WS.LANES_MAX + 1)["spans"]) == min(100, WS.SPANS_AT_SCALE)
    big = WS.SpanLog(keep=5000)
    for k in range(6000):
        big.append((k, float(k), 0.1, "done", "task"))
    assert len(big.export(0.0, n_workers=WS.LANES_MAX + 1)["spans"]) == WS.SPANS_AT_SCALE
    # many workers: about SPANS_TOTAL spans from all of them together (the master decodes each goodbye)
    assert len(big.export(0.0, n_workers=1_000)["spans"]) == WS.SPANS_TOTAL // 1_000 == 100
    assert len(big.export(0.0, n_workers=10_000)["spans"]) == WS.SPANS_TOTAL // 10_000 == WS.SPANS_MIN
    assert len(big.export(0.0, n_workers=100_000)["spans"]) == WS.SPANS_MIN
    assert isinstance(big.export(0.0, n_workers=10_000)["profile"]["v"], np.ndarray)  # pickled as one buffer


def test_percentiles():
    p = WS.percentiles([float(x) for x in range(1, 101)])
    assert (p["min"], p["p10"], p["p50"], p["p90"], p["max"], p["mean"]) == (1, 10, 50, 90, 100, 50.5)
    assert WS.percentiles([]) is None


# -- 10,000 workers ---------------------------------------------------------------------------------


def test_master_keeps_spans_of_a_bounded_number_of_workers(big):
    with_spans = [r for r, w in big.workers.items() if "spans" in w]
    assert len(with_spans) <= WS.LANES_MAX
    fleet = big.fleet_summary()
    assert set(SLOW) <= set(fleet["outliers"]["slowest"]) and set(with_spans) >= set(SLOW)
    assert set(FAILING) == set(fleet["outliers"]["failed"]) and set(with_spans) >= set(FAILING)
    assert fleet["n"] == 10_000 - len(STUCK)  # stuck workers never said goodbye
    assert fleet["counts"]["lost"] == len(LOST) and fleet["counts"]["stuck"] == len(STUCK)
    assert fleet["totals"]["tasks"] == 8 * (10_000 - len(LOST) - len(STUCK))
    assert fleet["totals"]["failed"] == 4 * len(FAILING)
    busy = WS.Profile.of(fleet["profiles"]["busy"])
    assert busy.v.sum() == pytest.approx(fleet["totals"]["compute"], rel=1e-3)
    assert len(json.dumps(fleet)) < 20_000


def test_summary_text_is_bounded(big):
    text = big.text()
    lines = text.splitlines()
    assert len(lines) <= 50, text
    assert "9988 workers on 158 host(s)" in text
    assert any(ln.split()[0] == str(SLOW[0]) for ln in lines if ln.strip() and ln.split()[0].isdigit())
    assert "15 worker(s) lost (the first 10): rank 9000, 9001" in text
    assert "12 worker(s) stuck (the first 10): rank 8000 (task 'task-0')" in text
    assert "3 worker(s) with failed tasks:" in text
    small = fleet_summary(3)
    assert small.text().splitlines()[1].split()[:2] == ["rank", "host"]  # a small run: a line per worker
    assert len(small.text().splitlines()) == 5


def test_journal_report_and_timeline_at_scale(big, tmp_path):
    out = tmp_path / "o.h5"
    jp = write_journal(out, big)
    assert jp.stat().st_size < 1_000_000  # 30 outliers' last 500 spans, and the fleet record
    t = time.perf_counter()
    info = R.collect(str(out))
    assert time.perf_counter() - t < 1.0
    assert len(info["workers"]) <= 4 * WS.OUTLIERS
    assert info["fleet"]["n"] == 9988 and info["totals"]["tasks"] == 8 * 9973
    text = R.text(info)
    assert len(text.splitlines()) <= 50, text
    assert "the 10 slowest workers (most seconds per task):" in text
    assert "15 worker(s) lost (the first 10): rank 9000, 9001" in text and "12 worker(s) stuck" in text
    assert "    busy " in text and "p50" in text

    from mpigather.timeline import draw

    png = tmp_path / "t.png"
    t = time.perf_counter()
    draw(info, png)
    assert time.perf_counter() - t < 60.0  # about 1 s on a quiet machine; what it draws is bounded (below)
    import matplotlib.image as mpimg

    img = mpimg.imread(str(png))[..., :3]
    assert img.shape[1] == 1100 and img.shape[0] < 2000
    done = np.abs(img - np.array([0x4C, 0x72, 0xB0]) / 255).max(axis=2) < 0.02
    failed = np.abs(img - np.array([0xDD, 0x44, 0x44]) / 255).max(axis=2) < 0.02
    assert done[: img.shape[0] // 4].sum() > 20_000  # the busy workers over time: a filled area on top
    assert failed.sum() > 50  # the failing outliers' lanes
    rows = done.sum(axis=1) >= 60
    bands = int(np.count_nonzero(rows[1:] & ~rows[:-1]))
    assert WS.OUTLIERS <= bands <= 3 * WS.OUTLIERS + 1  # the busy area, then one lane per outlier


def test_report_of_an_old_journal_with_many_workers(tmp_path):
    """A journal of an older version: every worker's stats with all its spans, no fleet record."""
    out = tmp_path / "o.h5"
    recs = [{"ev": "start", "total": 800}]
    for rank in range(1, 101):
        w = bye(rank, 2)
        w.pop("profile")
        w.pop("failed")
        recs.append({"ev": "stats", "rank": rank, **w})
    recs.append({"ev": "end", "exit": 0, "interrupted": False, "wall": 1.0, "master": {}})
    journal_path(out).write_text("".join(json.dumps(r) + "\n" for r in recs))
    info = R.collect(str(out))
    assert info["fleet"]["n"] == 100 and len(info["workers"]) == 100
    assert info["fleet"]["outliers"]["slowest"][0] == SLOW[0]
    assert info["totals"]["failed"] == 4 and info["workers"]["13"]["failed"] == 4
    assert len(R.text(info).splitlines()) <= 50
    from mpigather.timeline import draw

    assert draw(info, tmp_path / "t.png").stat().st_size > 0


# -- the heartbeat and status -----------------------------------------------------------------------


def table(n: int) -> dict[int, dict]:
    t = {r: {"state": "ok", "queued": 1, "seen_ago": 0.2 + 0.001 * (r % 100), "task": f"a-long-task-id-{r:08d}"}
         for r in range(1, n + 1)}
    if n > 4711:
        t[4711]["seen_ago"] = 42.0
        for r in (17, 18):
            t[r]["state"] = "suspect"
        t[19]["state"] = "lost"
    return t


def test_heartbeat_is_under_a_kilobyte_at_10000_workers(tmp_path):
    j = Journal(tmp_path / "x.journal")
    tb = table(10_000)
    t = time.perf_counter()
    j.workers(WS.heartbeat(tb), 9_990, 9_000, 123_456, 7, None)
    assert time.perf_counter() - t < 0.1
    j.close()
    rec = (tmp_path / "x.journal").read_bytes()
    assert len(rec) <= 1024, len(rec)
    hb = json.loads(rec)
    assert hb["n"] == 10_000 and hb["states"] == {"ok": 9997, "suspect": 2, "lost": 1}
    assert set(hb["table"]) == {"17", "18", "19", "4711", *{str(r) for r in range(99, 10_001, 100)[:4]}}
    assert hb["seen"]["max"] == 42.0 and hb["seen"]["p50"] == pytest.approx(0.25, abs=0.06)
    small = Journal(tmp_path / "y.journal")
    small.workers(WS.heartbeat(table(3)), 3, 0, 0, 0, None)
    small.close()
    assert set(json.loads((tmp_path / "y.journal").read_bytes())["table"]) == {"1", "2", "3"}  # as before


def test_status_of_a_live_run_of_10000_workers(tmp_path, monkeypatch):
    """Ten hours of heartbeats of 10,000 workers and 1M tasks done: status answers in under a
    second (it parses only the last heartbeat), in a few lines."""
    out = tmp_path / "o.h5"
    j = Journal(journal_path(out))
    j.start(total=2_000_000, time=time.time() - 3600, pid=1, host="h")
    j.close()
    jb = Journal(tmp_path / "hb.journal")
    jb.workers(WS.heartbeat(table(10_000)), 9_990, 9_000, 1_000_000, 0, None)
    jb.close()
    hb = (tmp_path / "hb.journal").read_bytes()
    rows = [{"ev": "rows", "t": time.time() - 3600 + k, "pos": [[k * 1000, 1000]], "h": [1], "att": [1], "rank": [1],
             "bytes": [8000], "crc": [0], "dur": [1.0]} for k in range(1000)]
    with open(journal_path(out), "ab") as f:
        for k in range(36_000):
            f.write(hb)
            if k < len(rows):
                f.write(json.dumps(rows[k]).encode() + b"\n")
    assert journal_path(out).stat().st_size < 40_000_000  # 10 hours: under 1 KB a second, and the done rows
    monkeypatch.setattr(S, "probe", lambda _out: (True, {"pid": 1, "host": "h"}))
    t = time.perf_counter()
    info = S.collect(str(out))
    took = time.perf_counter() - t
    assert took < 1.0, took
    assert info["n_workers"] == 10_000 and info["worker_states"]["ok"] == 9997
    assert len(info["workers"]) == WS.HB_OUTLIERS and "4711" in info["workers"]
    text = S.text(info)
    assert len(text.splitlines()) <= 16, text
    assert "10000 workers (9997 ok, 2 suspect, 1 lost); last heard from: p50 " in text
    assert "worker 4711: ok, last seen 4" in text


# -- the thresholds ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [WS.LIST_MAX, WS.LIST_MAX + 1, WS.LANES_MAX, WS.LANES_MAX + 1])
def test_where_texts_and_pictures_start_to_summarise(n, tmp_path):
    s = fleet_summary(n)
    listed = n <= WS.LIST_MAX
    assert ("  rank  host" in s.text().splitlines()[1]) is listed
    assert sum("spans" in w for w in s.workers.values()) == (n if n <= WS.LANES_MAX else
                                                             len(s.fleet.kept() & set(s.workers)))
    write_journal(tmp_path / "o.h5", s)
    info = R.collect(str(tmp_path / "o.h5"))
    assert len(info["workers"]) == (n if n <= WS.LANES_MAX else len(WS.journaled(info["fleet"], s.workers)))
    text = R.text(info)
    assert (f"{n} workers" in text) is not listed
    assert sum(1 for ln in text.splitlines() if ln.split() and ln.split()[0].isdigit()) <= max(n, 3 * WS.OUTLIERS)
    import matplotlib.image as mpimg

    from mpigather.timeline import draw

    img = mpimg.imread(str(draw(info, tmp_path / "t.png")))[..., :3]
    done = (np.abs(img - np.array([0x4C, 0x72, 0xB0]) / 255).max(axis=2) < 0.02).sum(axis=1) >= 60
    bands = int(np.count_nonzero(done[1:] & ~done[:-1])) + int(done[0])
    if n <= WS.LANES_MAX:
        assert bands == n  # a lane per worker
    else:
        assert bands <= 3 * WS.OUTLIERS + 1  # the busy area, and a lane per outlier


def test_the_masters_heartbeat_at_10000_workers_is_the_tables_without_building_it():
    """The master summarises its 10,000 workers in one pass (``master.workers.heartbeat``): the
    same counts, percentiles and outliers as ``workerstats.heartbeat`` of the whole table."""
    from mpigather.master.workers import heartbeat, worker_table
    from mpigather.scheduler import Scheduler

    s = Scheduler([(i, i) for i in range(30_000)], prefetch=2)
    for r in range(1, 10_001):
        s.worker_ready(r, 0.0)
    s.dispatch(0.0)
    for r in range(1, 10_001):
        s.seen(r, 1.0 + (r % 97) / 100)
    s.seen(4711, 0.5)  # silent longest
    now = 3.0
    t = time.perf_counter()
    part, running, queued, by_step = heartbeat(s, {}, False, now)
    fast = time.perf_counter() - t
    table, running2, queued2, _ = worker_table(s.workers(), {}, False, now)
    whole = WS.heartbeat(table)
    assert (running, queued, by_step) == (running2, queued2, {})
    assert part == whole, (part, whole)
    assert "4711" in {str(k) for k in part["table"]} and len(json.dumps(part)) < 1024
    print(f"\nheartbeat of 10,000 workers: {fast * 1e3:.1f} ms")


def test_a_few_intervals_land_in_the_same_bins_as_many():
    """A goodbye folds its few last spans one at a time (``FEW``): the bins equal numpy's path."""
    rng = np.random.default_rng(5)
    for trial in range(200):
        n = int(rng.integers(1, WS.FEW + 1))
        a = rng.uniform(-1, 30, n) if trial % 2 else rng.uniform(0, 2, n)
        d = rng.choice([0.0, 0.004, 0.01, 0.5, 3.0], n) * rng.uniform(0.5, 1.5, n)
        mass = None if trial % 3 else rng.uniform(-0.1, 2, n)
        a[0] = np.nan if trial % 17 == 0 else a[0]
        few, many = WS.Profile(), WS.Profile()
        few.add_many(a, d, mass)
        pad = (np.full(WS.FEW, 1.0), np.full(WS.FEW, 0.0), np.zeros(WS.FEW))  # no mass: adds nothing, forces numpy
        many.add_many(np.concatenate([a, pad[0]]), np.concatenate([d, pad[1]]),
                      np.concatenate([d if mass is None else mass, pad[2]]))
        assert few.width == many.width and len(few.v) == len(many.v), trial
        assert np.allclose(few.v, many.v, rtol=1e-9, atol=1e-12), trial
