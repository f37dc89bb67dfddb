"""Where a result is stored depends on the results and the run's options, never on which one
reached the master first: runs of the same tasks in shuffled arrival orders give the same
paths, dtypes and shapes, into HDF5, a directory and memory; a killed and resumed run gives
the layout of an uninterrupted one. The rule itself (union of fields, type promotion, JSON for
other mixes) is checked without MPI, over permutations."""

from __future__ import annotations

import itertools
import json
import random
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import done_ids, env, kill_group, mpi_cmd, mpirun, show
from tablefuncs import LENGTHS, optional, spectra, varying

import mpigather
from mpigather import messages as M
from mpigather import table_schema as T
from mpigather.sinks import open_sink
from mpigather.sinks.table_layout import resolve, token

N = 60


def layout_of(out: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Every stored dataset or .npy file of an output (but the run's own records): path -> (dtype, shape)."""
    got: dict[str, tuple[str, tuple[int, ...]]] = {}
    if out.suffix == ".h5":
        import h5py

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset) and name.split("/")[0] in ("results", "table"):
                got[name] = (obj.dtype.str, obj.shape)

        with h5py.File(out, "r") as f:
            f.visititems(visit)
            for name in f.get("results", {}):  # (visititems does not follow links)
                obj = f["results"][name]
                if isinstance(obj, h5py.Dataset):
                    got[f"results/{name}"] = (obj.dtype.str, obj.shape)
        return got
    for p in sorted(out.rglob("*")):
        rel = str(p.relative_to(out))
        if p.is_dir() or rel.startswith(("_tasks", "_mpigather")):
            continue
        if p.suffix == ".npy":
            a = np.load(p, mmap_mode="r")
            got[rel] = (a.dtype.str, a.shape)
        else:
            got[rel] = ("", ())
    return got


def _run(func: str, out: Path, *extra: str) -> None:
    p = mpirun(3, ["-m", "mpigather", "run", func, "--range", str(N), "--out", str(out), "--progress", "off",
                   *extra], timeout=120)
    assert p.returncode == 0, show(p)


def _arrival(out: Path) -> list[int]:
    return [int(x) for x in done_ids(out)]


@pytest.mark.mpi
@pytest.mark.parametrize("sink", ["h5", "dir"])
def test_arrays_of_varying_length_are_results_in_any_arrival_order(tmp_path, sink):
    layouts, orders = [], []
    for k in range(3):
        out = tmp_path / (f"a{k}.h5" if sink == "h5" else f"a{k}")
        _run("tablefuncs:varying", out)
        layouts.append(layout_of(out))
        orders.append(_arrival(out))
        want = {(f"results/{i}" if sink == "h5" else f"{i}.npy"): ("<i8", (LENGTHS[i % len(LENGTHS)],))
                for i in range(N)}
        assert layouts[-1] == want, f"run {k}: {sorted(set(layouts[-1]) ^ set(want))[:10]}"
        if sink == "h5":
            import h5py

            with h5py.File(out, "r") as f:
                for i in range(N):
                    assert f[f"results/{i}"][:].tolist() == varying(i).tolist()
        with mpigather.load(out) as res:
            assert res.columns() == {} and all(np.array_equal(res[i], varying(i)) for i in range(N))
        assert mpigather.verify(out)[1:] == ([], [])
    assert layouts[0] == layouts[1] == layouts[2]
    print(f"\nLAYOUT arrays {sink}: {len(set(map(tuple, orders)))} distinct arrival orders of 3")


@pytest.mark.mpi
@pytest.mark.parametrize("sink", ["h5", "dir"])
def test_records_with_an_optional_field_in_any_arrival_order(tmp_path, sink):
    layouts, orders = [], []
    err = [i for i in range(N) if i % 4 == 0]
    for k in range(3):
        out = tmp_path / (f"r{k}.h5" if sink == "h5" else f"r{k}")
        _run("tablefuncs:optional", out)
        layouts.append(layout_of(out))
        orders.append(_arrival(out))
        with mpigather.load(out) as res:
            cols = res.columns()
            assert cols["done"].all() and sorted(cols) == ["converged", "done", "energy", "error", "id"]
            assert cols["energy"].dtype == np.float64 and cols["energy"].tolist() == [
                float(optional(i)["energy"]) for i in range(N)]
            assert cols["error"].mask.tolist() == [i not in err for i in range(N)]
            assert cols["error"].compressed().tolist() == [f"warning {i}" for i in err]
            assert res[4] == optional(4) and res[1] == optional(1) and "error" not in res[1]
            df = res.to_pandas()
            assert df["error"].isna().sum() == N - len(err) and df["energy"].dtype == np.float64
        assert mpigather.verify(out)[1:] == ([], [])
        # the readers' rule, without mpigather: a done row of the table, else /results/<id>
        if sink == "h5":
            import h5py

            with h5py.File(out, "r") as f:
                assert "results" not in f or len(f["results"]) == 0
                has = f["table/has/result/error"][:]
                assert has.tolist() == [i in err for i in range(N)]
                assert "table/has/result/energy" not in f
    assert layouts[0] == layouts[1] == layouts[2], [sorted(set(a) ^ set(layouts[0])) for a in layouts]
    print(f"\nLAYOUT records {sink}: {len(set(map(tuple, orders)))} distinct arrival orders of 3")


MEMORY = """
import json, sys, numpy as np, mpigather
from tablefuncs import {func}
s = mpigather.run({func}, range({n}), out=None, progress="off"{extra})
if s is not None:
    sink = s.results._sink
    t = sink.table
    print("LAYOUT", json.dumps({{"whole": sorted(sink.results), "table": None if t is None else t.layout.to_json(),
                                "shapes": {{str(k): list(np.shape(v)) for k, v in sink.results.items()}}}}))
"""


@pytest.mark.mpi
@pytest.mark.parametrize("func,extra", [("varying", ""), ("optional", ""), ("spectra", ", table=True")])
def test_in_memory_the_layout_is_the_same_in_any_arrival_order(func, extra):
    seen = []
    for _ in range(3):
        p = mpirun(3, ["-c", MEMORY.format(func=func, n=N, extra=extra)], timeout=120)
        assert p.returncode == 0, show(p)
        line = next(x for x in p.stdout.splitlines() if x.startswith("LAYOUT "))
        seen.append(json.loads(line[len("LAYOUT "):]))
    assert seen[0] == seen[1] == seen[2]
    if func == "varying":
        assert seen[0]["whole"] == list(range(N)) and seen[0]["table"] is None
    else:
        assert seen[0]["whole"] == [] and seen[0]["table"] is not None


@pytest.mark.mpi
@pytest.mark.parametrize("sink", ["h5", "dir"])
def test_a_table_of_arrays_when_asked(tmp_path, sink):
    """With --table, a record's small array is a column; arrays of another shape in it make the
    column JSON text, whatever the order."""
    layouts = []
    for k in range(2):
        out = tmp_path / (f"s{k}.h5" if sink == "h5" else f"s{k}")
        _run("tablefuncs:spectra", out, "--table")
        layouts.append(layout_of(out))
        with mpigather.load(out) as res:
            cols = res.columns()
            assert cols["x"].tolist() == [float(i) for i in range(N)]
            assert cols["spec"].dtype == object  # 4 and 5 values: JSON text, given back as arrays
            for i in (0, 1, 9, 10):
                got = res[i]
                assert got["spec"].dtype == np.float32 and got["spec"].tolist() == spectra(i)["spec"].tolist()
                assert cols["spec"][i].tolist() == spectra(i)["spec"].tolist()
        assert mpigather.verify(out)[1:] == ([], [])
    assert layouts[0] == layouts[1]
    out = tmp_path / ("one.h5" if sink == "h5" else "one")
    p = mpirun(3, ["-c", "import mpigather, numpy as np\n"
                   f"mpigather.run(lambda i: {{'v': np.full(3, i, np.int16)}}, range(50), out={str(out)!r},"
                   " table=True, progress='off')"], timeout=120)
    assert p.returncode == 0, show(p)
    with mpigather.load(out) as res:
        v = res.columns()["v"]
        assert v.dtype == np.int16 and v.shape == (50, 3) and (v[:, 0] == np.arange(50)).all()


@pytest.mark.mpi
@pytest.mark.parametrize("sink", ["h5", "dir"])
@pytest.mark.parametrize("func", ["optional_slow", "varying_slow"])
def test_kill_and_resume_give_the_layout_of_an_uninterrupted_run(tmp_path, sink, func):
    n = 600
    args = ["-m", "mpigather", "run", f"tablefuncs:{func}", "--range", str(n), "--progress", "off"]
    whole = tmp_path / ("whole.h5" if sink == "h5" else "whole")
    p = mpirun(3, args + ["--out", str(whole)], timeout=120)
    assert p.returncode == 0, show(p)
    out = tmp_path / ("k.h5" if sink == "h5" else "k")
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    e = env()
    for k in range(2):
        target = rng.randrange(n // 10, n * 7 // 10)
        proc = subprocess.Popen(mpi_cmd(3, args + ["--out", str(out)] + (["--resume"] if k else [])),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e,
                                start_new_session=True)
        end = time.monotonic() + 90
        try:
            while time.monotonic() < end and proc.poll() is None and len(done_ids(out)) < target:
                time.sleep(0.002)
        finally:
            kill_group(proc.pid)
            proc.communicate(timeout=30)
    p = mpirun(3, args + ["--out", str(out), "--resume"], timeout=120)
    assert p.returncode == 0, f"seed {seed}\n{show(p)}"
    assert layout_of(out) == layout_of(whole), f"seed {seed}"
    assert mpigather.verify(out)[1:] == ([], [])
    with mpigather.load(out) as a, mpigather.load(whole) as b:
        assert len(a) == len(b) == n
        for i in (0, 1, 4, 7, 599):
            x, y = a[i], b[i]
            assert (np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y), (i, x, y)


# -- the rule, without MPI --------------------------------------------------------------------------

def test_a_column_type_depends_on_the_set_of_types_seen():
    leaves = [T.Leaf(("x",), "bool", "|b1"), T.Leaf(("x",), "int", "<i8"), T.Leaf(("x",), "float", "<f8"),
              T.Leaf(("x",), "generic", "<f4"), T.Leaf(("x",), "generic", "<i2")]
    for k in range(1, len(leaves) + 1):
        for subset in itertools.combinations(leaves, k):
            got = {resolve(tuple(sorted({token(x) for x in perm}))) for perm in itertools.permutations(subset)}
            assert len(got) == 1
    one = {resolve(tuple(sorted({token(x) for x in s}))) for s in [leaves[:2], leaves[1::-1]]}
    assert one == {("int", "<i8", ())}
    assert resolve(tuple(sorted({token(leaves[0]), token(leaves[2])}))) == ("float", "<f8", ())
    assert resolve((token(T.Leaf(("x",), "str", "")), token(leaves[2])))[0] == "json"
    a3, a4 = T.Leaf(("x",), "array", "<f4", (3,)), T.Leaf(("x",), "array", "<f8", (3,))
    assert resolve(tuple(sorted({token(a3), token(a4)}))) == ("array", "<f8", (3,))
    assert resolve(tuple(sorted({token(a3), token(T.Leaf(("x",), "array", "<f4", (4,)))})))[0] == "json"


@pytest.mark.parametrize("value", [1, 2.5, True, "s", np.float32(1.5), np.arange(3, dtype=np.int16),
                                   {"a": {"$np": 1}, "b": np.complex64(1 + 2j)}, float("nan"), {"x": {"y": "z"}}])
def test_json_cells_give_each_value_back_exactly(value):
    got = T.from_json(T.to_json(value))
    if isinstance(value, float) and value != value:
        assert got != got
    elif isinstance(value, (np.ndarray, np.generic)):
        assert type(got) is type(value) and got.dtype == value.dtype and np.array_equal(got, value)
    else:
        assert repr(got) == repr(value)


def _values(i: int) -> Any:
    k = i % 8
    if k == 0:
        return {"e": i * 0.5, "s": "x", "sub": {"a": 1}}
    if k == 1:
        return {"e": i, "s": 3}
    if k == 2:
        return {"e": np.float32(i), "sub": 5, "flag": True}
    if k == 3:
        return "bare"
    if k == 4:
        return {"e": 2.5, "tag": f"longer-name-{i}" * 3}
    return {"e": float(i)}


def _typed(v: Any) -> Any:
    """A value compared with its types: a dict's keys in any order, each leaf's type and repr."""
    if type(v) is dict:
        return {k: _typed(x) for k, x in v.items()}
    return type(v).__name__, repr(v)


def _tid(i: int) -> Any:
    return f"t{i}" if i % 11 else i


def _store(out: Any, order: list[int]) -> Any:
    """The rows of ``_values`` put into a sink in ``order``, in batches of consecutive tasks."""
    s = open_sink(out)
    s.total = 40
    k = 0
    while k < len(order):
        grp = [order[k]]
        k += 1
        sch = T.schema_of(_values(grp[0]))
        while k < len(order) and order[k] == grp[-1] + 1 and T.schema_of(_values(order[k])) == sch and len(grp) < 4:
            grp.append(order[k])
            k += 1
        b = T.RowsBuilder(sch)
        for i in grp:
            b.add(T.leaves_of(_values(i), sch))
        cols = b.columns()
        rows = M.Rows(0, grp[0], len(grp), _tid(grp[0]), 1, sch, cols, T.checksum(cols), np.zeros(len(grp), np.float32))
        s.put_rows(grp[0], [_tid(i) for i in grp], rows, {"rank": 1, "attempt": 1, "duration": 0.0, "crc32c": 0,
                                                            "bytes": 0})
        if random.random() < 0.3:
            ready = s.take_ready()
            if ready is not None:
                s.make_durable(ready)
    ready = s.take_ready()
    if ready is not None:
        s.make_durable(ready)
    return s


@pytest.mark.parametrize("sink", ["h5", "dir", "memory"])
def test_a_sink_stores_the_same_layout_in_any_order_and_every_value_back(tmp_path, sink):
    base = None
    for k in range(6):
        order = list(range(40))
        random.Random(k).shuffle(order)
        out = None if sink == "memory" else tmp_path / (f"o{k}.h5" if sink == "h5" else f"o{k}")
        s = _store(out, order)
        if out is None:
            got = {n: (c.dtype.str, c[: s.table.n].shape) for n, c in s.table.cols.items()}
            res = s.in_task_order()
        else:
            s.close(True)
            got = layout_of(out)
            res = mpigather.load(out)
        assert got == (base := base or got), k
        for i in range(40):
            v, want = res[_tid(i)], _values(i)
            assert _typed(v) == _typed(want), (i, v, want)  # each as returned: the type/ column
        cols = res.columns()
        # the column of e mixes floats, ints and float32: float64, and each row's type beside it
        assert cols["e"].dtype == np.float64 and cols["e"].mask.tolist() == [i % 8 == 3 for i in range(40)]
        assert any(k.endswith("type/result/e") or k.endswith("type/result/e.npy") for k in got), sorted(got)
        assert cols["s"].dtype == object and cols["s"][1] == 3 and cols["s"][0] == "x"  # JSON: str and int
        assert cols["value"].compressed().tolist() == ["bare"] * 5


@pytest.mark.parametrize("task", [
    {"id": "p1", "seed": 3, "x": 0.5}, {"seed": 3, "x": 0.5}, {"id": 7, "seed": 3, "x": 0.5},
    {"id": "p1", "seed": 3}, {"id": "p1", "seed": 3, "x": 0.5, "y": 1}, {"id": "p1", "seed": 3.0, "x": 0.5},
    {"id": "p1", "seed": 1 << 64, "x": 0.5}, {"id": "p1", "seed": True, "x": 0.5}, {"seed": 3, "x": 0.5, "z": 1},
    {"id": "p1", "seed": 3, "x": {"a": 1.0}}, [3, 0.5], "p1", None,
])
@pytest.mark.parametrize("first", [{"seed": 1, "x": 0.25}, {"seed": 1, "x": {"a": 1.0}}, {"seed": "s", "x": 0.25}])
def test_parameters_matched_in_the_task_leave_its_id_out_as_a_copy_does(task, first):
    """The worker matches a task file line's parameters in the line itself, its ``id`` left out
    (``skip``), instead of in a copy without it: the same leaves, or the same refusal."""
    from mpigather.worker.rows import params_of

    sch = T.schema_of(first)
    assert sch is not None
    tid = task.get("id", 0) if isinstance(task, dict) else 0
    params = params_of(tid, task)
    want = T.matcher(sch)(params) if params is not None else None
    assert T.matcher(sch, skip="id")(task) == want


def test_staged_rows_join_runs_that_touch_whatever_order_they_came_in():
    from mpigather.sinks.table_base import Staged

    st = Staged()
    for start, n in [(30, 10), (0, 10), (20, 10), (10, 10), (50, 5), (45, 5), (70, 3)]:
        st.add(start, {"id": np.arange(start, start + n), "done": np.ones(n, dtype=bool)})
    got = st.take()
    assert [(s, len(v["id"])) for s, v in got] == [(0, 40), (45, 10), (70, 3)]
    for s, v in got:
        assert np.array_equal(v["id"], np.arange(s, s + len(v["id"])))
    assert not st
