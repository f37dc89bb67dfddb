"""Reading the table of small results back: as columns, as a pandas DataFrame, or row by row
for ``mpigather.load(out)[id]``; the same for HDF5, a directory and memory.

Column names, for ``columns()`` and ``to_pandas()``: ``id``; ``done`` (in ``columns()``: which
rows hold a result); each result field by its name (``energy``, ``sub/a`` for a nested dict,
``value`` for a bare number or string); each task parameter by its key. A parameter named like
a field (or ``id``/``done``) is ``params/<key>``; a field named ``id`` or ``done`` is
``result/<name>``. With ``meta=True``, also ``meta/rank``, ``meta/attempt``, ``meta/duration``.
Ids stored as fixed-width bytes come back as strings.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import table_schema as T
from .sinks import layout as L
from .sinks.table_layout import Layout, Spec, _name, cell, coded


def table_columns(layout: Layout, column: Callable[[str], np.ndarray], meta: bool = False) -> dict[str, np.ndarray]:
    """A table's columns in task order (names in this module's docstring); ``column(name)``
    reads one column by its stored name. A field that some done rows lack is a numpy masked
    array (masked where the row lacks it); a field of mixed types (JSON text in the file) is an
    array of Python objects, each as the task returned it."""
    ids = column("id")
    if ids.dtype.kind == "S":  # fixed-width ASCII bytes in the file: strings to the reader
        ids = ids.astype(object)
        ids[:] = [b.decode() for b in ids]
    out: dict[str, np.ndarray] = {"id": ids, "done": np.asarray(column("done"), dtype=bool)}
    for prefix, specs in (("result", layout.results), ("params", layout.params)):
        for spec in specs.values():
            full = f"{prefix}/{_name(spec.path)}"
            short = full.split("/", 1)[1]
            taken = short in ("id", "done") if prefix == "result" else short in out
            out[full if taken else short] = _read_field(spec, full, column)
    if meta:
        m = column("meta")
        for field in m.dtype.names or ():
            out[f"meta/{field}"] = np.asarray(m[field])
    return out


def _read_field(spec: Spec, name: str, column: Callable[[str], np.ndarray]) -> np.ndarray:
    col = column(name)
    has = np.asarray(column(f"has/{name}"), dtype=bool) if spec.has else None
    if spec.kind == "json":
        dec = np.empty(len(col), dtype=object)
        dec[:] = [T.from_json(x) if x else None for x in col.tolist()]
        col = dec
    if has is None:
        return col
    mask = np.broadcast_to((~has).reshape((-1,) + (1,) * (col.ndim - 1)), col.shape)
    return np.ma.masked_array(col, mask=mask)


def table_frame(cols: dict[str, np.ndarray]) -> Any:
    """A pandas DataFrame of a table's done rows: one row per task whose result is in the table
    (pandas is imported only here). A field that some rows lack: NaN in a float column, ``<NA>``
    in an int or bool one (pandas' nullable ``Int64``/``boolean``), None in the others."""
    try:
        import pandas as pd
    except ImportError:
        raise ImportError("to_pandas() needs pandas: pip install pandas") from None
    if not cols:
        return pd.DataFrame()
    done = cols["done"]
    keep = None if bool(done.all()) else np.flatnonzero(done)
    data = {}
    for name, col in cols.items():
        if name == "done":
            continue
        c = col if keep is None else col[keep]
        if isinstance(c, np.ma.MaskedArray):
            data[name] = _nullable(pd, c)
            continue
        data[name] = list(c) if c.ndim > 1 else c  # a small array per row: one object each
    return pd.DataFrame(data)


def _nullable(pd: Any, c: np.ma.MaskedArray) -> Any:
    missing = np.ma.getmaskarray(c).reshape(len(c), -1).any(axis=1) if c.ndim > 1 else np.ma.getmaskarray(c)
    raw = np.asarray(c.data)
    if c.ndim == 1 and raw.dtype.kind in "fc":
        return np.where(missing, np.nan, raw)
    if c.ndim == 1 and raw.dtype.kind in "iu":
        return pd.arrays.IntegerArray(raw, missing)
    if c.ndim == 1 and raw.dtype.kind == "b":
        return pd.arrays.BooleanArray(raw, missing)
    out = np.empty(len(c), dtype=object)
    flags: list[Any] = np.asarray(missing).tolist()
    out[:] = [None if m else v for m, v in zip(flags, list(raw))]
    return out


def row_value(layout: Layout, read: Callable[[str, Any], np.ndarray], i: int, prefix: str = "result") -> Any:
    """Row ``i``'s value, rebuilt with the types the task returned (a promoted column's type
    where the column mixes numbers: see docs/tables.md)."""
    specs = layout.results if prefix == "result" else layout.params
    out: dict[str, Any] = {}
    for spec in specs.values():
        name = f"{prefix}/{_name(spec.path)}"
        if spec.has and not bool(read(f"has/{name}", slice(i, i + 1))[0]):
            continue
        col = read(name, slice(i, i + 1))
        v = cell(spec, col, 0, read(f"type/{name}", slice(i, i + 1))[0] if coded(spec) else None)
        if not spec.path:
            return v
        d = out
        for k in spec.path[:-1]:
            d = d.setdefault(k, {})
        d[spec.path[-1]] = v
    return out


class StoredTable:
    """The table of an output (HDF5 file or directory), read lazily: whole columns, or one row."""

    def __init__(self, layout: Layout, read: Callable[[str, Any], np.ndarray]) -> None:
        self.layout = layout
        self._read = read  # (column name, slice or index) -> values
        self._done: np.ndarray | None = None
        self._pos: dict[str, int] | None = None

    @classmethod
    def of_hdf5(cls, f: Any) -> StoredTable | None:
        if L.TABLE not in f:
            return None
        g = f[L.TABLE]
        layout = Layout.from_json(g.attrs[L.ATTR_LAYOUT])
        strings = {c.name for c in layout.columns() if c.dtype == "str"}

        def read(name: str, where: Any) -> np.ndarray:
            ds = g[name]
            if name in strings:
                return np.asarray(ds.asstr()[where], dtype=object)
            return np.asarray(ds[where])

        return cls(layout, read)

    @classmethod
    def of_dir(cls, root: Path) -> StoredTable | None:
        p = root / L.TABLE_DIR / "layout.json"
        if not p.exists():
            return None
        layout = Layout.from_json(p.read_text())
        strings = {c.name for c in layout.columns() if c.dtype == "str"}
        cache: dict[str, np.ndarray] = {}

        def read(name: str, where: Any) -> np.ndarray:
            a = cache.get(name)
            if a is None:
                a = cache[name] = np.load(root / L.TABLE_DIR / f"{name}.npy", mmap_mode="r")
            v = np.asarray(a[where])
            return v.astype(object) if name in strings else v  # (Python strings, as h5py gives)

        return cls(layout, read)

    # -- columns ------------------------------------------------------------------------------

    def column(self, name: str) -> np.ndarray:
        return self._read(name, slice(None))

    def columns(self, meta: bool = False) -> dict[str, np.ndarray]:
        return table_columns(self.layout, self.column, meta)

    def to_pandas(self, meta: bool = False) -> Any:
        return table_frame(self.columns(meta))

    # -- rows -----------------------------------------------------------------------------------

    def done(self) -> np.ndarray:
        if self._done is None:
            self._done = np.asarray(self.column("done"), dtype=bool)
        return self._done

    def positions(self) -> dict[str, int]:
        """Task id (as str) -> row, of the done rows."""
        if self._pos is None:
            rows = np.flatnonzero(self.done())
            ids = self.column("id")[rows]
            keys = (x.decode() for x in ids.tolist()) if ids.dtype.kind == "S" else (str(x) for x in ids.tolist())
            self._pos = dict(zip(keys, rows.tolist()))
        return self._pos

    def find(self, tid: Any) -> int | None:
        """The row of a done task, or None."""
        if self._pos is None and self.layout.ids == "int":  # ids are often their positions: try that first
            try:
                i = int(str(tid))
            except ValueError:
                return None
            done = self.done()
            if 0 <= i < len(done) and done[i] and int(self._read("id", i)) == i:
                return i
        return self.positions().get(str(tid))

    def value(self, i: int) -> Any:
        return row_value(self.layout, self._read, i)

    def attrs(self, i: int) -> dict[str, Any]:
        """A row's task: its id, position, parameters, rank, attempt and duration."""
        lay = self.layout
        tid = self._read("id", i).item()
        m = self._read("meta", i)
        out: dict[str, Any] = {"id": tid.decode() if isinstance(tid, bytes) else tid, "seq": i, "kind": "row",
                               "rank": int(m["rank"]), "attempt": int(m["attempt"]),
                               "duration": float(m["duration"])}
        if lay.params:
            out["params"] = row_value(lay, self._read, i, "params")
        return out

    def checksum(self, start: int, n: int) -> int | None:
        """crc32c of rows ``[start, start + n)``'s results, as the worker summed them (the
        fields these rows hold, in the worker's order); None where a column's type changed
        after they were written (a promotion, JSON): then only their presence is checked."""
        cols = []
        for spec in self.layout.results.values():
            name = f"result/{_name(spec.path)}"
            if spec.has:
                has = np.asarray(self._read(f"has/{name}", slice(start, start + n)), dtype=bool)
                if not has.any():
                    continue
                if not has.all():  # (one batch of a worker: one schema)
                    return None
            if len(spec.seen) != 1 or spec.kind == "json":
                return None
            v = self._read(name, slice(start, start + n))
            cols.append(list(v) if spec.kind == "str" else np.ascontiguousarray(v, dtype=spec.dtype))
        return T.checksum(cols)
