"""The table of small results in a directory: ``DIR/_table/<column>.npy``, one ``.npy`` file per
column (``id.npy``, ``done.npy``, ``result/energy.npy``, ``params/seed.npy``...) that numpy
alone reads (``np.load("DIR/_table/result/energy.npy")``), and ``layout.json``.

Each file is written in place: its header leaves room for the shape to grow, and rows go at
their offsets with ``pwrite``. Strings are fixed-width unicode (``<U8``, ``<U16``...: the power
of two that holds the longest, at least 8): a longer one makes the column be rewritten wider,
so that numpy reads it without pickles.
"""

from __future__ import annotations

import ast
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np

from . import layout as L
from .base import fsync_dir, make_files_durable, pwrite_all
from .table_base import Column, dtype_of, empty, runs
from .table_layout import Layout
from .table_store import TableStore

HEADER = 128  # bytes of every column file's header: room for a shape of many digits
MAGIC = b"\x93NUMPY\x01\x00"


def _header(descr: Any, shape: tuple[int, ...]) -> bytes:
    text = repr({"descr": descr, "fortran_order": False, "shape": shape})
    body = text.encode("latin1")
    pad = HEADER - len(MAGIC) - 2 - len(body) - 1
    if pad < 0:
        raise ValueError(f"a .npy header of {len(body)} bytes does not fit {HEADER}")
    return MAGIC + (HEADER - len(MAGIC) - 2).to_bytes(2, "little") + body + b" " * pad + b"\n"


class NpyColumn:
    """One column file, grown in place."""

    def __init__(self, path: Path, col: Column, width: int = 0) -> None:
        self.path, self.col = path, col
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        size = os.fstat(self.fd).st_size
        if size >= HEADER:  # a run before this one made it: read its shape and dtype
            d = ast.literal_eval(os.pread(self.fd, HEADER - 10, 10).decode("latin1").strip())
            self.dtype, self.n = np.dtype(d["descr"]), d["shape"][0]
        else:
            self.dtype = np.dtype(f"<U{max(8, width)}") if col.dtype == "str" else dtype_of(col)
            self.n = 0
            self._set_length(0)

    @property
    def row_bytes(self) -> int:
        return self.dtype.itemsize * int(np.prod(self.col.shape, dtype=np.int64))

    def _set_length(self, n: int) -> None:
        os.ftruncate(self.fd, HEADER + n * self.row_bytes)
        pwrite_all(self.fd, _header(np.lib.format.dtype_to_descr(self.dtype), (n, *self.col.shape)), 0)
        self.n = n

    def write(self, start: int, values: Any) -> None:
        arr = np.asarray(values)
        if self.col.dtype == "str":
            width = max((len(s) for s in values), default=0)
            if width > self.dtype.itemsize // 4:
                self._widen(width)
            arr = np.asarray(values, dtype=self.dtype)
        else:
            arr = np.ascontiguousarray(arr, dtype=self.dtype)
        end = start + len(arr)
        if end > self.n:
            self._set_length(end)
        if arr.size:
            pwrite_all(self.fd, arr.reshape(-1).view(np.uint8), HEADER + start * self.row_bytes)

    def _widen(self, width: int) -> None:
        """Strings longer than the column holds: rewrite it as wide as the power of two that
        holds them (so a column's width depends on its longest string, not on their order)."""
        old = self.read()
        self.dtype = np.dtype(f"<U{1 << (width - 1).bit_length()}")
        self._set_length(self.n)
        if len(old):
            pwrite_all(self.fd, np.ascontiguousarray(old, dtype=self.dtype).reshape(-1).view(np.uint8), HEADER)

    def read(self) -> np.ndarray:
        raw = os.pread(self.fd, self.n * self.row_bytes, HEADER)
        return np.frombuffer(raw, dtype=self.dtype).reshape((self.n, *self.col.shape)).copy()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class NpyTable(TableStore):
    """Writes rows into ``DIR/_table`` (created at the first rows, or reopened on resume)."""

    def __init__(self, root: Path, layout: Layout) -> None:
        self.root, self.layout = root, layout
        self.lock = threading.Lock()  # (see TableStore.lock)
        self.cols: dict[str, NpyColumn] = {}
        for c in layout.columns():
            p = root / f"{c.name}.npy"
            p.parent.mkdir(parents=True, exist_ok=True)
            self.cols[c.name] = NpyColumn(p, c)

    @classmethod
    def create(cls, out: Path, layout: Layout) -> NpyTable:
        root = out / L.TABLE_DIR
        root.mkdir(exist_ok=True)
        _save(root, layout)
        return cls(root, layout)

    # -- TableStore: a column rewritten when the layout changes ---------------------------------

    @property
    def n(self) -> int:  # type: ignore[override]
        return max((c.n for c in self.cols.values()), default=0)

    def read_column(self, name: str) -> np.ndarray:
        c = self.cols[name]
        a = c.read()
        return np.array(a.tolist(), dtype=object) if c.col.dtype == "str" else a

    def drop_column(self, name: str) -> None:
        c = self.cols.pop(name)
        c.close()
        c.path.unlink()
        d = c.path.parent
        while d != self.root and not any(d.iterdir()):  # no empty directories left behind
            d.rmdir()
            d = d.parent

    def add_column(self, col: Column, data: np.ndarray | None) -> None:
        n = self.n
        p = self.root / f"{col.name}.npy"
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.exists():  # left by a rewrite that a kill cut short
            p.unlink()
        c = self.cols[col.name] = NpyColumn(p, col)
        if data is not None and n:
            c.write(0, list(data[:n]) if col.dtype == "str" else data[:n])
        if c.n < n:
            c._set_length(n)

    def begin_migration(self) -> None:
        nxt = self.root.with_name(L.TABLE_DIR + L.NEXT)
        if nxt.exists():
            shutil.rmtree(nxt)
        for name, c in self.cols.items():
            p = nxt / f"{name}.npy"
            p.parent.mkdir(parents=True, exist_ok=True)
            os.link(c.path, p)  # the same file, not a copy
        self._use(nxt)

    def _use(self, root: Path) -> None:
        for c in self.cols.values():
            c.close()
        self.root = root
        self.cols = {name: NpyColumn(root / f"{name}.npy", c.col) for name, c in self.cols.items()}

    def save_layout(self, layout: Layout) -> None:
        _save(self.root, layout)
        self.layout = layout
        if self.root.name == L.TABLE_DIR + L.NEXT:  # the rewritten table replaces the old one
            make_files_durable([c.path for c in self.cols.values()] + [self.root / "layout.json"], self.root)
            table, old = self.root.with_name(L.TABLE_DIR), self.root.with_name(L.TABLE_DIR + L.OLD)
            os.replace(table, old)
            os.replace(self.root, table)
            fsync_dir(table.parent)
            shutil.rmtree(old)
            self._use(table)

    @classmethod
    def open(cls, out: Path) -> NpyTable | None:
        table, nxt, old = out / L.TABLE_DIR, out / (L.TABLE_DIR + L.NEXT), out / (L.TABLE_DIR + L.OLD)
        if nxt.exists():  # a rewrite that a kill cut short: complete (swap it in) or not (drop it)
            if table.exists():
                shutil.rmtree(nxt)
            else:
                os.replace(nxt, table)
        if old.exists():
            shutil.rmtree(old)
        p = out / L.TABLE_DIR / "layout.json"
        if not p.exists():
            return None
        return cls(p.parent, Layout.from_json(p.read_text()))

    def write(self, seq0: int, values: dict[str, Any]) -> None:
        for name, v in values.items():
            self.cols[name].write(seq0, v)

    def done_mask(self) -> np.ndarray:
        return self.cols["done"].read().astype(bool)

    def clear(self, positions: np.ndarray) -> None:
        for start, stop in runs(positions):
            for _name, col in self.cols.items():
                e = empty(col.col, stop - start)
                col.write(start, list(e) if col.col.dtype == "str" else e)

    def extend(self, n: int) -> None:
        """At least ``n`` rows in every column (the whole task list, at the end of a run)."""
        for c in self.cols.values():
            if c.n < n:
                c._set_length(n)

    def make_durable(self) -> None:
        """(On the commit's thread.) Not while a migration renames and drops the files."""
        with self.lock:
            make_files_durable([c.path for c in self.cols.values()] + [self.root / "layout.json"], self.root)

    def close(self) -> None:
        for c in self.cols.values():
            c.close()


def _save(root: Path, layout: Layout) -> None:
    tmp = root / f"{L.TMP}layout.json"
    tmp.write_text(layout.to_json())
    os.replace(tmp, root / "layout.json")


def read_layout(out: Path) -> Layout | None:
    p = out / L.TABLE_DIR / "layout.json"
    return Layout.from_json(p.read_text()) if p.exists() else None


__all__ = ["NpyColumn", "NpyTable", "read_layout"]
