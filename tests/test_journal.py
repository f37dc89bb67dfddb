"""The journal without MPI: group commit, torn last lines, batched done records, and the state
a resume and a status read."""

from __future__ import annotations

import json

import pytest

from mpigather.journal import DoneSet, Journal, id_key, journal_path, load_state, read_records


def meta(i, **kw):
    return {"seq": i, "hash": 1000 + i, "attempt": 1, "rank": 1, "bytes": 8, "crc32c": 123, "duration": 0.001, **kw}


def test_journal_path_sits_next_to_the_output(tmp_path):
    assert journal_path(tmp_path / "x.h5") == tmp_path / "x.h5.journal"
    assert journal_path(str(tmp_path / "dir") + "/") == tmp_path / "dir.journal"


def test_group_commit_fsyncs_once_per_batch(tmp_path, monkeypatch):
    import os

    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd)))
    j = Journal(tmp_path / "j")
    for i in range(100):
        j.done([(i, meta(i))])
    assert calls == []  # nothing durable yet: buffered
    assert j.commit() is True and len(calls) == 1  # one fsync covers all 100
    assert j.commit() is False and len(calls) == 1  # nothing new: no fsync
    j.close()
    st = load_state(tmp_path / "j", want_done=True)
    assert st.n_done == 100 and all(i in st.done_set for i in range(100)) and 100 not in st.done_set


def test_a_batch_is_one_record_of_columns(tmp_path):
    j = Journal(tmp_path / "j")
    j.done([(i, meta(i)) for i in range(1000)])
    j.close()
    (rec,) = list(read_records(tmp_path / "j"))
    assert rec["ev"] == "done" and rec["id"] == list(range(1000)) and rec["h"][7] == 1007
    per_task = (tmp_path / "j").stat().st_size / 1000
    assert per_task < 60, per_task  # bytes per task in the journal


def test_torn_last_line_is_ignored_and_cut_before_appending(tmp_path):
    p = tmp_path / "j"
    j = Journal(p)
    j.start(total=3)
    j.done([(0, meta(0))])
    j.done([(1, meta(1))])
    j.close()
    whole = p.read_bytes()
    p.write_bytes(whole + b'{"ev":"done","id":[2],"att')  # killed mid-write
    assert load_state(p).n_done == 2
    j = Journal(p, resume=True)  # cuts the torn tail
    assert p.read_bytes() == whole
    j.done([(2, meta(2))])
    j.close()
    assert load_state(p).n_done == 3
    assert all(isinstance(r, dict) for r in read_records(p))


def test_corrupt_line_in_the_middle_is_an_error(tmp_path):
    p = tmp_path / "j"
    p.write_text('{"ev":"start","time":1}\nnot json\n{"ev":"end","time":2}\n')
    with pytest.raises(ValueError, match="line 2"):
        list(read_records(p))


def test_state_after_a_restart(tmp_path):
    p = tmp_path / "j"
    lines = [
        {"ev": "start", "time": 1.0, "total": 4},
        {"ev": "done", "id": [0], "seq": [0], "h": [5], "att": [1], "rank": [1], "bytes": [10], "crc": [5],
         "dur": [0.1], "t": 2.0},
        {"ev": "failed", "id": 2, "att": 1, "rank": 2, "error": "boom", "final": False},
        {"ev": "failed", "id": 2, "att": 2, "rank": 1, "error": "boom again", "final": True},
        {"ev": "workers", "time": 3.0, "running": 1, "queued": 0, "done": 1, "failed": 1, "table": {}},
        # the job was killed here; the next run starts
        {"ev": "start", "time": 5.0, "total": 4},
        # a record of an older version: one task, plain values
        {"ev": "done", "id": 2, "att": 3, "rank": 1, "bytes": 10, "crc": 6, "dur": 0.1, "t": 6.0},
    ]
    p.write_text("".join(json.dumps(r) + "\n" for r in lines))
    st = load_state(p, want_done=True)
    assert len(st.runs) == 2 and st.runs[0].done == 1 and st.runs[1].done == 1
    assert 0 in st.done_set and 2 in st.done_set and 1 not in st.done_set
    assert st.failed == {}  # 2 failed in the first run, then succeeded
    assert st.heartbeat is None  # the last run wrote none
    assert st.bytes_done == 20 and st.total == 4 and st.last_record_time == 6.0


def test_failures_of_an_earlier_run_are_pending_again_in_a_resumed_one(tmp_path):
    p = tmp_path / "j"
    j = Journal(p)
    j.start(total=2)
    j.error(0, "ValueError at f.py:1 in g", "boom", "a")
    j.failed(0, "a", final=True)
    j.end(exit=1)
    j.close()
    assert list(load_state(p).failed) == ["a"]
    j = Journal(p, resume=True)
    j.start(total=2)
    j.close()
    assert load_state(p).failed == {}


def test_reset_forgets_earlier_done_records(tmp_path):
    p = tmp_path / "j"
    j = Journal(p)
    j.done([(i, meta(i)) for i in range(5)])
    j.reset("output damaged")
    j.done([(9, meta(9))])
    j.close()
    st = load_state(p, want_done=True)
    assert st.n_done == 1 and 9 in st.done_set and 0 not in st.done_set


def test_done_set_keeps_the_last_hash_and_holds_12_bytes_a_task():
    ids = [f"run-{i}" for i in range(1000)] + ["run-5"]
    ds = DoneSet([id_key(t) for t in ids], list(range(1000)) + [77])
    assert len(ds) == 1000
    assert ds.lookup("run-5") == 77 and ds.lookup("run-6") == 6 and ds.lookup("nope") is None
    assert ds._keys.nbytes + ds._hashes.nbytes == 12 * 1000


def test_int_and_str_ids_never_share_a_key():
    assert id_key(17) != id_key("17")


def test_a_storm_of_identical_failures_is_one_error_and_a_few_small_records(tmp_path):
    """200,000 tasks that fail alike: one ``error`` record, then ranges of positions, batched by
    commit; the journal stays small, and status sees each failed position and the error once."""
    p = tmp_path / "j"
    j = Journal(p)
    j.start(total=200_000)
    text = "task 0 failed on rank 1:\nTraceback (most recent call last):\n  ...\nTypeError: bad operand\n" * 3
    j.error(0, "TypeError at f.py:3 in point", text, 0)
    for seq in range(200_000):
        j.failed(0, seq, seq, final=True)
        if seq % 400 == 399:  # a commit every 400 failures (the master commits every 20 ms)
            j.commit()
    j.failed(0, "child-1", -1, final=True)  # a task with no position (a fan-out's child)
    j.end(exit=1)
    j.close()
    assert p.stat().st_size < 100_000, p.stat().st_size
    st = load_state(p)
    assert st.n_failed == 200_001
    (e,) = st.distinct_errors()
    assert e["count"] == 200_001 and e["error"] == "TypeError: bad operand"
    assert e["positions"] == [[0, 200_000]] and e["ids"] == ["child-1"]


def test_failed_positions_done_in_a_later_run_are_no_longer_failed(tmp_path):
    p = tmp_path / "j"
    j = Journal(p)
    j.start(total=10)
    j.error(0, "E", "E: x", 0)
    for seq in range(10):
        j.failed(0, seq, seq)
    j.failed(0, 3, 3, final=False)  # a retried attempt does not make a failed task
    j.end(exit=1)
    j.close()
    assert load_state(p).n_failed == 10
    j = Journal(p, resume=True)  # a resume: what it finishes is done, what fails again is failed again
    j.start(total=10)
    j.error(0, "E", "E: x", 7)
    j.failed(0, 7, 7)
    j.close()
    st = load_state(p)
    assert st.n_failed == 1 and st.distinct_errors()[0]["positions"] == [[7, 1]]


def test_two_threads_writing_keep_every_record_whole(tmp_path):
    """The master's committer thread journals done batches and fsyncs while its loop writes
    failures and heartbeats: no record is torn or lost, and no failure is dropped."""
    import threading

    j = Journal(tmp_path / "j")
    n = 3000

    def loop_side():
        for i in range(n):
            j.failed(7, f"f{i}", 2 * n + i, final=True)
            if i % 50 == 0:
                j.workers({"workers": {}}, 0, 0, i, i)

    t = threading.Thread(target=loop_side)
    t.start()
    for i in range(n):
        j.done([(i, meta(i))])
        if i % 10 == 0:
            j.commit()
    t.join()
    j.close()
    recs = list(read_records(tmp_path / "j"))
    assert len(recs) == sum(1 for line in open(tmp_path / "j", "rb") if line.strip())  # every line parses
    st = load_state(tmp_path / "j", want_done=True)
    assert st.n_done == n and all(i in st.done_set for i in range(n))
    failed = sorted(p for r in recs if r["ev"] == "failed" for s0, k in r["pos"] for p in range(s0, s0 + k))
    assert failed == list(range(2 * n, 3 * n))


def test_a_record_written_during_the_fsync_is_not_blocked_and_the_next_commit_covers_it(tmp_path, monkeypatch):
    """The committer fsyncs outside the journal's lock: the loop's record written meanwhile
    goes through at once, and the next commit makes it durable (it is not taken as clean)."""
    import os
    import threading

    j = Journal(tmp_path / "j")
    real = os.fsync
    calls = []

    def fsync(fd):
        calls.append(fd)
        if len(calls) == 1:  # the loop writes a failure while the committer's fsync runs
            t = threading.Thread(target=j.failed, args=(3, "x", 5))
            t.start()
            t.join(5)
            assert not t.is_alive(), "the loop waited for the committer's fsync"
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    j.done([(0, meta(0))])
    assert j.commit() is True and len(calls) == 1
    assert j.commit() is True and len(calls) == 2  # the failure written during the first fsync
    assert j.commit() is False
    j.close()
    assert [r["ev"] for r in read_records(tmp_path / "j")] == ["done", "failed"]
