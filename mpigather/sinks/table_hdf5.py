"""The table of small results in an HDF5 file: the group ``/table``, one chunked, extendible
dataset per column (see ``table`` for the names), row ``i`` the task at position ``i``.

Plain h5py reads it in one line (``h5py.File("out.h5")["table/result/energy"][:]``), and
``/table/done`` says which rows hold a result. The group's attribute ``layout`` (JSON) keeps
the schema, so that ``mpigather.load`` gives each value back with the type the task returned.
"""

from __future__ import annotations

from typing import Any

import h5py
import numpy as np

from . import layout as L
from .table_base import Column, dtype_of, empty, runs
from .table_layout import Layout
from .table_store import TableStore

CHUNK_BYTES = 256 << 10  # about this many bytes per chunk of a column
POINTS_BELOW = 16  # runs shorter than this on average go in one write of points (write_runs)
_STR = h5py.string_dtype()


def _h5_dtype(col: Column) -> Any:
    return _STR if col.dtype == "str" else dtype_of(col)


def _create(g: h5py.Group, c: Column, n: int) -> h5py.Dataset:
    item = 16 if c.dtype == "str" else dtype_of(c).itemsize * int(np.prod(c.shape, dtype=np.int64))
    rows = max(64, min(1 << 16, CHUNK_BYTES // max(1, item)))
    return g.create_dataset(c.name, shape=(n, *c.shape), maxshape=(None, *c.shape), dtype=_h5_dtype(c),
                            chunks=(rows, *c.shape))


class H5Table(TableStore):
    """Writes rows into ``/table`` (created at the first rows, or reopened on resume)."""

    def __init__(self, group: h5py.Group, layout: Layout) -> None:
        self.g, self.layout = group, layout
        self.specs = {c.name: c for c in layout.columns()}
        self.ds = {name: group[name] for name in self.specs}
        self.n = int(self.ds["id"].shape[0])

    @classmethod
    def create(cls, f: h5py.File, layout: Layout, total: int | None) -> H5Table:
        g = f.create_group(L.TABLE)
        g.attrs[L.ATTR_LAYOUT] = layout.to_json()
        for c in layout.columns():
            _create(g, c, total or 0)
        return cls(g, layout)

    # -- TableStore: a column rewritten when the layout changes ---------------------------------

    def read_column(self, name: str) -> np.ndarray:
        ds = self.ds[name]
        if self.specs[name].dtype == "str":
            return np.asarray(ds.asstr()[:], dtype=object)
        return np.asarray(ds[:])

    def drop_column(self, name: str) -> None:
        del self.g[name], self.ds[name], self.specs[name]
        parent = name.rsplit("/", 1)[0] if "/" in name else ""
        while parent and len(self.g[parent]) == 0:  # no empty groups left behind
            del self.g[parent]
            parent = parent.rsplit("/", 1)[0] if "/" in parent else ""

    def add_column(self, col: Column, data: np.ndarray | None) -> None:
        if col.name in self.g:  # left by a rewrite that a kill cut short
            del self.g[col.name]
        self.ds[col.name] = _create(self.g, col, self.n)
        self.specs[col.name] = col
        if data is not None and self.n:
            self.write(0, {col.name: data[: self.n]})

    def begin_migration(self) -> None:
        f, nxt = self.g.file, L.TABLE + L.NEXT
        if nxt in f:
            del f[nxt]
        g = f.create_group(nxt)
        for name, ds in self.ds.items():
            g[name] = ds  # a hard link: the same dataset, not a copy
        self._use(g)

    def _use(self, g: h5py.Group) -> None:
        self.g = g
        self.ds = {name: g[name] for name in self.specs}

    def save_layout(self, layout: Layout) -> None:
        self.g.attrs[L.ATTR_LAYOUT] = layout.to_json()
        self.layout = layout
        f = self.g.file
        if self.g.name == f"/{L.TABLE}{L.NEXT}":  # the rewritten table replaces the old one
            if L.TABLE in f:
                del f[L.TABLE]
            f.move(L.TABLE + L.NEXT, L.TABLE)
            self._use(f[L.TABLE])

    @classmethod
    def open(cls, f: h5py.File) -> H5Table | None:
        nxt = L.TABLE + L.NEXT
        if nxt in f:  # a rewrite that a kill cut short: complete (swap it in) or not (drop it)
            if L.TABLE in f:
                del f[nxt]
            else:
                f.move(nxt, L.TABLE)
        if L.TABLE not in f:
            return None
        g = f[L.TABLE]
        return cls(g, Layout.from_json(g.attrs[L.ATTR_LAYOUT]))

    def write(self, seq0: int, values: dict[str, Any]) -> None:
        end = seq0 + len(next(iter(values.values())))
        if end > self.n:
            for ds in self.ds.values():
                ds.resize(end, axis=0)
            self.n = end
        for name, v in values.items():
            ds = self.ds[name]
            if self.specs[name].dtype == "str":
                ds[seq0:end] = v
            else:  # through the low-level API: a third of the cost of ds[a:b] = v
                arr = np.ascontiguousarray(v, dtype=ds.dtype)
                fs = ds.id.get_space()
                fs.select_hyperslab((seq0, *(0,) * (arr.ndim - 1)), arr.shape)
                ds.id.write(h5py.h5s.create_simple(arr.shape), fs, arr)

    def write_runs(self, runs: list[tuple[int, dict[str, Any]]]) -> None:
        """``write`` of each (first position, values) run. Runs of one row each are what many
        workers with blocks of one task give (their rows interleave): a column of plain values
        then goes in one write of the points, not one write per run (a tenth of the cost)."""
        lens = [len(next(iter(values.values()))) for _s, values in runs]
        if len(runs) < 2 or sum(lens) >= POINTS_BELOW * len(runs):  # long runs: a slice each is cheaper
            for start, values in runs:
                self.write(start, values)
            return
        end = max(start + n for (start, _v), n in zip(runs, lens))
        if end > self.n:
            for ds in self.ds.values():
                ds.resize(end, axis=0)
            self.n = end
        pos = np.concatenate([np.arange(start, start + n, dtype=np.uint64) for (start, _v), n in zip(runs, lens)])
        points = pos.reshape(-1, 1)
        for name in runs[0][1]:
            ds = self.ds[name]
            if self.specs[name].dtype == "str" or ds.ndim > 1:  # (points of a string or a sub-array: by runs)
                for start, values in runs:
                    self.write(start, {name: values[name]})
                continue
            arr = np.ascontiguousarray(np.concatenate([values[name] for _s, values in runs]), dtype=ds.dtype)
            fs = ds.id.get_space()
            fs.select_elements(points)  # (the values go to the points in the order given)
            ds.id.write(h5py.h5s.create_simple(arr.shape), fs, arr)

    def extend(self, n: int) -> None:
        """At least ``n`` rows (the whole task list, at the end of a run)."""
        if n > self.n:
            for ds in self.ds.values():
                ds.resize(n, axis=0)
            self.n = n

    def done_mask(self) -> np.ndarray:
        return np.asarray(self.ds["done"][:], dtype=bool)

    def clear(self, positions: np.ndarray) -> None:
        """Rows that are not done after all (a commit the journal never saw): back to empty."""
        for start, stop in runs(positions):
            for name, ds in self.ds.items():
                ds[start:stop] = empty(self.specs[name], stop - start)
