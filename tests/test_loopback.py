"""The real master and real workers in one process, joined by the loopback link: streams,
trailers, checksums, leases, stealing, drains and failures, in milliseconds, without MPI."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import numpy as np
import pytest

from mpigather import messages as M
from mpigather import results as R
from mpigather import signals
from mpigather.api import master_run
from mpigather.config import make_options
from mpigather.errors import MPIGatherError, UsageError
from mpigather.loopback import LoopbackHub
from mpigather.tasks import ListSource, iterable_tasks
from mpigather.worker import Worker


@pytest.fixture(autouse=True)
def _no_stop_request():
    signals.reset()
    yield
    signals.reset()


def run_loopback(func, tasks, n_workers=2, out=None, worker_kw=None, **opts: Any):
    """Master and ``n_workers`` workers, each in a thread. Returns (summary, worker errors)."""
    o = make_options(progress="off", **opts)
    links = LoopbackHub(n_workers + 1).links()
    errors: list[BaseException] = []

    def serve(link):
        try:
            Worker(link, func, o, None if out is None else str(out), **(worker_kw or {})).run()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=serve, args=(links[r],), daemon=True) for r in range(1, n_workers + 1)]
    for t in threads:
        t.start()
    try:
        summary = master_run(links[0], ListSource(tasks), out, o, total=len(tasks))
    finally:
        for t in threads:
            t.join(10)
    return summary, errors


def square(x):
    return np.full(1000, x, dtype=np.int64) ** 2


def test_streamed_results_are_assembled_and_checked():
    s, errors = run_loopback(square, list(range(10)), chunk_size=1000, inline_max=100)
    assert not errors and s.done == 10 and not s.failed
    for i in range(10):
        assert np.array_equal(s.results[i], square(i))
    assert list(s.results) == list(range(10))  # task order


class ScriptedWorker:
    """Plays one worker's messages by hand, to send what a real worker never would."""

    def __init__(self, link):
        self.link = link

    def play(self, value, crc_delta=0, chunk=1000):
        self.link.send(M.Hello("host", 1), 0, M.CTRL)
        while (inc := self.link.poll(0)) is None:
            time.sleep(0.001)
        (blk, *_) = inc.obj().blocks
        tid = blk.tids[0]
        header, bufs = R.encode(value, with_crc=False)
        self.link.send(M.Results([M.Item(blk.bid, 0, tid, blk.attempt, header, 0.1, None, None)]), 0, M.CTRL)
        self.link.send_bufs(bufs[p][o : o + n] for p, o, n in R.chunk_plan(header, chunk))
        self.link.send(M.Trailer(tid, R.checksum(bufs) + crc_delta), 0, M.CTRL)
        while not isinstance(self._next(), (M.Stop, M.Abort)):
            pass
        self.link.send(M.Bye({}), 0, M.CTRL)

    def _next(self):
        while (inc := self.link.poll(0)) is None:
            time.sleep(0.001)
        return inc.obj()


def test_a_wrong_checksum_fails_the_task():
    links = LoopbackHub(2).links()
    t = threading.Thread(target=ScriptedWorker(links[1]).play, args=(np.arange(1234.0), 1), daemon=True)
    t.start()
    s = master_run(links[0], iterable_tasks([0]), None, make_options(progress="off", chunk_size=1000,
                                                                     inline_max=100))
    t.join(5)
    assert s.done == 0 and "checksum" in s.failed[0]


def test_any_picklable_value_comes_back_equal_and_arrays_travel_out_of_band():
    big = np.arange(200_000, dtype=np.float64)
    values = [1.5, 7, "text", True, None, [1, 2], (3, "a"), {"field": big, "energy": 1.5, "meta": {"n": 1}},
              [big, big * 2], np.float32(2.5), b"bytes", {1: "int keys"}, {"bad/key": 1}]
    s, errors = run_loopback(lambda i: values[i], list(range(len(values))), chunk_size=64 << 10)
    assert not errors and s.done == len(values), s.failed
    for i, v in enumerate(values):
        got = s.results[i]
        if isinstance(v, dict) and "field" in v:
            assert np.array_equal(got["field"], big) and got["energy"] == 1.5 and got["meta"] == {"n": 1}
        elif isinstance(v, list) and isinstance(v[0], np.ndarray):
            assert all(np.array_equal(a, b) for a, b in zip(got, v))
        else:
            assert got == v and type(got) is type(v), (i, got, v)


def test_an_unpicklable_result_fails_that_task_only_and_names_the_type():
    def f(i):
        return threading.Lock() if i == 2 else i

    s, errors = run_loopback(f, list(range(5)))
    assert not errors and s.done == 4 and list(s.failed) == [2]
    assert "_thread.lock" in s.failed[2] and "cannot be pickled" in s.failed[2]
    assert s.exit_code == 1


class Unloadable:
    def __reduce__(self):
        return (_boom, ())


def _boom():
    raise RuntimeError("cannot rebuild me")


def test_a_result_that_fails_to_unpickle_on_the_master_fails_that_task_only():
    s, errors = run_loopback(lambda i: Unloadable() if i == 1 else i, list(range(3)))
    assert not errors and sorted(s.results) == [0, 2] and "cannot rebuild me" in s.failed[1]


def test_exceptions_are_retried_then_reported_with_rank_and_traceback():
    seen: dict[int, int] = {}

    def flaky(i):
        seen[i] = seen.get(i, 0) + 1
        if i == 3 and seen[i] == 1:
            raise ValueError("first time")
        if i == 4:
            raise KeyboardInterrupt("raised by the task itself")
        return i

    s, errors = run_loopback(flaky, list(range(6)), retries=1)
    assert not errors and s.done == 5 and list(s.failed) == [4]
    assert "KeyboardInterrupt" in s.failed[4] and "failed on rank" in s.failed[4]


def test_a_task_past_its_lease_runs_elsewhere_and_the_late_result_is_dropped():
    ran: list[int] = []

    def slow_first(i):
        ran.append(i)
        if i == 0 and ran.count(0) == 1:
            time.sleep(1.0)
        return i

    t0 = time.monotonic()
    s, errors = run_loopback(slow_first, list(range(4)), timeout=0.3, prefetch=1, retries=1)
    assert not errors and s.done == 4 and not s.failed
    assert ran.count(0) == 2 and time.monotonic() - t0 < 5


def test_a_queued_task_moves_to_an_idle_worker_while_its_holder_computes():
    """Three equal tasks on three workers take one task's time, not two: the first worker to
    say hello does not keep the others' tasks. Tasks of 1 s and a bound of 1.8 s: a task that
    waited behind another makes it 2 s, and 0.8 s of slack holds when other jobs take both cores."""
    def wait(i):
        time.sleep(1.0)
        return i

    t0 = time.monotonic()
    s, errors = run_loopback(wait, list(range(3)), n_workers=3, prefetch=2)
    dt = time.monotonic() - t0
    assert not errors and s.done == 3
    assert sorted(w["tasks"] for w in s.workers.values()) == [1, 1, 1]
    assert dt < 1.8, f"{dt:.2f} s: a task waited behind another"


def test_a_stop_request_drains_and_leaves_the_rest_for_a_resume():
    def slow(i):
        if i == 2:
            signals.request_stop()
        time.sleep(0.05)
        return i

    s, errors = run_loopback(slow, list(range(50)), grace=5)
    assert not errors and s.interrupted and s.exit_code == 75
    assert 0 < s.done < 50 and not s.failed


def test_an_initializer_that_raises_ends_the_run_with_its_error():
    def init():
        raise RuntimeError("no licence server")

    with pytest.raises(MPIGatherError, match="no licence server"):
        run_loopback(square, list(range(4)), worker_kw={"initializer": init})


def test_file_outputs_in_both_modes(tmp_path):
    import mpigather

    values = [np.arange(i + 1.0) for i in range(6)] + [{"a": np.ones(3), "b": 2.5}, [1, "x"], 3.25]
    for mode in ("stream", "direct"):
        for out in (tmp_path / f"{mode}.h5", tmp_path / f"{mode}_dir"):
            s, errors = run_loopback(lambda i: values[i], list(range(len(values))), out=out, mode=mode,
                                     chunk_size=16, inline_max=8)
            assert not errors and s.done == len(values), s.failed
            with mpigather.load(out, allow_pickle=True) as res:
                assert list(res) == [str(i) for i in range(len(values))]
                for i in range(6):
                    assert np.array_equal(res[str(i)], values[i])
                assert res["6"]["b"] == 2.5 and np.array_equal(res["6"]["a"], np.ones(3))
                assert res["7"] == [1, "x"] and res["8"] == 3.25
                assert res.attrs("3")["params"] == 3
            assert mpigather.verify(out) == (len(values), [], [])


def fail_odd_first_time(task):
    if task["x"] % 2 and not task.get("again"):
        raise ValueError("odd")
    return task["x"] * 10


def test_resume_reruns_only_what_is_not_done_and_refuses_a_changed_task(tmp_path):
    out = tmp_path / "o.h5"
    tasks = [{"id": f"t{i}", "x": i} for i in range(6)]
    s, _ = run_loopback(fail_odd_first_time, tasks, out=out)
    assert s.done == 3 and sorted(s.failed) == ["t1", "t3", "t5"]
    changed = [dict(t, x=99) if t["id"] == "t2" else t for t in tasks]  # t2 was done with x=2
    with pytest.raises(UsageError, match=r"task 't2' has other parameters"):
        run_loopback(fail_odd_first_time, changed, out=out, resume=True)
    again = [dict(t, again=True) if t["x"] % 2 else t for t in tasks]  # only undone tasks changed
    s, _ = run_loopback(fail_odd_first_time, again, out=out, resume=True)
    assert s.done == 3 and s.skipped == 3 and not s.failed
    import mpigather

    with mpigather.load(out) as res:
        assert [res[f"t{i}"] for i in range(6)] == [10 * i for i in range(6)]


def test_positional_ids_with_a_changed_list_are_refused(tmp_path):
    out = tmp_path / "odir"
    s, _ = run_loopback(lambda x: x, [10, 20, 31], out=out, retries=0)
    assert s.done == 3
    with pytest.raises(UsageError, match=r"task 1 has other parameters"):
        run_loopback(lambda x: x, [10, 99, 31, 40], out=out, resume=True)


def test_loading_a_live_hdf5_run_says_how_to_read_it(tmp_path):
    import mpigather
    from mpigather.lock import OutputLock

    out = tmp_path / "o.h5"
    s, _ = run_loopback(lambda x: x, [1, 2], out=out)
    os.replace(out, str(out) + ".partial")  # as while a run is live
    with OutputLock(out) as lock:
        lock.acquire()
        with pytest.raises(UsageError, match=r"still being written .* status .* --wait"):
            mpigather.load(out)
    with pytest.raises(UsageError, match=r"was not completed.*--resume.*partial"):
        mpigather.load(out)
    with mpigather.load(str(out) + ".partial") as res:
        assert res["1"] == 2


def test_the_loop_never_fsyncs_the_journal_while_results_flow(tmp_path, monkeypatch):
    """Group commits journal and fsync on the committer thread: the loop's own journal fsyncs
    are the start record, the last commit (when the run waits for everything) and the close."""
    from mpigather.journal import Journal

    where: list[str] = []
    real = Journal.commit

    def commit(self):
        where.append(threading.current_thread().name)
        return real(self)

    monkeypatch.setattr(Journal, "commit", commit)

    def slow(i):
        time.sleep(0.01)
        return np.full(1000, i)

    s, errors = run_loopback(slow, list(range(40)), out=tmp_path / "o.h5")
    assert not errors and s.done == 40, s.failed
    on_loop = [w for w in where if w == threading.current_thread().name]
    assert len(on_loop) <= 3 and len(where) - len(on_loop) >= 3, where
