"""Reading results back, the same way for every sink and mode, and verifying their checksums.

``load(out)`` is a read-only mapping of task id (as str) to the value its task returned, in
task order (numeric ids numerically, other ids in the order of the task list). Like
``numpy.load``, it refuses to unpickle (pickles run code from the file) unless the caller
passes ``allow_pickle=True``; arrays, dicts and plain values load as they are.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from . import results as R
from .errors import UsageError
from .journal import done_columns, journal_path, read_records
from .reader_table import StoredTable, table_frame
from .sinks import layout as L
from .sinks.npy import read_rows

_BLOCK = 64 << 20


def _unpickle(data: bytes, buffers: list[Any], allow_pickle: bool, name: str) -> Any:
    """Unpickle a stored object; without ``allow_pickle`` only a pickle of plain values (no
    class or function is named in it, so nothing can run) is read."""
    if not allow_pickle and not _plain_pickle(data):
        raise _pickle_refused(f"result {name!r}")
    return pickle.loads(data, buffers=buffers)


def _pickle_refused(what: str) -> ValueError:
    return ValueError(f"{what} holds a pickled Python object, and unpickling runs code from the file;"
                      " pass allow_pickle=True if you trust it")


def _kind(obj: Any) -> str | None:
    k = obj.attrs.get(L.ATTR_KIND)
    return k.decode() if isinstance(k, bytes) else k


def _h5_array(ds: Any) -> np.ndarray:
    descr = ds.attrs.get(L.ATTR_DTYPE)
    arr = ds[()]
    if descr is None:
        return np.asarray(arr)
    try:
        d = json.loads(descr)
        d = [tuple(x) if isinstance(x, list) else x for x in d] if isinstance(d, list) else d
    except ValueError:
        d = descr
    raw_shape = ds.attrs[L.ATTR_SHAPE]
    shape = tuple(json.loads(raw_shape)) if isinstance(raw_shape, (str, bytes)) else tuple(int(x) for x in raw_shape)
    return R.from_raw(R.PartSpec(None, d, shape, arr.nbytes), np.asarray(arr))


def _h5_object_parts(obj: Any) -> list[np.ndarray]:
    import h5py

    if isinstance(obj, h5py.Group):
        n = len(obj) - 1
        return [np.asarray(obj[L.PICKLE][()])] + [np.asarray(obj[str(i)][()]) for i in range(n)]
    return [np.asarray(obj[()])]


def _h5_value(obj: Any, allow_pickle: bool, name: str, kind: str | None = None) -> Any:
    """The value stored at ``obj``; ``kind``: the task table's, for a dataset at the top of a
    result, which carries no ``kind`` attribute of its own."""
    import h5py

    kind = _kind(obj) or kind
    if kind == "none":
        return None
    if kind == "object":
        parts = _h5_object_parts(obj)
        return _unpickle(parts[0].tobytes(), parts[1:], allow_pickle, name)
    if isinstance(obj, h5py.Group):  # a dict (kind "dict", or no kind in older files)
        return {k: _h5_value(obj[k], allow_pickle, name) for k in obj}
    if kind == "bytes":
        return np.asarray(obj[()]).tobytes()
    if kind == "str":
        v = obj[()]
        return v.decode() if isinstance(v, bytes) else str(v)
    if kind == "int":
        return int(obj[()])
    if kind == "float":
        return float(obj[()])
    if kind == "bool":
        return bool(obj[()])
    if kind == "generic":
        return _h5_array(obj)[()]
    return _h5_array(obj)


def _npy_value(p: Path, allow_pickle: bool, name: str) -> Any:
    n = p.name
    if n.endswith(".npy"):
        return np.load(p)
    if n.endswith(".bytes"):
        return p.read_bytes()
    if n.endswith(".none"):
        return None
    if n.endswith(".pkl"):
        if p.is_dir():
            bufs = [np.fromfile(p / str(i), dtype=np.uint8) for i in range(len(list(p.iterdir())) - 1)]
            return _unpickle((p / L.PICKLE).read_bytes(), bufs, allow_pickle, name)
        return _unpickle(p.read_bytes(), [], allow_pickle, name)
    if p.is_dir():
        return {L.strip_ext(q.name): _npy_value(q, allow_pickle, name) for q in sorted(p.iterdir())}
    raise KeyError(name)


class Results(Mapping[str, Any]):
    """A run's stored results: a read-only mapping of task id (as str) to the value its task
    returned, loaded on access, in task order. ``mpigather.load`` opens one.

    Use it as a mapping (``res["3"]``, ``len(res)``, ``for tid in res``), or as a context manager
    that closes the file. ``attrs(tid)`` gives a task's record, ``columns()`` and ``to_pandas()``
    the table of small results, ``checksum(tid)`` a result's crc32c.

    Attributes
    ----------
    path : pathlib.Path
        The output read: an HDF5 file or a directory.
    allow_pickle : bool
        Whether pickled values are unpickled (else reading one raises ValueError).
    table : StoredTable or None
        The table of small results (rows of one task each), read lazily; None when the run had none.
    """

    def __init__(self, out: str | os.PathLike[str], *, allow_pickle: bool = False) -> None:
        self.path = Path(out)
        self.allow_pickle = allow_pickle
        self._h5 = L.is_hdf5_path(out)
        if not self.path.exists():
            self._missing()
        if self._h5:
            import h5py

            self._f: Any = h5py.File(self.path, "r")
        self._order: list[str] | None = None
        self._rows: dict[str, dict[str, Any]] | None = None
        self.table = StoredTable.of_hdf5(self._f) if self._h5 else StoredTable.of_dir(self.path)

    def _missing(self) -> None:
        partial = self.path.with_name(self.path.name + L.PARTIAL)
        if self._h5 and partial.exists():
            from .lock import probe

            live, holder = probe(self.path)
            if live:
                raise UsageError(f"{self.path} is still being written (pid {holder.get('pid', '?')} on"
                                 f" {holder.get('host', '?')}); HDF5 cannot be read while it is written: wait for"
                                 f" the run to end (`mpigather status {self.path} --wait`), or use a directory"
                                 " output (--out DIR), whose finished results can be read during the run")
            raise UsageError(f"{self.path} was not completed: its run stopped early. Resume it (--resume) to"
                             f" finish the file, or read what it holds with mpigather.load({str(partial)!r})")
        raise FileNotFoundError(f"no results at {self.path}")

    def close(self) -> None:
        """Close the HDF5 file (a directory output holds nothing open); ``with load(...)`` does it."""
        if self._h5:
            self._f.close()

    def __enter__(self) -> Results:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the task table -------------------------------------------------------------------

    def _table(self) -> list[dict[str, Any]]:
        if self._h5:
            if L.TASKS not in self._f:
                return []
            t = self._f[L.TASKS][()]
            return [{k: (t[k][i].decode() if isinstance(t[k][i], bytes) else t[k][i].item()) for k in t.dtype.names}
                    for i in range(len(t))]
        return read_rows(self.path / L.TASKS_JSONL)

    def _index(self) -> dict[str, dict[str, Any]]:
        if self._rows is None:
            self._rows = {str(r["id"]): r for r in self._table()}
        return self._rows

    def _names(self) -> list[str]:
        if self._order is None:
            self._order = self._whole_names()
            if self.table is not None:
                self._order = self._merged(self._order)
        return self._order

    def _merged(self, whole: list[str]) -> list[str]:
        """Results stored whole and rows of the table, in task order."""
        assert self.table is not None
        pos = self.table.positions()
        if not whole:
            return list(pos)
        index = self._index()
        keyed = [(index.get(n, {}).get("seq", -1), 0, n) for n in whole] + [(p, 1, n) for n, p in pos.items()]
        keyed.sort(key=lambda x: (x[0], x[1]))
        return [n for _, _, n in keyed]

    def _whole_names(self) -> list[str]:
        """The results stored whole, in task order."""
        rows = list(self._index().values())
        if rows:
            if all(r.get("int_id", type(r["id"]) is int) for r in rows):
                rows.sort(key=lambda r: int(r["id"]))
            else:  # task order; a fanned-out task's children (<id>.<k>) after it, by k
                rows.sort(key=lambda r: (r.get("seq", 0), _child_key(str(r["id"]))))
            names = [str(r["id"]) for r in rows]
            present = set(self._listing())
            return [n for n in names if n in present]
        # an output written before the task table existed (or a table alone)
        return sorted(self._listing(), key=lambda n: (not n.lstrip("-").isdigit(), _num(n), n))

    def _listing(self) -> list[str]:
        if self._h5:
            return list(self._f[L.RESULTS]) if L.RESULTS in self._f else []
        names = []
        for p in self.path.iterdir():
            n = p.name
            if n.startswith((".", "_mpigather", "_tasks", L.TABLE_DIR)):
                continue
            names.append(L.strip_ext(n))
        return names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def __contains__(self, tid: object) -> bool:
        return self._locate(tid) is not None or (self.table is not None and self.table.find(tid) is not None)

    def _locate(self, tid: Any) -> Any:
        name = str(tid)
        if self._h5:
            res = self._f.get(L.RESULTS)
            return None if res is None or name not in res else res[name]
        for ext in (".npy", ".pkl", ".bytes", ".none", ""):
            p = self.path / f"{name}{ext}"
            if p.exists() and (ext or p.is_dir()):
                return p
        return None

    def __getitem__(self, tid: Any) -> Any:
        # the readers' rule (docs/tables.md): a done row of the table, else /results/<id>
        i = self.table.find(tid) if self.table is not None else None
        if i is not None:
            return self.table.value(i)  # type: ignore[union-attr]
        where = self._locate(tid)
        if where is None:
            raise KeyError(tid)
        if self._h5:
            return _h5_value(where, self.allow_pickle, str(tid), self._top_kind(tid))
        return _npy_value(where, self.allow_pickle, str(tid))

    def _top_kind(self, tid: Any) -> str | None:
        return self._index().get(str(tid), {}).get("kind") or None

    def attrs(self, tid: Any) -> dict[str, Any]:
        """Per-task record: its parameters, rank, attempt, duration, bytes, crc32c, kind, position."""
        row = dict(self._index().get(str(tid), {}))
        if not row and self.table is not None:
            i = self.table.find(tid)
            if i is not None:
                return self.table.attrs(i)
        if isinstance(row.get("params"), str):
            try:
                row["params"] = json.loads(row["params"])
            except ValueError:
                pass
        return row

    def columns(self, meta: bool = False) -> dict[str, np.ndarray]:
        """The table of small results: a dict of numpy arrays in task order, with ``id`` and the
        ``done`` mask (names: see ``reader_table``); {} when the run had none."""
        return self.table.columns(meta) if self.table is not None else {}

    def to_pandas(self, meta: bool = False) -> Any:
        """The table of small results as a pandas DataFrame: one row per task whose result is in
        it, with its id, its parameters and its result's fields."""
        return table_frame(self.columns(meta))

    def checksum(self, tid: Any) -> int:
        """crc32c of a stored result's bytes, in the order the worker summed them, streamed from the file."""
        where = self._locate(tid)
        if where is None:
            raise KeyError(tid)
        return _h5_crc(where, 0, self._top_kind(tid)) if self._h5 else _npy_crc(where, 0)


def _child_key(name: str) -> tuple[int, ...]:
    """(0,) for a task; (1, k) for child k: children follow their parent, in order."""
    head, _, k = name.rpartition(".")
    return (1, int(k)) if head and k.isdigit() else (0,)


def _num(n: str) -> int:
    try:
        return int(n)
    except ValueError:
        return 0


def load_entry(path: str | os.PathLike[str]) -> Any:
    """One value stored in a ``.npy`` directory (a step's input, stored by this run itself)."""
    p = Path(path)
    return _npy_value(p, True, p.name)


def load(out: str | os.PathLike[str], *, allow_pickle: bool = False) -> Results:
    """Open the results of a run for reading: ``load("out.h5")["3"]`` is what task 3 returned.

    Arrays, dicts and plain values load as they were returned, the same way for every output
    and mode; results of a run that is still writing a directory output can be read already.

    Parameters
    ----------
    out : str or os.PathLike
        The run's ``out``: an HDF5 file or a directory of ``.npy`` files.
    allow_pickle : bool, optional
        Unpickle values that were stored pickled (lists, dataclasses, DataFrames...). Off by
        default, as in ``numpy.load``: a pickle runs code when it is loaded, so turn it on only
        for outputs you trust. Default False.

    Returns
    -------
    Results
        A read-only mapping of task id (as str) to value, in task order.

    Raises
    ------
    FileNotFoundError
        Nothing is at ``out``.
    UsageError
        ``out`` is an HDF5 file still being written, or one whose run stopped before the end
        (resume the run, or read its ``.partial`` file).

    Examples
    --------
    ::

        import mpigather

        summary = mpigather.run(abs, [-1, 2, -3], out="absolute.h5", overwrite=True)
        if summary is not None:  # on rank 0
            with mpigather.load("absolute.h5") as res:
                assert [res[tid] for tid in res] == [1, 2, 3]
    """
    return Results(out, allow_pickle=allow_pickle)


def _dataset_crc(ds: Any, crc: int) -> int:
    """crc32c of a dataset's bytes, read in blocks of about 64 MiB (a 3 GiB result is fine)."""
    if ds.shape == () or ds.size == 0 or ds.nbytes <= _BLOCK:
        return R.crc_update(crc, R.raw(np.ascontiguousarray(ds[()])))
    rows = max(1, _BLOCK // max(1, ds.nbytes // ds.shape[0]))
    for start in range(0, ds.shape[0], rows):
        crc = R.crc_update(crc, R.raw(np.ascontiguousarray(ds[start : start + rows])))
    return crc


def _h5_crc(obj: Any, crc: int, kind: str | None = None) -> int:
    import h5py

    kind = _kind(obj) or kind
    if kind in ("none", *R.SCALARS):
        return crc
    if kind == "object" and isinstance(obj, h5py.Group):
        crc = _dataset_crc(obj[L.PICKLE], crc)
        for i in range(len(obj) - 1):
            crc = _dataset_crc(obj[str(i)], crc)
        return crc
    if isinstance(obj, h5py.Group):
        for key in sorted(obj):
            crc = _h5_crc(obj[key], crc)
        return crc
    return _dataset_crc(obj, crc)


def _npy_crc(p: Path, crc: int) -> int:
    n = p.name
    if n.endswith(".none"):
        return crc
    if n.endswith(".pkl"):
        if p.is_dir():
            crc = _file_crc(p / L.PICKLE, crc)
            for i in range(len(list(p.iterdir())) - 1):
                crc = _file_crc(p / str(i), crc)
            return crc
        return crc if _is_scalar_pickle(p) else _file_crc(p, crc)
    if p.is_dir():
        for q in sorted(p.iterdir(), key=lambda q: L.strip_ext(q.name)):  # key order, as the worker summed it
            crc = _npy_crc(q, crc)
        return crc
    if n.endswith(".npy"):
        arr = np.load(p, mmap_mode="r")
        flat = R.raw(arr) if arr.size else np.empty(0, np.uint8)
        for start in range(0, flat.size, _BLOCK):
            crc = R.crc_update(crc, np.asarray(flat[start : start + _BLOCK]))
        return crc
    return _file_crc(p, crc)


def _is_scalar_pickle(p: Path) -> bool:
    """A str/int/float/bool stored as a pickle: its value rode in the header, not in a checksummed part."""
    if p.stat().st_size > 4096:
        return False
    data = p.read_bytes()
    if not _plain_pickle(data):
        return False
    try:
        v = pickle.loads(data)
    except Exception:
        return False
    return R._Encoder().node(v, None)[0] in R.SCALARS


def _plain_pickle(data: bytes) -> bool:
    """A pickle that names no class or function (no GLOBAL, REDUCE, BUILD...) builds only plain
    values: str, numbers, bytes, None, and lists, tuples, sets and dicts of them."""
    import pickletools

    try:
        return all(op.name not in ("GLOBAL", "STACK_GLOBAL", "REDUCE", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX",
                                   "BUILD") for op, _, _ in pickletools.genops(data))
    except Exception:
        return False


def _file_crc(p: Path, crc: int) -> int:
    with open(p, "rb") as f:
        while block := f.read(_BLOCK):
            crc = R.crc_update(crc, block)
    return crc


def verify(out: str | os.PathLike[str]) -> tuple[int, list[str], list[str]]:
    """Recompute every done result's checksum against the journal.

    Returns (results checked, mismatched ids, missing ids).
    """
    jp = journal_path(out)
    if not jp.exists():
        raise FileNotFoundError(f"no journal {jp} beside {out}")
    want: dict[str, int] = {}
    rows: dict[int, tuple[int, int]] = {}  # first position -> (rows, crc32c)
    for rec in read_records(jp):
        if rec.get("ev") == "done":
            for tid, _seq, _h, _att, _rank, _bytes, crc, _dur, _path in done_columns(rec):
                want[str(tid)] = crc
        elif rec.get("ev") == "rows":
            for (s0, n), crc in zip(rec["pos"], rec.get("crc") or [None] * len(rec["pos"])):
                rows[s0] = (n, crc)
        elif rec.get("ev") == "reset":
            want.clear()
            rows.clear()
    bad, missing = [], []
    n = 0
    with load(out) as res:
        table = res.table
        for name, crc in want.items():
            # found by the readers' rule: not a done row of the table, so /results/<id>
            if res._locate(name) is None or (table is not None and table.find(name) is not None):
                missing.append(name)
                continue
            n += 1
            try:
                ok = res.checksum(name) == crc
            except Exception:  # unreadable counts as a mismatch
                ok = False
            if not ok:
                bad.append(name)
        n += _verify_rows(res, rows, bad, missing)
    return n, bad, missing


def _verify_rows(res: Results, rows: dict[int, tuple[int, int]], bad: list[str], missing: list[str]) -> int:
    """Rows of the table the journal calls done: there, and with their checksums. Returns how
    many were checked; a range that fails is named by its positions."""
    checked = 0
    table = res.table
    done = table.done() if table is not None else np.zeros(0, dtype=bool)
    for s0, (n, crc) in sorted(rows.items()):
        where = f"rows {s0}..{s0 + n - 1}"
        if table is None or s0 + n > len(done) or not done[s0 : s0 + n].all():
            missing.append(where)
            continue
        checked += n
        try:
            got = table.checksum(s0, n)
            ok = crc is None or got is None or got == crc
        except Exception:
            ok = False
        if not ok:
            bad.append(where)
    return checked
