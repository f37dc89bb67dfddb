"""The journal without MPI: group commit, torn last lines, and the state a resume reads."""

from __future__ import annotations

import json

import pytest

from mpigather.journal import Journal, journal_path, load_state, read_records


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
        j.done(i, 1, 1, 8, 123, 0.001, None)
    assert calls == []  # nothing durable yet: buffered
    assert j.commit() is True and len(calls) == 1  # one fsync covers all 100
    assert j.commit() is False and len(calls) == 1  # nothing new: no fsync
    j.close()
    st = load_state(tmp_path / "j")
    assert sorted(st.done) == list(range(100))


def test_torn_last_line_is_ignored_and_cut_before_appending(tmp_path):
    p = tmp_path / "j"
    j = Journal(p)
    j.write({"ev": "start", "time": 1.0, "total": 3})
    j.done(0, 1, 1, 8, 1, 0.1, None)
    j.done(1, 1, 2, 8, 2, 0.1, None)
    j.close()
    whole = p.read_bytes()
    p.write_bytes(whole + b'{"ev":"done","id":2,"att')  # killed mid-write
    st = load_state(p)
    assert sorted(st.done) == [0, 1]
    j = Journal(p, resume=True)  # cuts the torn tail
    assert p.read_bytes() == whole
    j.done(2, 1, 1, 8, 3, 0.1, None)
    j.close()
    assert sorted(load_state(p).done) == [0, 1, 2]
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
        {"ev": "dispatch", "rank": 1, "ids": [0, 1]},
        {"ev": "dispatch", "rank": 2, "ids": [2, 3]},
        {"ev": "done", "id": 0, "att": 1, "rank": 1, "bytes": 10, "crc": 5, "dur": 0.1, "t": 2.0},
        {"ev": "failed", "id": 2, "att": 1, "rank": 2, "error": "boom", "final": False},
        {"ev": "failed", "id": 2, "att": 2, "rank": 1, "error": "boom again", "final": True},
        # the job was killed here; the next run starts
        {"ev": "start", "time": 5.0, "total": 4},
        {"ev": "dispatch", "rank": 1, "ids": [1, 2]},
        {"ev": "done", "id": 2, "att": 3, "rank": 1, "bytes": 10, "crc": 6, "dur": 0.1, "t": 6.0},
    ]
    p.write_text("".join(json.dumps(r) + "\n" for r in lines))
    st = load_state(p)
    assert st.runs == 2
    assert sorted(st.done) == [0, 2]
    assert st.failed == {}  # 2 failed in the first run, then succeeded
    assert st.running == {1: 1}  # dispatched in the second run and not ended
    assert st.bytes_done == 20 and st.total == 4
