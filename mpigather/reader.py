"""Reading results back, the same way for every sink and mode, and verifying their checksums.

``load(out)`` is a read-only mapping of task id (as str) to the value its task returned, in
task order (numeric ids numerically, other ids in the order of the task list). Like
``numpy.load``, it refuses to unpickle (pickles run code from the file) unless the caller
passes ``allow_pickle=True``; arrays, dicts and plain values load as they are.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UsageError
from .journal import done_columns, journal_path, read_records
from .reader_table import StoredTable, table_frame
from .reader_whole import _h5_crc, _h5_value, _npy_crc, _npy_value
from .sinks import layout as L
from .sinks.npy import read_rows


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
