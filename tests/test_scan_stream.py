"""A task file is checked while its first tasks run: the order of events (a result recorded
before the check ended), bad lines and duplicates found late, resume checks after such a run,
and the JSON parser's fallback. The master and workers run in one process (loopback link)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mpigather
from mpigather import signals
from mpigather.api import master_run
from mpigather.config import make_options
from mpigather.errors import MasterFailed, UsageError
from mpigather.journal import load_state
from mpigather.loopback import LoopbackHub
from mpigather.tasks import JsonlSource, jsonl, lines, scan, scan_jsonl
from mpigather.worker import Worker

STREAM = 3000  # tasks checked before the run starts, here (the loopback runs tiny tasks slowly)
N = STREAM + 7000


@pytest.fixture(autouse=True)
def _stream_sooner(monkeypatch):
    monkeypatch.setattr(jsonl, "STREAM_AFTER", STREAM)
    monkeypatch.setattr(scan, "MAX_BLOCK", 1024)


@pytest.fixture(autouse=True)
def _no_stop_request():
    signals.reset()
    yield
    signals.reset()


def seed_value(task: dict) -> np.float64:
    return np.float64(task["seed"])


def write_tasks(path: Path, n: int = N, last: str | None = None) -> Path:
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"run-{i}", "seed": i}) + "\n")
        if last is not None:
            f.write(last + "\n")
    return path


def run_file(path: Path, out: Path, n_workers: int = 2, **opts: Any) -> Any:
    """A run of ``seed_value`` over a task file: the master here, workers in threads."""
    o = make_options(progress="off", **opts)
    links = LoopbackHub(n_workers + 1).links()

    def serve(link: Any) -> None:
        try:
            Worker(link, seed_value, o, str(out), decode="json").run()
        except MasterFailed:  # (a run stopped by bad input)
            pass

    threads = [threading.Thread(target=serve, args=(links[r],), daemon=True) for r in range(1, n_workers + 1)]
    for t in threads:
        t.start()
    try:
        return master_run(links[0], JsonlSource(path), out, o)
    finally:
        for t in threads:
            t.join(30)


def records(out: Path) -> list[dict]:
    jp = Path(str(out) + ".journal")
    return [json.loads(line) for line in jp.read_text().splitlines() if line.endswith("}")]


def check_all(out: Path, n: int, extra: int = 0) -> None:
    """Every task's row, in the output, holds its seed as the result, bit for bit."""
    with mpigather.load(out) as res:
        assert len(res) == n + extra
        c = res.columns()
    assert c["done"].all()
    assert list(c["id"][:n]) == [f"run-{i}" for i in range(n)]
    assert np.array_equal(c["value"][:n], np.arange(n, dtype=np.float64))


def hold_the_pass(monkeypatch: Any, out: Path, at: int = STREAM, patience: float = 60) -> list[int]:
    """Once ``at`` tasks are checked (the run may start), the pass waits (up to ``patience`` s)
    until the journal holds a result: the rest of the file is checked while tasks run, whatever
    the speed of each. Returns the list that gets how many tasks were checked when it waited,
    and whether the result came."""
    checked = scan.Scan._checked
    waited: list[Any] = []

    def gated(self: scan.Scan, keys: Any, lineno: int | None) -> None:
        checked(self, keys, lineno)
        if self.ready >= at and not waited:  # the run has started: hold the rest back
            jp = Path(str(out) + ".journal")
            end = time.monotonic() + patience
            came = False
            while time.monotonic() < end and not (came := jp.exists() and '"ev":"rows"' in jp.read_text()):
                time.sleep(0.01)
            waited.extend([self.ready, came])

    monkeypatch.setattr(scan.Scan, "_checked", gated)
    return waited


def test_a_result_is_recorded_before_the_check_of_the_file_ends(tmp_path, monkeypatch):
    """The pass may not end before the journal holds a result (it waits for one): a source that
    waited for the whole pass would never get there, and the order in the journal shows it."""
    tasks, out = write_tasks(tmp_path / "t.jsonl"), tmp_path / "o.h5"
    waited = hold_the_pass(monkeypatch, out)
    s = run_file(tasks, out)
    assert s.done == N and s.total == N and not s.failed
    evs = [r["ev"] for r in records(out)]
    assert evs.index("rows") < evs.index("source") < evs.index("end"), evs
    assert waited and waited[0] < N  # (the gate held the pass while lines were left to check)
    st = load_state(Path(str(out) + ".journal"))
    assert st.total == N and st.start["source"]["total"] == N  # a resume of this file need not check it again
    check_all(out, N)


def test_a_long_file_starts_once_its_first_block_is_checked(tmp_path, monkeypatch):
    """A file of more than STREAM_AFTER tasks does not wait for that many to be checked: held
    after its first block, the pass sees a result recorded (a run that waited for STREAM_AFTER
    tasks would have none), and the run ends with every task's value."""
    tasks, out = write_tasks(tmp_path / "t.jsonl"), tmp_path / "o.h5"
    waited = hold_the_pass(monkeypatch, out, at=1, patience=20)
    s = run_file(tasks, out)
    assert s.done == N and s.total == N and not s.failed
    assert waited[0] < STREAM and waited[1], waited  # a result came while one block was checked
    evs = [r["ev"] for r in records(out)]
    assert evs.index("start") < evs.index("rows") < evs.index("source") < evs.index("end"), evs
    check_all(out, N)


def test_a_file_of_up_to_stream_after_tasks_is_checked_whole_first(tmp_path, monkeypatch):
    """A bad last line of a file of STREAM_AFTER tasks fails the run before the output is made."""
    tasks, out = write_tasks(tmp_path / "t.jsonl", n=STREAM - 1, last='{"id": "x", "seed": '), tmp_path / "o.h5"
    with pytest.raises(UsageError, match=rf"line {STREAM}: invalid JSON"):
        run_file(tasks, out)
    assert not out.exists() and not Path(str(out) + ".journal").exists()


def test_more_tasks_than_counts_lines_that_are_not_blank(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_bytes(b'{"id": 1}\n\n  \r\n{"id": 2}\n \t\n{"id": 3}')  # (no newline at the end)
    assert [scan.more_tasks_than(p, n) for n in (0, 2, 3)] == [True, True, False]
    p.write_bytes(b"".join(b'{"id": %d}\n\n' % i for i in range(300_000)))  # (several reads)
    assert scan.more_tasks_than(p, 299_999) and not scan.more_tasks_than(p, 300_000)


def test_a_bad_line_late_in_the_file_stops_the_run_and_a_resume_finishes_it(tmp_path, monkeypatch):
    tasks, out = write_tasks(tmp_path / "t.jsonl", last='{"id": "x", "seed": '), tmp_path / "o.h5"
    hold_the_pass(monkeypatch, out)
    with pytest.raises(UsageError, match=rf"t.jsonl, line {N + 1}: invalid JSON"):
        run_file(tasks, out)
    monkeypatch.undo()
    monkeypatch.setattr(jsonl, "STREAM_AFTER", STREAM)
    evs = [r["ev"] for r in records(out)]
    assert "rows" in evs and "source" not in evs  # tasks ran, then the bad line stopped the run
    end = [r for r in records(out) if r["ev"] == "end"]
    assert end and end[-1]["exit"] == 2
    write_tasks(tasks, last='{"id": "x", "seed": -1}')  # fixed in place: the lines before it did not change
    s = run_file(tasks, out, resume=True)
    assert s.done + s.skipped == N + 1 and not s.failed
    check_all(out, N, extra=1)
    with mpigather.load(out) as res:
        assert float(res["x"]) == -1.0


def test_a_duplicate_id_late_in_the_file_stops_the_run(tmp_path, monkeypatch):
    tasks, out = write_tasks(tmp_path / "t.jsonl", last='{"id": "run-7", "seed": 99}'), tmp_path / "o.h5"
    hold_the_pass(monkeypatch, out)
    with pytest.raises(UsageError, match=rf"line {N + 1}: duplicate task id 'run-7' \(also on line 8\)"):
        run_file(tasks, out)
    rows = [(s0, k) for r in records(out) if r["ev"] == "rows" for s0, k in r["pos"]]
    assert rows  # found while tasks ran...
    assert all(s0 + k <= N for s0, k in rows)  # ...and the duplicate's line was never handed out


def test_a_resume_after_a_streamed_run_still_checks_each_done_task(tmp_path):
    tasks, out = write_tasks(tmp_path / "t.jsonl"), tmp_path / "o.h5"
    assert run_file(tasks, out).done == N
    text = tasks.read_text().replace('"seed": 6001}', '"seed": 6002}', 1)  # one done task's parameter
    tasks.write_text(text)
    with pytest.raises(UsageError, match="other parameters than when it was done"):
        run_file(tasks, out, resume=True)


@pytest.mark.parametrize("fast", [True, False])
def test_the_parser_and_its_fallback_accept_and_refuse_the_same_lines(tmp_path, monkeypatch, fast):
    if fast:
        pytest.importorskip("orjson")
        assert lines._FAST is not None
    else:
        monkeypatch.setattr(lines, "_FAST", None)
    ok = tmp_path / "ok.jsonl"
    ok.write_text('{"id": "a", "x": NaN}\n\n{"id": 123456789012345678901234567890}\n{"id": "\\ud800"}\n'
                  '{"x": 1}\n')
    assert scan_jsonl(ok) == 4
    for bad, msg in [('{"id": 1,', "line 2: invalid JSON"), ("[1, 2]", "line 2: expected a JSON object, got list"),
                     ("\ufeff{}", "line 2: invalid JSON"), ('{"id": true}', "ids must be str or int")]:
        p = tmp_path / "bad.jsonl"
        p.write_text('{"id": 0}\n' + bad + "\n", encoding="utf-8")
        with pytest.raises(UsageError, match=msg):
            scan_jsonl(p)
    p.write_bytes(b'{"id": 0}\n{"id": "\xff"}\n')  # not UTF-8
    with pytest.raises(UsageError, match="line 2: invalid JSON"):
        scan_jsonl(p)


def test_duplicates_are_found_across_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(scan, "FIRST_BLOCK", 3)
    monkeypatch.setattr(scan, "MAX_BLOCK", 8)
    monkeypatch.setattr(scan, "MAX_RUN", 16)  # (several runs of the largest size, each looked at)
    p = tmp_path / "t.jsonl"
    ids = list(range(100))
    p.write_text("".join(json.dumps({"id": i}) + "\n" for i in ids))
    assert scan_jsonl(p) == 100
    for first, again in [(0, 99), (50, 51), (97, 98), (3, 4)]:
        text = "".join(json.dumps({"id": first if i == again else i}) + "\n" for i in ids)
        p.write_text(text)
        with pytest.raises(UsageError, match=rf"line {again + 1}: duplicate task id {first} \(also on line"
                                             rf" {first + 1}\)"):
            scan_jsonl(p)


def test_a_pass_the_run_no_longer_needs_stops_at_its_next_block(tmp_path, monkeypatch):
    monkeypatch.setattr(scan, "FIRST_BLOCK", 10)
    p = write_tasks(tmp_path / "t.jsonl", n=100)
    s = scan.Scan(p)
    s.stop = True
    s.run()
    assert s.finished and s.ready == 0 and isinstance(s.error, UsageError) and s.result is None


def test_a_held_pass_waits_for_go_on_or_for_its_longest_hold(tmp_path, monkeypatch):
    """``hold``: the pass stops within its next 1024 lines until ``go_on``, or ``HOLD_MAX`` s."""
    p = write_tasks(tmp_path / "t.jsonl", n=5000)
    s = scan.Scan(p, hashes=False)
    s.hold()
    s.start()
    time.sleep(0.5)
    assert not s.finished and s.ready == 0  # (held at its first line)
    s.go_on()
    s.wait()
    assert s.result is not None and s.result[0] == 5000
    monkeypatch.setattr(scan, "HOLD_MAX", 0.2)
    s = scan.Scan(p, hashes=False)
    s.hold()
    t = time.monotonic()
    s.start().wait()
    assert s.result is not None and s.result[0] == 5000 and 0.2 <= time.monotonic() - t < 20
