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

import functools
import json
import logging
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from . import results as R
from .errors import UsageError
from .sinks import Sink, Target, check_id, fsync_dir, pwrite_all

log = logging.getLogger("mpigather")

PARTIAL = ".partial"
PARTS = ".parts"


def _h5_storable(dt: np.dtype) -> bool:
    try:
        h5py.h5t.py_create(dt, logical=True)
    except (TypeError, ValueError):
        return False
    return True


@functools.lru_cache(maxsize=1)
def _dcpl() -> h5py.h5p.PropDCID:
    """Contiguous, allocated at creation, never filled: the bytes go straight to a known offset."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    return dcpl


@functools.lru_cache(maxsize=64)
def _attr_type(dt: np.dtype) -> Any:
    if dt.kind == "O":
        return h5py.h5t.py_create(h5py.string_dtype(), logical=True)
    return h5py.h5t.py_create(dt)


def _set_attrs(oid: Any, attrs: dict[str, Any]) -> None:
    """Attributes through h5py's low-level API: about 3x faster than ``obj.attrs[k] = v``
    (a file of many small results spends most of its time here). Strings are UTF-8 like h5py's."""
    space = h5py.h5s.create(h5py.h5s.SCALAR)
    for k, v in attrs.items():  # scalars only: numbers and strings
        arr = np.array(v, dtype=object) if isinstance(v, str) else np.asarray(v)
        assert arr.ndim == 0, k
        a = h5py.h5a.create(oid, k.encode(), _attr_type(arr.dtype), space)
        a.write(arr)


def create_result(group: h5py.Group, name: str, header: R.Header, meta: dict[str, Any]) -> list[Any]:
    """Create the object of one result under ``group``; returns where each part's bytes go."""
    attrs: dict[str, Any] = {"kind": header.kind}
    attrs.update({k: v for k, v in meta.items() if v is not None})
    places: list[Any] = []
    if header.kind in ("dict", "none"):
        gid = h5py.h5g.create(group.id, name.encode())
        for spec in header.parts:
            places.append(_create_dataset(gid, spec.key or "data", spec))
        _set_attrs(gid, attrs)
    else:
        places.append(_create_dataset(group.id, name, header.parts[0], attrs))
    return places


@functools.lru_cache(maxsize=64)
def _file_type(dt: np.dtype) -> Any:
    return h5py.h5t.py_create(dt, logical=True)


def _create_dataset(gid: Any, name: str, spec: R.PartSpec, attrs: dict[str, Any] | None = None) -> Any:
    """A contiguous dataset allocated at creation. Returns its file offset, or its id when it has none."""
    dt = spec.dtype
    extra: dict[str, Any] = {}
    if _h5_storable(dt):
        shape, store_dt = spec.shape, dt
    else:  # datetime, unicode...: raw bytes, with what it takes to rebuild it
        shape, store_dt = (spec.nbytes,), np.dtype(np.uint8)
        extra = {"mpigather_dtype": json.dumps(spec.descr) if not isinstance(spec.descr, str) else spec.descr,
                 "mpigather_shape": json.dumps(list(spec.shape))}
    space = h5py.h5s.create_simple(shape) if shape else h5py.h5s.create(h5py.h5s.SCALAR)
    dcpl = _dcpl() if spec.nbytes else None
    dsid = h5py.h5d.create(gid, name.encode(), _file_type(store_dt), space, dcpl=dcpl)
    if attrs or extra:
        _set_attrs(dsid, {**(attrs or {}), **extra})
    if not spec.nbytes:
        return None
    off = dsid.get_offset()
    return dsid if off is None else int(off)  # scalar datasets have no offset: written through HDF5


def _write_part(fd: int, place: Any, offset: int, buf: Any) -> None:
    """Write a chunk of a part: pwrite at its file offset, or through HDF5 for a dataset with none."""
    if isinstance(place, int):
        pwrite_all(fd, buf, place + offset)
        return
    dsid = place
    raw = np.frombuffer(buf, dtype=np.uint8)
    if offset != 0 or raw.nbytes != dsid.get_storage_size():
        raise RuntimeError("an HDF5 dataset with no file offset cannot be written in chunks")
    dsid.write(h5py.h5s.ALL, h5py.h5s.ALL, raw, mtype=dsid.get_type())


class _H5Target(Target):
    def __init__(self, sink: Hdf5Sink, tid: Any, header: R.Header, meta: dict[str, Any]) -> None:
        self.sink, self.tid, self.header, self.meta = sink, tid, header, meta
        self.name = check_id(tid)
        self.stage = f"{self.name}.r{meta.get('rank', 0)}.a{meta.get('attempt', 1)}"
        self.offsets = create_result(sink.staging, self.stage, header, meta)
        self._crc_later = meta.get("crc32c") is None  # a streamed result's crc comes with its trailer

    def write(self, part: int, offset: int, buf: Any) -> None:
        _write_part(self.sink.fd, self.offsets[part], offset, buf)

    def finish(self) -> None:
        f = self.sink.f
        dest = f"/results/{self.name}"
        if self._crc_later:
            _set_attrs(f["_staging"][self.stage].id, {"crc32c": self.meta["crc32c"]})
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
        self.path: Path = Path(out)
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
        self.results = self.f.require_group("results")
        if "_staging" in self.f:
            del self.f["_staging"]
        self.staging = self.f.create_group("_staging")
        self.f.flush()
        self.fd = os.open(self.partial, os.O_RDWR)
        self._ready: list[tuple[Any, dict[str, Any]]] = []

    def open(self, tid: Any, header: R.Header, meta: dict[str, Any]) -> Target:
        return _H5Target(self, tid, header, meta)

    def put(self, tid: Any, header: R.Header, bufs: list[Any], meta: dict[str, Any]) -> None:
        # a whole small result in one call: no staging needed (nothing else writes it meanwhile,
        # and until the journal calls it done, a resume removes it)
        name = check_id(tid)
        if self.results.id.links.exists(name.encode()):
            del self.results[name]
        places = create_result(self.results, name, header, meta)
        for place, buf in zip(places, bufs):
            if len(buf):
                _write_part(self.fd, place, 0, buf)
        self._ready.append((tid, meta))

    def adopt(self, tid: Any, header: R.Header, path: str, meta: dict[str, Any]) -> None:
        name = check_id(tid)
        dest = f"/results/{name}"
        if self.f["results"].get(name, getlink=True) is not None:
            del self.f[dest]
        rel = os.path.relpath(path, self.path.parent)
        self.f[dest] = h5py.ExternalLink(rel, dest)
        self._ready.append((tid, meta))

    def take_ready(self) -> Any:
        ready, self._ready = self._ready, []
        return ready or None

    def make_durable(self, batch: Any) -> list[tuple[Any, dict[str, Any]]]:
        self.f.flush()  # HDF5's metadata (h5py serializes this with the master's own HDF5 calls)
        os.fsync(self.fd)
        return list(batch)

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
            fsync_dir(self.path.parent)


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
            fsync_dir(self.dir)
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
        self.offsets = create_result(self.f.require_group("results"), name, header, meta)
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
