"""In-process unit tests of the pieces under the loops: results, config, tasks, sinks, the
pipeline, the reader, the lock and the launch check. No MPI."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from crc32c import crc32c
from hypothesis import given, settings
from hypothesis import strategies as st

from mpigather import results as R
from mpigather.config import make_options, parse_size
from mpigather.errors import UnsupportedResultError, UsageError
from mpigather.journal import DoneSet, id_key
from mpigather.launch import check as check_launch
from mpigather.lock import OutputLock, probe
from mpigather.pipeline import ChunkPipeline
from mpigather.reader import load
from mpigather.sinks import layout as L
from mpigather.sinks import open_sink, open_writer
from mpigather.tasks import describe, iterable_tasks, scan_jsonl

# -- results ----------------------------------------------------------------------------------


def roundtrip(value):
    header, bufs = R.encode(value)
    raws = [np.frombuffer(bytearray(b), dtype=np.uint8) for b in bufs]
    assert R.checksum(raws) == header.crc
    return R.assemble(header, raws), header


def test_python_values_ride_in_the_header_without_parts():
    for v in (1.5, -7, "é", True, None):
        got, h = roundtrip(v)
        assert got == v and type(got) is type(v) and h.parts == () and h.nbytes == 0


def test_big_ints_and_odd_strings_are_pickled():
    for v in (1 << 70, "nul\0inside"):
        got, h = roundtrip(v)
        assert got == v and h.kind == "object"


def test_arrays_inside_an_object_travel_out_of_band_not_in_the_pickle():
    big = np.arange(100_000.0)
    got, h = roundtrip([big, "x", big * 2])
    assert h.kind == "object" and len(h.parts) == 3  # the pickle, then two raw buffers
    assert h.parts[0].nbytes < 1000  # the pickle itself is small: the arrays are not in it
    assert np.array_equal(got[0], big) and got[1] == "x" and np.array_equal(got[2], big * 2)


def test_dicts_nest_and_keep_their_values_kinds():
    v = {"field": np.ones((3, 4)), "energy": 1.5, "sub": {"n": 3, "b": b"x", "s": np.float32(1)}}
    got, h = roundtrip(v)
    assert h.kind == "dict" and [k for k, _, _ in h.tree] == ["energy", "field", "sub"]
    assert got["energy"] == 1.5 and np.array_equal(got["field"], np.ones((3, 4)))
    assert got["sub"]["b"] == b"x" and type(got["sub"]["s"]) is np.float32


def test_a_dict_whose_keys_cannot_name_files_is_pickled_whole():
    for v in ({1: 2}, {"a/b": 1}, {".hidden": 1}, {"x.npy": 1}, {"": 1}):
        got, h = roundtrip(v)
        assert h.kind == "object" and got == v


def test_an_unpicklable_value_names_its_type_and_where_it_sits():
    with pytest.raises(UnsupportedResultError, match=r"key 'lock'.*_thread.lock"):
        R.encode({"lock": threading.Lock()})


@settings(max_examples=100, deadline=None)
@given(st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(), st.binary()),
    lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(st.text(min_size=1, max_size=5), kids,
                                                                      max_size=4)),
    max_leaves=20))
def test_any_plain_value_comes_back_equal(value):
    got, _ = roundtrip(value)
    assert got == value


def test_chunks_never_span_parts():
    h, _ = R.encode({"a": np.zeros(10, np.uint8), "b": np.zeros(25, np.uint8)})
    assert R.chunk_plan(h, 8) == [(0, 0, 8), (0, 8, 2), (1, 0, 8), (1, 8, 8), (1, 16, 8), (1, 24, 1)]


# -- config, tasks, launch ---------------------------------------------------------------------


def test_sizes_and_option_precedence(monkeypatch):
    assert parse_size("64MiB") == 64 << 20 and parse_size("1.5k") == 1536
    with pytest.raises(UsageError, match="'lots' is not a size"):
        parse_size("lots")
    monkeypatch.setenv("MPIGATHER_PREFETCH", "5")
    assert make_options().prefetch == 5 and make_options(prefetch=3).prefetch == 3


def test_errors_name_options_as_the_user_wrote_them():
    with pytest.raises(UsageError, match=r"resume=True and overwrite=True"):
        make_options(resume=True, overwrite=True)
    with pytest.raises(UsageError, match=r"--resume and --overwrite"):
        make_options(resume=True, overwrite=True, interface="cli")


def test_task_file_scan_finds_duplicates_with_their_lines(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text("".join(json.dumps({"id": f"r{i % 7 if i == 9 else i}"}) + "\n" for i in range(10)))
    with pytest.raises(UsageError, match=r"line 10: duplicate task id 'r2' \(also on line 3\)"):
        scan_jsonl(p)


def test_task_file_scan_refuses_a_done_task_whose_parameters_changed(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text('{"id": "a", "x": 1}\n{"id": "b", "x": 2}\n')
    done = DoneSet([id_key("a")], [crc32c(b'{"id": "a", "x": 1}')], [0])
    assert scan_jsonl(p, done) == 2
    p.write_text('{"id": "a", "x": 5}\n{"id": "b", "x": 2}\n')
    with pytest.raises(UsageError, match=r"task 0: task 'a' has other parameters"):
        scan_jsonl(p, done)


def test_parameters_are_described_canonically():
    assert describe({"b": 1, "a": [1, 2]}) == describe({"a": [1, 2], "b": 1})
    text, h = describe(object)
    assert text.startswith("<class") and isinstance(h, int)


def test_iterable_tasks_from_a_dict_and_duplicates():
    assert list(iterable_tasks({"x": 1, "y": 2})) == [("x", 1, 0), ("y", 2, 1)]
    with pytest.raises(UsageError, match="duplicate task id 'a'"):
        list(iterable_tasks([{"id": "a"}, {"id": "a"}]))


def test_the_launch_check_knows_the_launchers():
    check_launch(1, {})
    check_launch(3, {"SLURM_STEP_NUM_TASKS": "3"})
    check_launch(1, {"SLURM_NTASKS": "64"})  # a batch script's own variable, not an srun step
    for env in ({"SLURM_STEP_NUM_TASKS": "3"}, {"SLURM_NTASKS": "3", "SLURM_STEP_ID": "0"},
                {"OMPI_COMM_WORLD_SIZE": "4"}, {"PMI_SIZE": "2"}):
        with pytest.raises(UsageError, match="srun --mpi=pmi2"):
            check_launch(1, env)
    check_launch(1, {"PMI_SIZE": "2", "MPIGATHER_CHECK_LAUNCH": "0"})


def test_ids_that_cannot_name_files_are_refused():
    for bad in ("", "a/b", ".x", "r.npy", 1.5, True, None):
        with pytest.raises(UsageError):
            L.check_id(bad)
    assert L.check_id(7) == "7" and L.check_id("run-7") == "run-7"


# -- sinks ------------------------------------------------------------------------------------


def meta(i, **kw):
    return {"seq": i, "rank": 1, "attempt": 1, "duration": 0.1, "bytes": 0, "crc32c": 0, "params": str(i),
            "kind": "array", **kw}


@pytest.mark.parametrize("name", ["o.h5", "odir"])
def test_a_streamed_result_finished_after_a_take_is_in_the_next_batch(tmp_path, name):
    """(A target opened before a take_ready and finished after it must not be lost.)"""
    sink = open_sink(tmp_path / name)
    h, bufs = R.encode(np.arange(100.0))
    t = sink.open(0, h, meta(0))
    sink.put(1, *R.encode(np.arange(3.0)), meta(1))
    first = sink.make_durable(sink.take_ready())
    t.write(0, 0, bufs[0])
    t.finish()
    second = sink.make_durable(sink.take_ready())
    assert [tid for tid, _ in first] == [1] and [tid for tid, _ in second] == [0]
    sink.close(complete=True)
    with load(tmp_path / name) as res:
        assert np.array_equal(res["0"], np.arange(100.0)) and list(res) == ["0", "1"]


def whole(n: int) -> DoneSet:
    """What a journal calls done: results 0..n-1, stored whole."""
    return DoneSet([id_key(i) for i in range(n)], [0] * n, list(range(n)))


@pytest.mark.parametrize("name", ["o.h5", "odir"])
def test_resume_undoes_a_commit_the_journal_never_recorded(tmp_path, name):
    out = tmp_path / name
    sink = open_sink(out)
    for i in range(4):
        sink.put(i, *R.encode(np.full(3, i)), meta(i))
    sink.make_durable(sink.take_ready())
    sink.close(complete=False)
    sink = open_sink(out, resume=True)
    assert sink.reconcile(whole(2))[0] == 2  # the journal holds only the first two
    sink.put(2, *R.encode(np.full(3, 20)), meta(2))
    sink.make_durable(sink.take_ready())
    sink.close(complete=True)
    with load(out) as res:
        assert list(res) == ["0", "1", "2"] and res["2"][0] == 20 and "3" not in res


@pytest.mark.parametrize("name", ["o.h5", "odir"])
def test_direct_mode_writers_and_adoption(tmp_path, name):
    out = tmp_path / name
    sink = open_sink(out)
    w = open_writer(out, rank=1)
    paths = [w.write(i, *R.encode({"a": np.full(2, i), "b": "s"}), {"rank": 1, "attempt": 1}) for i in range(3)]
    w.flush()
    for i, p in enumerate(paths):
        sink.adopt(i, R.encode({"a": np.full(2, i), "b": "s"})[0], p, meta(i, kind="dict"))
    sink.make_durable(sink.take_ready())
    sink.close(complete=True)
    with load(out) as res:
        assert [res[str(i)]["a"][0] for i in range(3)] == [0, 1, 2] and res["1"]["b"] == "s"


def test_small_npy_results_leave_no_descriptor_open(tmp_path):
    sink = open_sink(tmp_path / "odir")
    before = len(os.listdir("/proc/self/fd"))
    for i in range(500):
        sink.put(i, *R.encode(np.float64(i)), meta(i))
    assert len(os.listdir("/proc/self/fd")) - before <= 2
    sink.make_durable(sink.take_ready())
    sink.close(complete=True)


def test_the_memory_sink_hands_out_results_in_task_order():
    sink = open_sink(None)
    for i in (3, 1, 2):
        sink.put(i, *R.encode(i * 1.0), meta(i))
    sink.make_durable(sink.take_ready())
    assert list(sink.in_task_order()) == [1, 2, 3]


# -- pipeline, lock -------------------------------------------------------------------------


def test_the_pipeline_reuses_two_scratch_buffers():
    pipe = ChunkPipeline(1 << 10)
    a, sa = pipe.scratch(100)
    b, sb = pipe.scratch(100)
    c, sc = pipe.scratch(100)
    assert (sa, sb, sc) == (0, 1, 0) and np.shares_memory(a, c) and not np.shares_memory(a, b)
    pipe.close()


def test_the_lock_names_its_holder_and_status_can_tell_live_from_dead(tmp_path):
    out = tmp_path / "o.h5"
    assert probe(out) == (None, {})
    with OutputLock(out) as lock:
        lock.acquire(["mpigather", "run"])
        live, holder = probe(out)
        assert live and holder["pid"] == os.getpid()
        with pytest.raises(UsageError, match=rf"is being written by pid {os.getpid()} on .* wait for it or stop it"):
            OutputLock(out).acquire()
    assert probe(out)[0] is False
    again = OutputLock(out)
    again.acquire()  # free again
    again.release()


def test_a_damaged_hdf5_output_is_salvaged_into_a_fresh_file(tmp_path):
    """What a resume does when the killed run's leftovers cannot be removed: the journaled
    results (and their rows) are copied into a fresh file, the rest runs again."""
    out = tmp_path / "o.h5"
    sink = open_sink(out)
    for i in range(5):
        sink.put(i, *R.encode({"a": np.full(3, i), "s": "x"}), meta(i))
    sink.make_durable(sink.take_ready())
    sink.close(complete=False)
    sink = open_sink(out, resume=True)
    sink._damage = RuntimeError("as if /_staging could not be removed")
    assert sink.reconcile(whole(3))[0] == 3
    sink.put(3, *R.encode({"a": np.full(3, 30), "s": "y"}), meta(3))
    sink.make_durable(sink.take_ready())
    sink.close(complete=True)
    with load(out) as res:
        assert list(res) == ["0", "1", "2", "3"] and res["3"]["a"][0] == 30 and res["1"]["s"] == "x"


def test_hdf5_results_is_a_new_style_group_in_fresh_and_salvaged_files(tmp_path):
    """An old-style group keeps all names in one local heap, and past ~1.4 million results
    each link rewrote it (a 10M sweep stalled). Tracked creation order makes HDF5 build the
    group new-style (dense links), also in a file rebuilt by the salvage."""
    import h5py

    def new_style(path, groups=(L.RESULTS,)):
        with h5py.File(path, "r") as f:
            return all(f[g].id.get_create_plist().get_link_creation_order() for g in groups)

    out = tmp_path / "o.h5"
    sink = open_sink(out)
    sink.put(0, *R.encode(np.arange(3)), meta(0))
    sink.make_durable(sink.take_ready())
    sink.close(complete=False)
    assert new_style(out.with_name(out.name + L.PARTIAL))
    sink = open_sink(out, resume=True)
    sink._damage = RuntimeError("force the salvage")
    assert sink.reconcile(whole(1))[0] == 1
    assert new_style(out.with_name(out.name + L.PARTIAL))
    sink.close(complete=True)
    assert new_style(out)
    with load(out) as res:
        assert list(res) == ["0"] and res["0"].tolist() == [0, 1, 2]


def test_an_unfinished_hdf5_result_is_never_in_the_tree(tmp_path):
    """A result is an unlinked object until the commit that completes it links it: one
    discarded, or still streaming when the run is killed, leaves no name anywhere in the file;
    a finished one replaces what an earlier attempt left under its name; a /_staging group
    left by an older run is removed when the file is reopened."""
    import h5py

    out = tmp_path / "o.h5"
    partial = out.with_name(out.name + L.PARTIAL)
    sink = open_sink(out)
    h, bufs = R.encode(np.arange(1000.0))
    dropped = sink.open(0, h, meta(0))
    dropped.write(0, 0, bufs[0])
    dropped.discard()
    kept = sink.open(1, h, meta(1))
    kept.write(0, 0, bufs[0])
    kept.finish()
    streaming = sink.open(2, h, meta(2))  # the run is killed while this one streams
    streaming.write(0, 0, bufs[0])
    assert [tid for tid, _ in sink.make_durable(sink.take_ready())] == [1]
    sink.close(complete=False)

    def names(path):
        with h5py.File(path, "r") as f:
            found: list[str] = []
            f.visit(found.append)
            return sorted(found)

    assert names(partial) == [L.RESULTS, f"{L.RESULTS}/1", L.TASKS]
    with h5py.File(partial, "a") as f:  # as an older run left it
        f.create_group(L.STAGING).create_dataset("3.r1.a1", data=np.arange(3))
    sink = open_sink(out, resume=True)
    assert sink.reconcile(whole(0))[0] == 0  # the journal never called 1 done: it runs again
    again = sink.open(1, *R.encode(np.arange(5.0))[:1], meta(1))
    again.write(0, 0, R.encode(np.arange(5.0))[1][0])
    again.finish()
    sink.put(2, *R.encode(np.full(4, 2)), meta(2))
    sink.make_durable(sink.take_ready())
    sink.close(complete=True)
    assert names(out) == [L.RESULTS, f"{L.RESULTS}/1", f"{L.RESULTS}/2", L.TASKS]
    with load(out) as res:
        assert res["1"].tolist() == list(np.arange(5.0)) and res["2"].tolist() == [2] * 4


def test_peak_rss_is_this_processs_own_not_its_parents():
    """The master's peak memory (``Summary.master['peak_rss_mib']``) is its own address space's
    high-water mark: ru_maxrss carries a large parent's over into a child started with vfork and
    exec (a simulated master started late in the test suite reported pytest's 2.4 GiB)."""
    import subprocess
    import sys

    big = bytearray(600 << 20)
    for i in range(0, len(big), 4096):
        big[i] = 1
    code = "from mpigather.master.core import peak_rss_mib; print(peak_rss_mib())"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       cwd=str(Path(__file__).resolve().parent.parent))
    assert p.returncode == 0, p.stderr
    assert float(p.stdout) < 300, p.stdout
    del big


# -- waiting with more ranks than cores ---------------------------------------------------------

def test_crowding_reads_the_launchers_count_of_ranks_on_the_node():
    from mpigather.link import crowding

    assert crowding({}, cores=2) == 1.0  # no launcher says: polls as fast as ever
    assert crowding({"MPI_LOCALNRANKS": "129"}, cores=2) == 63.5  # MPICH's hydra
    assert crowding({"OMPI_COMM_WORLD_LOCAL_SIZE": "3"}, cores=2) == 1.0  # Open MPI; up to 2 per core: 1
    assert crowding({"OMPI_COMM_WORLD_LOCAL_SIZE": "4"}, cores=2) == 1.0
    assert crowding({"SLURM_STEP_TASKS_PER_NODE": "64(x2),3"}, cores=16) == 3.0  # srun: this node's count
    assert crowding({"MPI_LOCALNRANKS": "8"}, cores=16) == 1.0  # fewer ranks than cores: never below 1
    assert crowding({"MPI_LOCALNRANKS": "junk", "OMPI_COMM_WORLD_LOCAL_SIZE": "8"}, cores=2) == 3.0


def test_a_crowded_backoff_polls_that_many_times_less_often_up_to_its_cap():
    from mpigather.link import Backoff

    slept: list[float] = []
    for scale in (1.0, 16.0):
        b = Backoff(first=50e-6, cap=2e-3, spins=50, warm_cap=2.5e-4, scale=scale)
        b._sleep = slept.append
        n = 0
        while sum(slept) < 0.02:  # the first 20 ms of a wait
            b.sleep()
            n += 1
        slept.clear()
        if scale == 1.0:
            quick = n
        else:
            assert b.spins == 3 and b.first == 8e-4 and b.warm_cap == 2e-3
            assert n * 8 < quick, (n, quick)  # 132 polls in the first 20 ms uncrowded, 14 crowded

@pytest.mark.parametrize("line", ['{"id": "p1", "seed": 3, "x": 0.5}', "[1, 2]", "3", '"s"', " {\"a\": 1}",
                                  '{"a": 1} x', '{"a": 1}{"b": 2}', '{"a":', "NaN", '{"a": 1e400}', "", "{}",
                                  '{"a": "\\u00e9", "b": [true, null]}'])
def test_a_worker_parses_a_task_line_as_json_loads_does(line):
    """The worker's quick parse of a task file's line: the value json.loads gives, or its error."""
    from mpigather.worker.call import parse_line

    try:
        want: object = json.loads(line)
    except ValueError as e:
        with pytest.raises(ValueError) as got:
            parse_line(line)
        assert str(got.value) == str(e)
        return
    assert repr(parse_line(line)) == repr(want)


@settings(max_examples=40, deadline=None)
@given(st.permutations(range(12)), st.integers(1, 4))
def test_table_rows_written_as_points_equal_rows_written_run_by_run(tmp_path_factory, order, split):
    """Many workers' rows come one by one, out of order: ``write_runs`` writes a column of plain
    values as points in one call, strings and sub-arrays run by run; the columns equal writing
    each run alone, and rows no run names stay as they were."""
    import h5py

    from mpigather.sinks.table_base import Column
    from mpigather.sinks.table_hdf5 import H5Table

    class Cols:  # the part of a Layout that H5Table reads
        def columns(self):
            return [Column("id", "<i8"), Column("done", "|b1"), Column("x", "<f8"), Column("s", "str"),
                    Column("a", "<i4", (3,))]

        def to_json(self):
            return "{}"

    def values(ps):
        p = np.array(ps, dtype=np.int64)
        return {"id": p, "done": np.ones(len(p), bool), "x": p * 0.5, "s": np.array([f"t{i}" for i in p], object),
                "a": np.stack([p, p + 1, p + 2], axis=1).astype("<i4")}

    runs = []  # single rows, and a few runs of `split` consecutive positions, in a random order
    for k in order:
        if k % 3 == 0:
            runs.append((20 + 10 * k, values(range(20 + 10 * k, 20 + 10 * k + split))))
        runs.append((k, values([k])))
    got, want = ({}, {})
    for out, by_points in ((got, True), (want, False)):
        with h5py.File(tmp_path_factory.mktemp("t") / "t.h5", "w") as f:
            t = H5Table.create(f, Cols(), 5)  # rows past 5 make it grow
            if by_points:
                t.write_runs(runs)
            else:
                for start, v in runs:
                    t.write(start, v)
            out.update({name: ds[:] for name, ds in t.ds.items()})
    assert got.keys() == want.keys()
    for name in want:
        assert np.array_equal(got[name], want[name]), name
    assert got["done"].sum() == sum(len(v["id"]) for _s, v in runs)


def test_a_learning_backoff_skips_its_quick_polls_while_messages_come_far_apart(monkeypatch):
    import mpigather.link as LK

    clock = [0.0]
    monkeypatch.setattr(LK.time, "monotonic", lambda: clock[0])

    def polls_in(b: LK.Backoff, seconds: float) -> int:
        """Empty polls until ``seconds`` have passed after a message, on a fake clock."""
        slept: list[float] = []
        b._sleep = lambda s: (slept.append(s), clock.__setitem__(0, clock[0] + s))  # type: ignore[assignment]
        b.reset()
        n = 0
        start = clock[0]
        while clock[0] - start < seconds:
            b.sleep()
            n += 1
        return n

    b = LK.Backoff(warm_cap=1e-4, learn=True)
    burst = [polls_in(b, 0.002) for _ in range(5)]  # messages 2 ms apart: quick polls and a warm phase
    assert b.gap is not None and b.gap < 0.01 and min(burst) > 20, burst
    slow = [polls_in(b, 0.2) for _ in range(12)]  # 0.2 s apart (long tasks): no quick polls
    assert b.gap > LK.LEARN_GAPS * b.warm
    # 50 spins and 20 ms of 0.1 ms polls after each message before; now the sleeps just double to the cap
    assert slow[-1] < 110 < slow[0], slow
    again = [polls_in(b, 0.002) for _ in range(12)]  # a burst again: quick polls come back
    assert again[-1] > 20, again


def test_a_run_masters_backoff_polls_at_a_share_of_a_long_gap(monkeypatch):
    """``slow_share``: where messages come 0.2 s apart, sleeps grow to 5% of the gap (10 ms, under
    the 20 ms cap), so about 25 polls per gap instead of about 100 at the 2 ms cap; a burst brings
    the quick polls and the 2 ms cap back, and no sleep ever passes ``slow_cap``."""
    import mpigather.link as LK

    clock = [0.0]
    monkeypatch.setattr(LK.time, "monotonic", lambda: clock[0])
    slept: list[float] = []

    def polls_in(b: LK.Backoff, seconds: float) -> int:
        b._sleep = lambda s: (slept.append(s), clock.__setitem__(0, clock[0] + s))  # type: ignore[assignment]
        b.reset()
        n, start = 0, clock[0]
        while clock[0] - start < seconds:
            b.sleep()
            n += 1
        return n

    plain = LK.Backoff(warm_cap=1e-4, learn=True)
    p = [polls_in(plain, 0.2) for _ in range(12)]
    slow = LK.Backoff(warm_cap=1e-4, learn=True, slow_share=0.05, slow_cap=0.02)
    slept.clear()
    q = [polls_in(slow, 0.2) for _ in range(12)]
    assert p[-1] > 90 and q[-1] < 30, (p, q)
    assert max(slept) <= 0.01 + 1e-12 and max(slept[-20:]) > 0.009, max(slept)
    slept.clear()
    gaps = [polls_in(slow, 2.0) for _ in range(12)]  # 2 s apart: the cap holds
    assert max(slept) <= 0.02 + 1e-12 and gaps[-1] >= 100, gaps
    burst = [polls_in(slow, 0.002) for _ in range(20)]  # messages 2 ms apart again: quick polls
    slept.clear()
    assert burst[-1] > 20 and polls_in(slow, 0.05) > 25 and max(slept) <= 2e-3 + 1e-12, burst


def test_a_wake_ends_one_wait_and_is_used_up():
    from mpigather.link import Wake

    w = Wake()
    assert not w.is_set() and not w.wait(0.0) and not w.wait(0.001)
    w.set()
    w.set()  # twice: still one wake-up
    assert w.is_set() and w.wait(10.0) and not w.is_set() and not w.wait(0.0)
    w.set()
    w.clear()
    assert not w.wait(0.0)
    import threading
    import time

    t = threading.Timer(0.05, w.set)
    t.start()
    t0 = time.monotonic()
    assert w.wait(30.0) and time.monotonic() - t0 < 29  # ended by the set, not the timeout
    t.join()


def test_summary_behaves_as_the_dataclass_it_declares():
    """``Summary`` writes out ``__init__``, ``__repr__`` and ``__eq__`` (having @dataclass generate
    them cost 0.5 ms of every master's start): they do what @dataclass's would, field for field."""
    import dataclasses
    import inspect

    from mpigather.summary import Summary

    fields = dataclasses.fields(Summary)
    twin = dataclasses.make_dataclass("Summary", [
        (f.name, f.type, dataclasses.field(default=f.default, default_factory=f.default_factory, init=f.init,
                                           repr=f.repr, compare=f.compare)) for f in fields])
    ours, theirs = inspect.signature(Summary).parameters, inspect.signature(twin).parameters
    assert list(ours) == list(theirs) == [f.name for f in fields if f.init]
    for name, p in theirs.items():  # plain defaults alike; a factory's (dict, list) is None here
        assert ours[name].default == (p.default if p.default is not dataclasses.MISSING
                                      and not str(p.default).startswith("<factory>") else None), name
    blank, blank_twin = Summary(), twin()
    for f in fields:
        if f.init:
            assert getattr(blank, f.name) == getattr(blank_twin, f.name), f.name
    assert Summary().failed is not Summary().failed  # a new dict each, as a factory gives
    values = {"total": 4, "done": 3, "failed": {7: "boom"}, "lost": [2], "workers": {1: {"tasks": 3}},
              "out": "x.h5", "stopped_early": "too many", "wall": 1.5, "ctrl_c": True}
    s, t = Summary(**values), twin(**values)
    assert repr(s) == repr(t) and repr(blank) == repr(blank_twin)
    assert Summary(4, 3).done == twin(4, 3).done == 3  # positional, in field order
    assert s == Summary(**values) and s != Summary(**{**values, "done": 2}) and s != t
    assert s.fleet is not None  # made at first use, and never compared
    assert s == Summary(**values) and s.fleet.records is s.workers
    with pytest.raises(TypeError):
        hash(s)
    assert dataclasses.replace(s, done=1) == Summary(**{**values, "done": 1})
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        s.nope  # noqa: B018


def test_a_directory_tables_files_are_made_durable_while_a_migration_swaps_them(tmp_path, monkeypatch):
    """The commit's thread fsyncs the table's files while the master's thread may rewrite the
    table for a changed layout (the rewritten copy swapped in for the old directory). They take
    turns: without that, the fsync met a column or layout.json in the middle of the swap
    (FileNotFoundError, which failed a run under CI) within a few migrations here."""
    from mpigather.sinks.table_layout import Layout
    from mpigather.sinks.table_npy import NpyTable
    from mpigather.sinks.table_store import migrate

    monkeypatch.setenv("MPIGATHER_SYNCFS", "0")  # an fsync per file, by its path
    lay = Layout.empty()
    table = NpyTable.create(tmp_path, lay)
    errors: list[BaseException] = []
    stop = threading.Event()

    def durable() -> None:
        while not stop.is_set():
            try:
                table.make_durable()
            except OSError as e:
                errors.append(e)
                return

    t = threading.Thread(target=durable)
    t.start()
    try:
        for _ in range(100):
            migrate(table, lay, lay)  # a rewrite and a swap, every time
            if errors:
                break
    finally:
        stop.set()
        t.join()
    assert not errors, errors
    assert NpyTable.open(tmp_path) is not None
