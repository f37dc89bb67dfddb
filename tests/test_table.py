"""The table of small results, end to end under mpiexec: bit for bit per dtype into HDF5, a
directory and memory; read back through mpigather, and through h5py or numpy alone, as an
analyst without mpigather would; results that do not fit the table; faults inside blocks of
tiny tasks; a sweep killed at a random point and resumed."""

from __future__ import annotations

import json
import random
import subprocess
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from helpers import done_ids, env, journal_records, kill_group, mpi_cmd, mpirun, show
from tablefuncs import expected_columns, mixed, record

import mpigather

pytestmark = pytest.mark.mpi

N = 300


def _same(a: np.ndarray, b: np.ndarray, what: str) -> None:
    """Equal bit for bit, dtype and shape included (strings: equal as Python strings)."""
    assert a.shape == b.shape, f"{what}: shape {a.shape} != {b.shape}"
    if b.dtype == object:
        assert [str(x) for x in a] == [str(x) for x in b], what
        return
    assert a.dtype == b.dtype, f"{what}: dtype {a.dtype} != {b.dtype}"
    assert a.tobytes() == b.tobytes(), f"{what}: values differ"


def _executions(d: Path) -> Counter[int]:
    log = d / "executions.log"
    return Counter(int(x.split()[0]) for x in log.read_text().splitlines()) if log.exists() else Counter()


LIB_RUN = """
import sys, numpy as np, mpigather
from tablefuncs import record, expected_columns
out = None if sys.argv[1] == "memory" else sys.argv[1]
s = mpigather.run(record, range({n}), out=out, progress="off", table=True)  # (its records hold small arrays)
if s is not None and out is None:  # the root: check the in-memory table here
    cols = s.results.columns()
    want = expected_columns({n})
    assert cols["done"].all() and list(cols["id"]) == list(range({n})), cols["id"][:5]
    for k, v in want.items():
        got = cols[k]
        assert got.shape == v.shape and (v.dtype == object or got.dtype == v.dtype), (k, got.dtype, v.dtype)
        assert (v.dtype == object and list(got) == list(v)) or got.tobytes() == v.tobytes(), k
    df = s.results.to_pandas()
    assert len(df) == {n} and df["f64"].to_numpy().tobytes() == want["f64"].tobytes()
    got, exp = s.results[7], record(7)
    assert got.keys() == exp.keys() and got["f64"] == exp["f64"] and got["name"] == exp["name"], got
    assert np.asarray(got["sub"]["m"]).tobytes() == exp["sub"]["m"].tobytes(), got
    print("MEMORY-TABLE-OK", sorted(cols))
"""


@pytest.mark.parametrize("sink", ["h5", "dir", "memory"])
def test_every_dtype_round_trips_bit_for_bit(tmp_path, sink):
    out = {"h5": tmp_path / "t.h5", "dir": tmp_path / "t.d", "memory": "memory"}[sink]
    p = mpirun(3, ["-c", LIB_RUN.format(n=N), str(out)], timeout=120)
    assert p.returncode == 0, show(p)
    if sink == "memory":
        assert "MEMORY-TABLE-OK" in p.stdout, show(p)
        return
    want = expected_columns(N)
    with mpigather.load(out) as res:
        cols = res.columns(meta=True)
        assert cols["done"].all() and list(cols["id"]) == list(range(N))
        for k, v in want.items():
            _same(cols[k], v, f"columns()[{k!r}]")
        assert set(cols) == {"id", "done", *want, "meta/rank", "meta/attempt", "meta/duration"}
        assert set(cols["meta/rank"]) <= {1, 2} and (cols["meta/attempt"] == 1).all()
        df = res.to_pandas()
        assert list(df.columns[:1]) == ["id"] and len(df) == N
        _same(df["f64"].to_numpy(), want["f64"], "to_pandas f64")
        _same(df["i8"].to_numpy(), want["i8"], "to_pandas i8")
        # row by row, a result comes back as the task returned it
        for i in (0, 7, N - 1):
            got, exp = res[i], record(i)
            assert got.keys() == exp.keys()
            for k in ("f64", "i64", "flag", "name"):
                assert got[k] == exp[k] and type(got[k]) is type(exp[k]), (i, k, got[k], exp[k])
            _same(np.asarray(got["vec"]), exp["vec"], "res[i]['vec']")
            _same(np.asarray(got["sub"]["m"]), exp["sub"]["m"], "res[i]['sub']['m']")
    assert mpigather.verify(out)[1:] == ([], [])
    # without mpigather: one line of h5py, or of numpy, per column
    if sink == "h5":
        import h5py

        with h5py.File(out, "r") as f:
            _same(f["table/result/f64"][:], want["f64"], "h5py f64")
            _same(f["table/result/sub/m"][:], want["sub/m"], "h5py sub/m")
            _same(f["table/result/u16"][:], want["u16"], "h5py u16")
            assert f["table/done"][:].all() and f["table/id"][:].tolist() == list(range(N))
            names = f["table/result/name"].asstr()[:] if f["table/result/name"].dtype.kind == "O" else \
                np.char.decode(f["table/result/name"][:])
            assert list(names) == list(want["name"])
    else:
        _same(np.load(out / "_table" / "result" / "f64.npy"), want["f64"], "np.load f64")
        _same(np.load(out / "_table" / "result" / "sub" / "m.npy"), want["sub/m"], "np.load sub/m")
        assert np.load(out / "_table" / "done.npy").all()
        assert np.load(out / "_table" / "id.npy").tolist() == list(range(N))


@pytest.mark.parametrize("sink", ["h5", "dir"])
def test_records_of_other_keys_are_rows_too_and_an_array_is_whole(tmp_path, sink):
    """Records with an extra key and a bare string are rows of the one table (the columns are the
    union of the fields, a has/ mask where some rows lack one); the array is /results/5."""
    out = tmp_path / ("m.h5" if sink == "h5" else "m.d")
    n = 60
    p = mpirun(3, ["-m", "mpigather", "run", "tablefuncs:mixed", "--range", str(n), "--out", str(out),
                   "--progress", "off"], timeout=120)
    assert p.returncode == 0, show(p)
    extra = [i for i in range(n) if i % 10 == 3]
    with mpigather.load(out) as res:
        assert len(res) == n
        for i in range(n):
            got, want = res[i], mixed(i)
            if isinstance(want, np.ndarray):
                _same(np.asarray(got), want, f"task {i}")
            else:
                assert got == want and type(got) is type(want), (i, got, want)
        cols = res.columns()
        assert [i for i in range(n) if not cols["done"][i]] == [5]
        assert sorted(cols) == ["done", "energy", "extra", "id", "value"]
        rows = [i for i in range(n) if i not in (5, 8)]
        assert cols["energy"].mask.tolist() == [i in (5, 8) for i in range(n)]
        assert cols["energy"].compressed().tolist() == [float(i) for i in rows]
        assert cols["extra"].compressed().tolist() == extra and cols["value"].compressed().tolist() == ["not a row"]
        df = res.to_pandas()
        assert len(df) == n - 1 and df["extra"].dtype == "Int64" and int(df["extra"].isna().sum()) == n - 1 - 6
    assert mpigather.verify(out)[1:] == ([], [])
    if sink == "h5":
        import h5py

        with h5py.File(out, "r") as f:
            _same(f["results/5"][:], mixed(5), "h5py results/5")
            assert f["table/has/result/extra"][:].tolist() == [i in extra for i in range(n)]
            assert "table/has/result/energy" in f and f["table/result/extra"].dtype == np.int64
    else:
        _same(np.load(out / "5.npy"), mixed(5), "np.load 5.npy")
        assert np.load(out / "_table" / "has" / "result" / "extra.npy").tolist() == [i in extra for i in range(n)]


def test_a_hang_and_a_failure_inside_blocks_of_tiny_tasks(tmp_path):
    """Task 37 hangs in C holding the GIL (its block's worker cannot even answer), task 61 raises
    once: both are retried elsewhere; every other task of their blocks is done (a few run twice:
    those the hung worker finished but could not yet send), and the table is exact."""
    out = tmp_path / "f.h5"
    n = 400
    t0 = time.monotonic()
    p = mpirun(3, ["-m", "mpigather", "run", "tablefuncs:flaky", "--range", str(n), "--out", str(out),
                   "--progress", "off", "--timeout", "3", "--retries", "1"],
               timeout=120, extra_env={"MPIGATHER_TEST_DIR": str(tmp_path)})
    dt = time.monotonic() - t0
    assert p.returncode == 0, show(p)
    with mpigather.load(out) as res:
        cols = res.columns(meta=True)
        assert cols["done"].all()
        _same(cols["v"], np.arange(n, dtype=np.float64), "v")
        _same(cols["sq"], np.arange(n, dtype=np.int64) ** 2, "sq")
        # 61 may have waited behind 37 on the hung worker: the master cannot know that it never
        # started there, so it counts that hand-out as an attempt too
        assert cols["meta/attempt"][37] == 2 and cols["meta/attempt"][61] in (2, 3)
    ex = _executions(tmp_path)
    assert ex[37] == 2 and ex[61] == 2, (ex[37], ex[61])
    twice = sorted(i for i in range(n) if i not in (37, 61) and ex[i] > 1)
    assert all(ex[i] >= 1 for i in range(n)) and all(ex[i] <= 2 for i in range(n)), ex.most_common(3)
    assert len(twice) <= 40, f"{len(twice)} tasks ran twice: {twice}"
    print(f"\nTABLE faults in blocks: exit 0 in {dt:.1f} s; ran twice besides 37 and 61: {twice}")


def _write_tasks(path: Path, n: int) -> None:
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"p{i}", "seed": i, "x": i / 1000}) + "\n")


def _expected_sweep(n: int) -> dict[str, np.ndarray]:
    seeds = np.arange(n)
    return {"energy": np.array([(i / 1000) * i for i in range(n)], dtype=np.float64),
            "iters": (seeds % 11).astype(np.int64), "converged": seeds % 5 != 0,
            "seed": seeds.astype(np.int64), "x": np.array([i / 1000 for i in range(n)], dtype=np.float64)}


@pytest.mark.parametrize("sink", ["h5", "dir"])
def test_a_sweep_killed_at_random_points_resumes_exactly(tmp_path, sink):
    """kill -9 of the whole job at a random moment, twice, then --resume to the end: the table is
    what one uninterrupted run gives, in task order, and no task the journal called done ran again."""
    n = 3000
    tasks = tmp_path / "tasks.jsonl"
    _write_tasks(tasks, n)
    out = tmp_path / ("s.h5" if sink == "h5" else "s.d")
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    args = ["-m", "mpigather", "run", "tablefuncs:point", "--tasks", str(tasks), "--out", str(out),
            "--progress", "off"]
    e = env()
    e["MPIGATHER_TEST_DIR"] = str(tmp_path)
    kills = []
    for k in range(2):
        target = rng.randrange(n // 10, n * 8 // 10)
        cmd = mpi_cmd(3, args + (["--resume"] if k else []))
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e,
                                start_new_session=True)
        end = time.monotonic() + 90
        try:
            while time.monotonic() < end and proc.poll() is None:
                if len(done_ids(out)) >= target:
                    break
                time.sleep(0.002)
        finally:
            kill_group(proc.pid)
            proc.communicate(timeout=30)
        kills.append((target, len(done_ids(out))))
    done_before = set(done_ids(out))
    runs_before = _executions(tmp_path)
    p = mpirun(3, args + ["--resume"], timeout=120, extra_env={"MPIGATHER_TEST_DIR": str(tmp_path)})
    assert p.returncode == 0, f"seed {seed}\n{show(p)}"
    want = _expected_sweep(n)
    with mpigather.load(out) as res:
        cols = res.columns()
        assert cols["done"].all(), f"seed {seed}"
        assert list(cols["id"]) == [f"p{i}" for i in range(n)], f"seed {seed}"
        for k, v in want.items():
            _same(cols[k], v, f"{k} (seed {seed})")
    assert mpigather.verify(out)[1:] == ([], [])
    ex = _executions(tmp_path)
    again = [i for i in done_before if ex[i] > runs_before[i]]
    assert not again, f"seed {seed}: tasks done before the last kill ran again: {again[:10]}"
    assert all(ex[i] >= 1 for i in range(n))
    recs = journal_records(out)
    print(f"\nTABLE kill/resume {sink} (seed {seed}): killed at {kills} done;"
          f" {sum(ex.values())} executions for {n} tasks; journal {len(recs)} records")


CLASH = """
import mpigather
def f(task):
    return {"id": task["seed"] * 2, "x": -task["x"], "done": False, "e": 1.5}
tasks = [{"id": f"t{i}", "seed": i, "x": i / 4, "e": "param"} for i in range(6)]
s = mpigather.run(f, tasks, out=None, progress="off")
if s is not None:
    cols = s.results.columns()
    print("COLUMNS", sorted(cols))
    assert list(cols["id"]) == [f"t{i}" for i in range(6)]
    assert list(cols["result/id"]) == [2 * i for i in range(6)]
    assert list(cols["x"]) == [-i / 4 for i in range(6)] and list(cols["params/x"]) == [i / 4 for i in range(6)]
    assert list(cols["params/e"]) == ["param"] * 6 and list(cols["seed"]) == list(range(6))
    assert not cols["result/done"].any() and cols["done"].all()
    print("CLASH-OK")
"""


def test_column_names_when_fields_and_parameters_clash():
    """A field named ``id`` or ``done`` is ``result/<name>``; a parameter named like a field is
    ``params/<key>``; the others keep their names."""
    p = mpirun(2, ["-c", CLASH], timeout=120)
    assert p.returncode == 0 and "CLASH-OK" in p.stdout, show(p)


def test_to_pandas_without_pandas_says_how_to_get_it(monkeypatch):
    import sys

    from mpigather.reader_table import table_frame

    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas raises ImportError
    with pytest.raises(ImportError, match="pip install pandas"):
        table_frame({"id": np.arange(3), "done": np.ones(3, bool)})
