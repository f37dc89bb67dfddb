"""HDF5: one file written by the master, or part files written by workers (direct mode).

Stream mode writes ``OUT.partial`` and renames it to ``OUT`` when the run ends. A result's
datasets are created contiguous with their space allocated at once, so chunks are written
with ``pwrite`` at the dataset's file offset, straight from the receive buffer, without going
through HDF5 per chunk. A result is built as an anonymous object (no name, no link) and
linked as ``/results/<id>`` with the batch it completes, so a killed run leaves its
unfinished ones out of the tree (``/_staging``, where older runs built them, is removed when
the file is opened). Each finished
result adds a row to ``/tasks`` (its id, parameters and metadata), appended in batches;
``make_durable`` flushes HDF5's metadata and fsyncs the file before the journal calls the
batch done, so a resume finds a commit cut short as rows past the journal's count.

Direct mode: each worker writes its results into part files ``OUT.parts/r<rank>-<pid>-<n>.h5``,
one per batch (written under a temporary name, closed, fsynced, renamed), and the master's
file holds an external link at ``/results/<id>``, so readers use the same paths in both modes
(the workers' side: ``hdf5_parts``). A result's nodes are made in ``hdf5_nodes``.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .. import results as R
from ..errors import UsageError
from . import layout as L
from .base import Meta, Sink, Target, fsync_dir, remove_quietly
from .hdf5_nodes import _STR, _exists, _open_file, _write_part, create_unlinked, link_result
from .table_base import RowsDone, Staged, compare_done
from .table_hdf5 import H5Table
from .table_layout import Layout
from .table_store import fit_layout

log = logging.getLogger("mpigather")

ROW = np.dtype([("seq", "<i8"), ("id", _STR), ("int_id", "?"), ("params", _STR), ("rank", "<i4"),
                ("attempt", "<i4"), ("duration", "<f8"), ("bytes", "<i8"), ("crc32c", "<u4"), ("kind", _STR),
                ("path", _STR)])
ROWS_CHUNK = 4096


class _H5Target(Target):
    def __init__(self, sink: Hdf5Sink, tid: Any, header: R.Header, meta: Meta) -> None:
        self.sink, self.tid, self.header, self.meta = sink, tid, header, meta
        L.check_id(tid)
        self.node, self.places = create_unlinked(sink.f.id, header, top_kind=False)

    def write(self, part: int, offset: int, buf: Any) -> None:
        _write_part(self.sink.fd, self.places[part], offset, buf)

    def finish(self) -> None:
        self.sink._done(self.tid, self.meta, self.node)

    def discard(self) -> None:
        self.node, self.places = None, []  # never linked: closed, HDF5 frees it


def _group(f: h5py.File, name: str) -> h5py.Group:
    """``/results`` is created as a new-style group (link creation order tracked): an old-style
    group keeps every name in one local heap, which past about 1.4 million results outgrows
    HDF5's metadata cache, and each link then rewrites it (milliseconds a result instead of 30
    us). A group made by an older run stays as it is."""
    if name in f:
        return f[name]
    return f.create_group(name, track_order=(name == L.RESULTS))


def _append(dsid: Any, rows: np.ndarray) -> None:
    """Append ``rows`` to a one-dimensional extendible dataset through h5py's low-level API
    (half the cost of ``resize`` and a sliced assignment, which a commit pays once)."""
    n, k = dsid.shape[0], len(rows)
    dsid.set_extent((n + k,))
    space = dsid.get_space()
    space.select_hyperslab((n,), (k,))
    dsid.write(h5py.h5s.create_simple((k,)), space, rows, mtype=_mem_type(rows.dtype))


@functools.lru_cache(maxsize=4)
def _mem_type(dt: np.dtype) -> Any:
    return h5py.h5t.py_create(dt)  # (a compound with strings: tens of microseconds each time)


def _lock_refused(e: OSError) -> bool:
    return e.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES) or "lock" in str(e).lower()


class Hdf5Sink(Sink):
    """The master's HDF5 file: results streamed into it, or links to workers' part files."""

    kind = "hdf5"

    def __init__(self, out: str | os.PathLike[str], *, resume: bool = False) -> None:
        self.path: Path = Path(out)
        self.partial = self.path.with_name(self.path.name + L.PARTIAL)
        self.parts_dir = self.path.with_name(self.path.name + L.PARTS)
        self.set_aside: Path | None = None
        if resume and self.path.exists() and not self.partial.exists():
            os.replace(self.path, self.partial)  # reopen a finished run to retry its failures
        self.f = self._open(resume)
        self.results = _group(self.f, L.RESULTS)
        self._damage: BaseException | None = None
        try:
            if L.STAGING in self.f:  # what a killed run left unfinished
                del self.f[L.STAGING]
        except (OSError, KeyError, ValueError, RuntimeError) as e:
            self._damage = e  # reconcile copies what was committed into a fresh file
        if L.TASKS not in self.f:
            self.f.create_dataset(L.TASKS, shape=(0,), maxshape=(None,), dtype=ROW, chunks=(ROWS_CHUNK,))
        self.tasks = self.f[L.TASKS]
        self.f.flush()
        self.fd = os.open(self.partial, os.O_RDWR)
        self._ready: list[tuple[Any, Meta, Any]] = []  # (id, meta, its unlinked node: None for a link)
        self._rows: list[RowsDone] = []
        self._staged = Staged()  # rows received, written at take_ready
        self.table: H5Table | None = None if self._damage is not None else H5Table.open(self.f)

    def _open(self, resume: bool) -> h5py.File:
        try:
            return _open_file(self.partial, "a" if resume else "w")
        except OSError as e:
            if _lock_refused(e):
                raise UsageError(f"{self.partial} is open in another program, which holds HDF5's lock on it"
                                 f" ({e}); close it (an h5py reader, HDFView...) and run again") from None
            if not (resume and self.partial.exists()):
                raise UsageError(f"cannot write HDF5 output {self.partial}: {e}") from None
            # we hold the output's lock, and HDF5 could lock the file: it is damaged, not in use
            aside = self.partial.with_name(self.partial.name + f".unreadable-{os.getpid()}")
            os.replace(self.partial, aside)
            self.set_aside = aside
            log.error("%s is damaged and cannot be opened (%s); moved it to %s; its results run again",
                      self.partial, e, aside)
            return _open_file(self.partial, "w")

    def open(self, tid: Any, header: R.Header, meta: Meta) -> Target:
        return _H5Target(self, tid, header, meta)

    def put(self, tid: Any, header: R.Header, bufs: list[Any], meta: Meta) -> None:
        # a whole small result in one call, unlinked like a streamed one: only take_ready links
        # results into /results, so a killed run leaves its unfinished ones out of the tree
        L.check_id(tid)
        node, places = create_unlinked(self.f.id, header, whole=True, top_kind=False)
        for place, buf in zip(places, bufs):
            if len(buf):
                _write_part(self.fd, place, 0, buf)
        self._done(tid, meta, node)

    def put_rows(self, seq0: int, tids: list[Any], rows: Any, meta: Meta) -> bool:
        if self.table is None:
            self.table = H5Table.create(self.f, Layout.empty(), self.total)
        t = self.table
        t.layout = fit_layout(t, t.layout, rows, tids, self._write_staged)
        self._staged.add(seq0, t.layout.batch_values(tids, rows, meta))
        self._rows.append(RowsDone.of(seq0, tids, meta))
        return True

    def _write_staged(self) -> None:
        if self._staged:
            assert self.table is not None
            if self.total:  # every task's row at once, as soon as their number is known: no resizing at each write
                self.table.extend(self.total)
            self.table.write_runs(list(self._staged.take()))

    def adopt(self, tid: Any, header: R.Header, path: str, meta: Meta) -> None:
        name = L.check_id(tid)
        if _exists(self.results, name):
            del self.results[name]
        rel = os.path.relpath(path, self.path.parent)
        self.results[name] = h5py.ExternalLink(rel, f"/{L.RESULTS}/{name}")
        self._done(tid, {**meta, "path": rel})

    def _done(self, tid: Any, meta: Meta, node: Any = None) -> None:
        self._ready.append((tid, meta, node))

    def take_ready(self) -> Any:
        self._write_staged()
        if not self._ready:
            if not self._rows:
                return None
            only_rows, self._rows = self._rows, []
            return only_rows
        staged, self._ready = self._ready, []
        results = self.results.id
        for tid, _, node in staged:  # link the batch's results into place, then its rows
            if node is not None:
                link_result(node, results, L.check_id(tid).encode())
        ready = [(tid, m) for tid, m, _ in staged]
        del staged
        rows = np.empty(len(ready), dtype=ROW)
        for i, (tid, m) in enumerate(ready):
            rows[i] = (m.get("seq", -1), str(tid), type(tid) is int, m.get("params") or "", m.get("rank", 0),
                       m.get("attempt", 1), m.get("duration") or 0.0, m.get("bytes", 0), m.get("crc32c") or 0,
                       m.get("kind") or "", m.get("path") or "")
        _append(self.tasks.id, rows)
        done_rows, self._rows = self._rows, []
        return ready + done_rows

    def make_durable(self, batch: Any) -> list[tuple[Any, Meta]]:
        self.f.flush()  # HDF5's metadata (h5py serializes this with the master's own HDF5 calls)
        os.fsync(self.fd)
        return list(batch)

    def reconcile(self, done: Any) -> tuple[int, Any]:
        n_done = done.n_whole
        lost: Any = ()
        try:
            if self._damage is not None:
                raise self._damage
            n_rows = self.tasks.shape[0]
            if n_rows > n_done:  # a commit cut short: undo what the journal never called done
                for tid in self.tasks.fields("id")[n_done:]:
                    name = tid.decode() if isinstance(tid, bytes) else str(tid)
                    if _exists(self.results, name):
                        del self.results[name]
                self.tasks.resize((n_done,))
            self.f.flush()
        except (OSError, KeyError, ValueError, RuntimeError) as e:
            # what the killed run was writing left HDF5's metadata damaged: keep what was committed
            n_rows = self._salvage(n_done, e)
        lost = self._reconcile_rows(done)
        if self.parts_dir.is_dir():
            linked = self._linked_parts(min(n_rows, n_done))
            for p in self.parts_dir.iterdir():
                if p.name not in linked:
                    remove_quietly(p)
        os.fsync(self.fd)
        return min(n_rows, n_done), lost

    def _reconcile_rows(self, done: Any) -> Any:
        """Rows the journal never called done go back to empty; returns the done rows that are
        not in the table (they run again)."""
        if self.table is None:
            return compare_done(np.zeros(0, dtype=bool), done)[1]
        extra, lost = compare_done(self.table.done_mask(), done)
        if len(extra):
            self.table.clear(extra)
        return lost

    def _salvage(self, n_done: int, why: BaseException) -> int:
        """Copy the journaled results (and their rows) into a fresh file, which replaces the
        damaged one. Returns how many were saved; a result that cannot be read runs again."""
        fresh = self.partial.with_name(self.partial.name + ".salvage")
        saved = 0
        with h5py.File(fresh, "w", track_order=False) as out:
            res = _group(out, L.RESULTS)
            rows: list[Any] = []
            try:
                old_rows = self.tasks[:n_done]
            except Exception:  # the task table itself is lost: nothing can be vouched for
                old_rows = np.empty(0, dtype=ROW)
            for row in old_rows:
                name = row["id"].decode() if isinstance(row["id"], bytes) else str(row["id"])
                try:
                    link = self.results.get(name, getlink=True)
                    if isinstance(link, h5py.ExternalLink):
                        res[name] = h5py.ExternalLink(link.filename, link.path)
                    else:
                        self.f.copy(self.results[name], res, name)
                except Exception:
                    continue
                rows.append(row)
                saved += 1
            out.create_dataset(L.TASKS, data=np.array(rows, dtype=ROW), maxshape=(None,), chunks=(ROWS_CHUNK,))
            try:
                if L.TABLE in self.f:
                    self.f.copy(self.f[L.TABLE], out, L.TABLE)
            except Exception:  # the table is lost too: its rows run again
                if L.TABLE in out:
                    del out[L.TABLE]
            out.flush()
        try:
            self.f.close()
        except Exception:
            pass
        os.close(self.fd)
        os.replace(fresh, self.partial)
        log.warning("%s was damaged by the run that was killed (%s); its %d journaled result(s) were copied to a"
                    " fresh file%s", self.partial, why, saved,
                    f", {n_done - saved} that could not be read run again" if saved < n_done else "")
        self.f = _open_file(self.partial, "a")
        self.results, self.tasks = self.f[L.RESULTS], self.f[L.TASKS]
        self.table = H5Table.open(self.f)
        self.fd = os.open(self.partial, os.O_RDWR)
        return saved

    def _linked_parts(self, n: int) -> set[str]:
        linked: set[str] = set()
        for start in range(0, n, 1 << 20):
            for p in self.tasks.fields("path")[start : min(n, start + (1 << 20))]:
                if p:
                    linked.add(os.path.basename(p.decode() if isinstance(p, bytes) else p))
        return linked

    def remove_leftovers(self) -> None:
        if self.parts_dir.is_dir():
            for p in self.parts_dir.iterdir():
                if p.name.startswith(L.TMP):
                    remove_quietly(p)

    def done_ids(self) -> list[tuple[Any, int]]:
        ids = self.tasks.fields("id")[:]
        ints = self.tasks.fields("int_id")[:]
        seqs = self.tasks.fields("seq")[:]
        return [(int(t) if i else (t.decode() if isinstance(t, bytes) else t), int(s))
                for t, i, s in zip(ids, ints, seqs)]

    def set_run_info(self, info: dict[str, Any]) -> None:
        self.f.attrs[L.ATTR_RUN] = json.dumps(info, default=str)

    def close(self, complete: bool) -> None:
        if not self.f.id.valid:
            return
        if not complete:  # a failed run: what is durable is journaled; a flush may fail again (disk full)
            try:
                self.f.close()
            finally:
                os.close(self.fd)
            return
        if self.table is not None and self.total:
            self.table.extend(self.total)  # a row for every task
        self.f.flush()
        self.f.close()
        os.fsync(self.fd)
        os.close(self.fd)
        if complete:
            os.replace(self.partial, self.path)
            fsync_dir(self.path.parent)


