"""HDF5 sinks: one file written by the master, or part files written by workers (direct mode).

Stream mode writes ``OUT.partial`` and renames it to ``OUT`` when the run ends. Each
result's datasets are created contiguous with their space allocated at once, so chunks are
written with ``pwrite`` at the dataset's file offset, straight from the receive buffer,
without going through HDF5 per chunk. A result is built under ``/_staging`` and moved to
``/results/<id>`` when complete; ``commit`` flushes HDF5's metadata and fsyncs the file
before the journal calls the result done.

Direct mode: each worker writes one part file per result, ``OUT.parts/<id>.r<rank>.a<n>.h5``
(a temporary name, fsync, then rename), and the master's file holds an external link at
``/results/<id>``, so readers use the same paths in both modes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from . import results as R
from .errors import UsageError
from .sinks import Sink, Target, _fsync_dir, check_id

log = logging.getLogger("mpigather")

PARTIAL = ".partial"
PARTS = ".parts"


def _h5_storable(dt: np.dtype) -> bool:
    try:
        h5py.h5t.py_create(dt, logical=True)
    except (TypeError, ValueError):
        return False
    return True


def _dcpl() -> h5py.h5p.PropDCID:
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    return dcpl


def create_result(group: h5py.Group, name: str, header: R.Header, meta: dict[str, Any]) -> tuple[Any, list[Any]]:
    """Create the object of one result under ``group``; returns it and where each part's bytes go."""
    attrs: dict[str, Any] = {"kind": header.kind}
    attrs.update({k: v for k, v in meta.items() if v is not None})
    offsets: list[Any] = []
    if header.kind in ("dict", "none"):
        obj = group.create_group(name)
        for spec in header.parts:
            offsets.append(_create_dataset(obj, spec.key or "data", spec))
    else:
        offsets.append(_create_dataset(group, name, header.parts[0]))
        obj = group[name]
    for k, v in attrs.items():
        obj.attrs[k] = v
    return obj, offsets


def _create_dataset(group: h5py.Group, name: str, spec: R.PartSpec) -> Any:
    dt = spec.dtype
    if _h5_storable(dt):
        shape, store_dt = spec.shape, dt
    else:  # datetime, unicode...: raw bytes, with what it takes to rebuild it
        shape, store_dt = (spec.nbytes,), np.dtype(np.uint8)
    ds = group.create_dataset(name, shape=shape, dtype=store_dt, dcpl=_dcpl() if spec.nbytes else None)
    if store_dt is not dt:
        ds.attrs["mpigather_dtype"] = json.dumps(spec.descr) if not isinstance(spec.descr, str) else spec.descr
        ds.attrs["mpigather_shape"] = np.asarray(spec.shape, dtype=np.int64)
    if not spec.nbytes:
        return None
    off = ds.id.get_offset()
    return ds if off is None else int(off)  # scalar datasets have no offset: written through h5py


def _write_part(fd: int, place: Any, offset: int, buf: Any) -> None:
    """Write a chunk of a part: pwrite at its file offset, or through h5py for a dataset with none."""
    if isinstance(place, int):
        _pwrite(fd, buf, place + offset)
        return
    ds = place
    raw = np.frombuffer(buf, dtype=np.uint8)
    if offset != 0 or raw.nbytes != ds.dtype.itemsize * ds.size:
        raise RuntimeError(f"dataset {ds.name} has no file offset and cannot be written in chunks")
    ds[()] = raw.view(ds.dtype).reshape(ds.shape)


def _pwrite(fd: int, buf: Any, pos: int) -> None:
    view = memoryview(buf).cast("B")
    while len(view):
        n = os.pwrite(fd, view, pos)
        view, pos = view[n:], pos + n


class _H5Target(Target):
    def __init__(self, sink: Hdf5Sink, tid: Any, header: R.Header, meta: dict[str, Any]) -> None:
        self.sink, self.tid, self.header, self.meta = sink, tid, header, meta
        self.name = check_id(tid)
        self.stage = f"{self.name}.r{meta.get('rank', 0)}.a{meta.get('attempt', 1)}"
        _, self.offsets = create_result(sink.staging, self.stage, header, meta)

    def write(self, part: int, offset: int, buf: Any) -> None:
        _write_part(self.sink.fd, self.offsets[part], offset, buf)

    def finish(self) -> None:
        f = self.sink.f
        dest = f"/results/{self.name}"
        # left by an earlier attempt that never reached the journal
        if f["results"].get(self.name, getlink=True) is not None:
            del f[dest]
        f.move(f"/_staging/{self.stage}", dest)
        self.sink._ready.append((self.tid, self.meta))

    def discard(self) -> None:
        try:
            del self.sink.staging[self.stage]
        except KeyError:
            pass


class Hdf5Sink(Sink):
    """The master's HDF5 file: results streamed into it, or links to workers' part files."""

    kind = "hdf5"

    def __init__(self, out: str | os.PathLike[str], *, resume: bool = False) -> None:
        self.path = Path(out)
        self.partial = self.path.with_name(self.path.name + PARTIAL)
        self.parts_dir = self.path.with_name(self.path.name + PARTS)
        if resume and self.path.exists() and not self.partial.exists():
            os.replace(self.path, self.partial)  # reopen a finished run to retry its failures
        try:
            self.f = h5py.File(self.partial, "a" if resume else "w", track_order=False)
        except OSError as e:
            if not (resume and self.partial.exists()):
                raise UsageError(f"cannot write HDF5 output {self.partial}: {e}") from None
            aside = self.partial.with_name(self.partial.name + f".unreadable-{os.getpid()}")
            os.replace(self.partial, aside)
            log.error("%s could not be opened (%s); moved it to %s, its results will be recomputed",
                      self.partial, e, aside)
            self.f = h5py.File(self.partial, "w", track_order=False)
        self.f.require_group("results")
        if "_staging" in self.f:
            del self.f["_staging"]
        self.staging = self.f.create_group("_staging")
        self.f.flush()
        self.fd = os.open(self.partial, os.O_RDWR)
        self._ready: list[tuple[Any, dict[str, Any]]] = []

    def open(self, tid: Any, header: R.Header, meta: dict[str, Any]) -> Target:
        return _H5Target(self, tid, header, meta)

    def adopt(self, tid: Any, header: R.Header, path: str, meta: dict[str, Any]) -> None:
        name = check_id(tid)
        dest = f"/results/{name}"
        if self.f["results"].get(name, getlink=True) is not None:
            del self.f[dest]
        rel = os.path.relpath(path, self.path.parent)
        self.f[dest] = h5py.ExternalLink(rel, dest)
        self._ready.append((tid, meta))

    def commit(self) -> list[tuple[Any, dict[str, Any]]]:
        if not self._ready:
            return []
        self.f.flush()
        os.fsync(self.fd)
        ready, self._ready = self._ready, []
        return ready

    def reconcile(self, done: set[Any]) -> set[Any]:
        by_name = {check_id(t): t for t in done}
        res = self.f["results"]
        present, linked = set(), set()
        for name in list(res):
            link = res.get(name, getlink=True)
            target = None
            if isinstance(link, h5py.ExternalLink):
                target = os.path.normpath(self.path.parent / link.filename)
            if name in by_name and (target is None or os.path.exists(target)):
                present.add(by_name[name])
                if target is not None:
                    linked.add(target)
            else:
                del res[name]
        if self.parts_dir.is_dir():
            for p in self.parts_dir.iterdir():
                if os.path.normpath(p) not in linked:
                    p.unlink()
        self.f.flush()
        os.fsync(self.fd)
        return present

    def set_run_info(self, info: dict[str, Any]) -> None:
        self.f.attrs["mpigather"] = json.dumps(info, default=str)

    def close(self, complete: bool) -> None:
        if not self.f.id.valid:
            return
        if "_staging" in self.f and len(self.f["_staging"]) == 0:
            del self.f["_staging"]
        self.f.flush()
        self.f.close()
        os.fsync(self.fd)
        os.close(self.fd)
        if complete:
            os.replace(self.partial, self.path)
            _fsync_dir(self.path.parent)


class Hdf5PartSink(Sink):
    """Direct mode, on a worker: one small HDF5 file per result, renamed into ``OUT.parts``."""

    kind = "hdf5-part"

    def __init__(self, out: str | os.PathLike[str]) -> None:
        self.out = Path(out)
        self.dir = self.out.with_name(self.out.name + PARTS)
        self.dir.mkdir(exist_ok=True)
        self._ready: list[tuple[Path, Path]] = []

    def _names(self, tid: Any, meta: dict[str, Any]) -> tuple[Path, Path]:
        stem = f"{check_id(tid)}.r{meta.get('rank', 0)}.a{meta.get('attempt', 1)}.h5"
        return self.dir / f".tmp.{stem}", self.dir / stem

    def open(self, tid: Any, header: R.Header, meta: dict[str, Any]) -> Target:
        tmp, final = self._names(tid, meta)
        self._last = final
        return _PartTarget(self, tmp, final, tid, header, meta)

    def commit(self) -> list[tuple[Any, dict[str, Any]]]:
        for tmp, final in self._ready:
            os.replace(tmp, final)
        if self._ready:
            _fsync_dir(self.dir)
        self._ready.clear()
        return []

    def result_path(self, tid: Any, header: R.Header) -> str:
        return str(self._last)


class _PartTarget(Target):
    def __init__(self, sink: Hdf5PartSink, tmp: Path, final: Path, tid: Any, header: R.Header,
                 meta: dict[str, Any]) -> None:
        self.sink, self.tmp, self.final = sink, tmp, final
        self.f = h5py.File(tmp, "w")
        name = check_id(tid)
        _, self.offsets = create_result(self.f.require_group("results"), name, header, meta)
        self.f.flush()
        self.fd = os.open(tmp, os.O_RDWR)

    def write(self, part: int, offset: int, buf: Any) -> None:
        _write_part(self.fd, self.offsets[part], offset, buf)

    def finish(self) -> None:
        self.f.close()
        os.fsync(self.fd)
        os.close(self.fd)
        self.sink._ready.append((self.tmp, self.final))

    def discard(self) -> None:
        if self.f.id.valid:
            self.f.close()
            os.close(self.fd)
        self.tmp.unlink(missing_ok=True)


def remove_parts(out: str | os.PathLike[str]) -> None:
    p = Path(out)
    shutil.rmtree(p.with_name(p.name + PARTS), ignore_errors=True)
