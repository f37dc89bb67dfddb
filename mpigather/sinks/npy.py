"""A directory of ``.npy`` files (see ``layout`` for the names): the master's sink, and in
direct mode each worker's writer.

Every result is written under a temporary name (``.tmp.<id>.r<rank>.a<attempt>``), made
durable, then renamed to its final name, so a reader never sees a partial one. A part file
is open only while its bytes are written: descriptors stay few whatever the batch size.
``_tasks.jsonl`` gets one line per result, written and synced before the rename, so a
resume can tell a commit that was cut short (lines past the journal's count) and undo it.
"""

from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from .. import results as R
from . import layout as L
from .base import Meta, Sink, Target, fill, fsync_dir, make_files_durable, pwrite_all, remove_quietly
from .table_base import RowsDone, Staged, compare_done
from .table_layout import Layout
from .table_npy import NpyTable
from .table_store import fit_layout


def npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """The bytes of a ``.npy`` header, padded so that the data starts aligned."""
    bio = io.BytesIO()
    d = {"descr": R.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
    try:
        np.lib.format.write_array_header_1_0(bio, d)
    except ValueError:  # header too long for format 1.0
        bio = io.BytesIO()
        np.lib.format.write_array_header_2_0(bio, d)
    return bio.getvalue()


def _is_dir_node(header: R.Header, kind: str, ref: Any) -> bool:
    return kind == "dict" or (kind == "object" and ref[1] > 1)


def final_name(header: R.Header, name: str) -> str:
    return name + L.EXT[header.kind]


class _NpyTarget(Target):
    """One result's files, under a temporary name until the commit renames it."""

    def __init__(self, root: Path, tid: Any, header: R.Header, meta: Meta,
                 on_finish: Any = None) -> None:
        self.tid, self.header, self.meta = tid, header, meta
        self._on_finish = on_finish
        name = L.check_id(tid)
        self.tmp = root / f"{L.TMP}{name}.r{meta.get('rank', 0)}.a{meta.get('attempt', 1)}"
        self.final = root / final_name(header, name)
        self.files: list[Path] = []  # every file written, for the fsync
        self.dirs: list[Path] = []
        self.parts: list[tuple[Path, int]] = [(Path(), 0)] * len(header.parts)  # file, data offset
        self._fd: int = -1
        self._fd_part = -1
        remove_quietly(self.tmp)  # left by a run that was killed
        for path, kind, ref in R.walk(header):
            self._create(self.tmp.joinpath(*path[:-1], path[-1] + L.EXT[kind]) if path else self.tmp,
                         kind, ref)

    def _create(self, p: Path, kind: str, ref: Any) -> None:
        if _is_dir_node(self.header, kind, ref):
            p.mkdir()
            self.dirs.append(p)
            if kind == "object":
                first, n = ref
                for i in range(n):
                    self._part_file(p / (L.PICKLE if i == 0 else str(i - 1)), first + i, b"")
            return
        if kind in ("array", "generic"):
            spec = self.header.parts[ref]
            self._part_file(p, ref, npy_header(spec.dtype, spec.shape))
        elif kind in ("bytes", "object"):
            self._part_file(p, ref if kind == "bytes" else ref[0], b"")
        elif kind == "none":
            self._small_file(p, b"")
        elif kind in R.SCALARS:
            self._small_file(p, pickle.dumps(ref, protocol=4))

    def _part_file(self, p: Path, part: int, head: bytes) -> None:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            if head:
                pwrite_all(fd, head, 0)
            nbytes = self.header.parts[part].nbytes
            if nbytes:
                os.ftruncate(fd, len(head) + nbytes)
        finally:
            os.close(fd)
        self.parts[part] = (p, len(head))
        self.files.append(p)

    def _small_file(self, p: Path, data: bytes) -> None:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            pwrite_all(fd, data, 0)
        finally:
            os.close(fd)
        self.files.append(p)

    def write(self, part: int, offset: int, buf: Any) -> None:
        if part != self._fd_part:  # chunks come part by part: one descriptor at a time
            self._close()
            self._fd = os.open(self.parts[part][0], os.O_WRONLY)
            self._fd_part = part
        pwrite_all(self._fd, buf, self.parts[part][1] + offset)

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd, self._fd_part = -1, -1

    def finish(self) -> None:
        self._close()
        if self._on_finish is not None:
            self._on_finish(self)

    def discard(self) -> None:
        self._close()
        remove_quietly(self.tmp)

    def make_durable(self, root: Path) -> None:
        make_files_durable(self.files, root)
        for d in reversed(self.dirs):
            fsync_dir(d)


def place(tmp: Path, final: Path) -> None:
    """Rename a complete result into its final name, replacing a stale one."""
    if final.exists():  # a stale copy from an earlier run that the journal never called done
        remove_quietly(final)
    os.rename(tmp, final)


def task_row(tid: Any, meta: Meta) -> dict[str, Any]:
    """The line of ``_tasks.jsonl`` (and the row of HDF5's /tasks) for a finished task."""
    return {"seq": meta.get("seq", -1), "id": tid, "params": meta.get("params"), "rank": meta.get("rank", 0),
            "attempt": meta.get("attempt", 1), "duration": meta.get("duration", 0.0), "bytes": meta.get("bytes", 0),
            "crc32c": meta.get("crc32c") or 0, "kind": meta.get("kind")}


class NpyDirSink(Sink):
    """The master's sink for ``--out DIR``."""

    kind = "npy"

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root: Path = Path(root)
        self.path = self.root
        self.root.mkdir(parents=True, exist_ok=True)
        self._ready: list[_NpyTarget] = []
        self._adopted: list[tuple[Path, Path, Any, Meta]] = []
        self._rows = open(self.root / L.TASKS_JSONL, "ab")
        self.table: NpyTable | None = NpyTable.open(self.root)
        self._ready_rows: list[RowsDone] = []
        self._staged = Staged()  # rows received, written at take_ready

    def open(self, tid: Any, header: R.Header, meta: Meta) -> Target:
        return _NpyTarget(self.root, tid, header, meta, on_finish=self._finished)

    def _finished(self, target: _NpyTarget) -> None:
        self._ready.append(target)  # (the list is swapped by take_ready: look it up now)

    def put_rows(self, seq0: int, tids: list[Any], rows: Any, meta: Meta) -> bool:
        if self.table is None:
            self.table = NpyTable.create(self.root, Layout.empty())
        t = self.table
        t.layout = fit_layout(t, t.layout, rows, tids, self._write_staged)
        self._staged.add(seq0, t.layout.batch_values(tids, rows, meta))
        self._ready_rows.append(RowsDone.of(seq0, tids, meta))
        return True

    def _write_staged(self) -> None:
        if self._staged:
            assert self.table is not None
            for start, values in self._staged.take():
                self.table.write(start, values)

    def adopt(self, tid: Any, header: R.Header, path: str, meta: Meta) -> None:
        """The worker made it durable under a temporary name; the commit renames the winner into place."""
        self._adopted.append((Path(path), self.root / final_name(header, L.check_id(tid)), tid, meta))

    def take_ready(self) -> Any:
        self._write_staged()
        if not self._ready and not self._adopted and not self._ready_rows:
            return None
        batch = (self._ready, self._adopted, self._ready_rows)
        self._ready, self._adopted, self._ready_rows = [], [], []
        return batch

    def make_durable(self, batch: Any) -> list[Any]:
        ready, adopted, rows = batch
        if rows:
            assert self.table is not None
            self.table.make_durable()
        if not ready and not adopted:
            return list(rows)
        if ready:
            make_files_durable([f for t in ready for f in t.files], self.root)
            for t in ready:
                for d in reversed(t.dirs):
                    fsync_dir(d)
        done = [(t.tid, t.meta) for t in ready] + [(tid, meta) for _, _, tid, meta in adopted]
        # the index lines first: a commit cut short after them is found and undone by a resume
        self._rows.write(b"".join(json.dumps(task_row(tid, meta), default=str).encode() + b"\n"
                                  for tid, meta in done))
        self._rows.flush()
        os.fsync(self._rows.fileno())
        for t in ready:
            place(t.tmp, t.final)
        for tmp, final, _, _ in adopted:
            place(tmp, final)
        fsync_dir(self.root)
        return done + rows

    def reconcile(self, done: Any) -> tuple[int, Any]:
        n_done = done.n_whole
        lost: Any = ()
        if self.table is not None:
            cleared, lost = compare_done(self.table.done_mask(), done)
            if len(cleared):
                self.table.clear(cleared)
            self.table.make_durable()
        for entry in os.scandir(self.root):
            if entry.name.startswith(L.TMP):
                remove_quietly(entry.path)
        rows_path = self.root / L.TASKS_JSONL
        self._rows.close()
        keep_bytes, n_rows, extra = _cut_rows(rows_path, n_done)
        for row in extra:  # finished but never journaled: undo
            name = L.check_id(row["id"])
            for ext in set(L.EXT.values()):
                p = self.root / (name + ext)
                if (ext or p.is_dir()) and p.exists():
                    remove_quietly(p)
        if rows_path.exists() and rows_path.stat().st_size != keep_bytes:  # extra lines, or a torn one
            with open(rows_path, "r+b") as f:
                f.truncate(keep_bytes)
                os.fsync(f.fileno())
        self._rows = open(rows_path, "ab")
        return min(n_rows, n_done), lost

    def remove_leftovers(self) -> None:
        for entry in os.scandir(self.root):
            if entry.name.startswith(L.TMP):
                remove_quietly(entry.path)

    def done_ids(self) -> list[tuple[Any, int]]:
        return [(row["id"], row.get("seq", -1)) for row in read_rows(self.root / L.TASKS_JSONL)]

    def set_run_info(self, info: dict[str, Any]) -> None:
        tmp = self.root / f"{L.TMP}{L.RUN_INFO}"
        tmp.write_text(json.dumps(info, indent=1, default=str))
        os.replace(tmp, self.root / L.RUN_INFO)

    def close(self, complete: bool) -> None:
        if not self._rows.closed:
            self._rows.close()
        if self.table is not None:
            if complete and self.total:
                self.table.extend(self.total)  # a row for every task
            self.table.close()


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a ``_tasks.jsonl``."""
    if not path.exists():
        return []
    out = []
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            out.append(json.loads(line))
    return out


def _cut_rows(path: Path, n_keep: int) -> tuple[int, int, list[dict[str, Any]]]:
    """Scan ``_tasks.jsonl``: (bytes of its first ``n_keep`` lines, complete lines, the lines past them)."""
    if not path.exists():
        return 0, 0, []
    keep = 0
    n = 0
    extra: list[dict[str, Any]] = []
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break  # torn
            if n < n_keep:
                keep += len(line)
            else:
                extra.append(json.loads(line))
            n += 1
    return keep, n, extra


class NpyWriter:
    """Direct mode, on a worker: writes results under their temporary names; ``flush`` makes
    them durable and returns their paths for the master, which renames the winners."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._pending: list[_NpyTarget] = []

    def write(self, tid: Any, header: R.Header, bufs: list[Any], meta: Meta) -> str:
        t = _NpyTarget(self.root, tid, header, meta)
        fill(t, bufs)
        self._pending.append(t)
        return str(t.tmp)

    def flush(self) -> None:
        if self._pending:
            make_files_durable([f for t in self._pending for f in t.files], self.root)
            for t in self._pending:
                for d in reversed(t.dirs):
                    fsync_dir(d)
            fsync_dir(self.root)
            self._pending.clear()

    def close(self) -> None:
        self.flush()
