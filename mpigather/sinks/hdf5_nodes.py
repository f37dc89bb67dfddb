"""A result's nodes in an HDF5 file, made through h5py's low-level API (several times faster than
its high-level one for tiny results): groups, scalar datasets, and contiguous datasets
allocated at creation, whose chunks are then written with ``pwrite`` at their file offset
(``_write_part``). Used by the master's file (``hdf5``), the workers' part files
(``hdf5_parts``) and ``keep``.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .. import results as R
from . import layout as L
from .base import pwrite_all

_STR = h5py.string_dtype()


@functools.lru_cache(maxsize=256)
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

@functools.lru_cache(maxsize=1)
def _compact_dcpl() -> h5py.h5p.PropDCID:
    """Compact: a small part's bytes live in its dataset's header, written with it."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_layout(h5py.h5d.COMPACT)
    return dcpl

COMPACT_MAX = 16 << 10  # parts up to this size are compact (HDF5 allows up to 64 KiB in a header)

@functools.lru_cache(maxsize=64)
def _attr_type(dt: np.dtype) -> Any:
    if dt.kind == "O":
        return h5py.h5t.py_create(h5py.string_dtype(), logical=True)
    return h5py.h5t.py_create(dt)

def _set_attrs(oid: Any, attrs: dict[str, Any]) -> None:
    """Attributes through h5py's low-level API: about 3x faster than ``obj.attrs[k] = v``.
    Strings are UTF-8 like h5py's."""
    space = h5py.h5s.create(h5py.h5s.SCALAR)
    for k, v in attrs.items():  # scalars only: numbers and strings
        arr = np.array(v, dtype=object) if isinstance(v, str) else np.asarray(v)
        a = h5py.h5a.create(oid, k.encode(), _attr_type(arr.dtype), space)
        a.write(arr)

@functools.lru_cache(maxsize=64)
def _file_type(dt: np.dtype) -> Any:
    return h5py.h5t.py_create(dt, logical=True)

_SCALAR_DTYPE = {"int": np.dtype("<i8"), "float": np.dtype("<f8"), "bool": np.dtype("?")}

def create_result(gid: Any, name: str, header: R.Header, whole: bool = False, top_kind: bool = True) -> list[Any]:
    """Create every node of one result as ``name`` under the group ``gid``; returns where each
    part's bytes go (a file offset, or the dataset when it has none). ``whole``: the bytes come
    in one piece each (not streamed), so small parts can be compact. ``top_kind=False``: a
    dataset at the top carries no ``kind`` attribute (the task table's row says it: one HDF5
    attribute is a third of what a tiny result costs the master)."""
    return _create(gid, name.encode(), header, whole, top_kind)[1]

def create_unlinked(fid: Any, header: R.Header, whole: bool = False, top_kind: bool = True) -> tuple[Any, list[Any]]:
    """``create_result`` with no name: the result's top node is an anonymous object of the file
    ``fid``, linked into place later by ``link_result``. Returns (its id, the places). An
    object never linked (a discarded result, a killed run) is no part of the file's tree: it
    is its free space, and nothing else changes, where a named copy would add a link, then a
    move, to every result."""
    return _create(fid, None, header, whole, top_kind)

def link_result(node: Any, gid: Any, name: bytes) -> None:
    """Link an object made by ``create_unlinked`` as ``name`` in the group ``gid``, in place of
    what holds that name already (an earlier attempt that never reached the journal)."""
    try:
        h5py.h5o.link(node, gid, name)
    except (OSError, ValueError):
        if not gid.links.exists(name):
            raise
        gid.links.delete(name)
        h5py.h5o.link(node, gid, name)

def _create(gid: Any, name: bytes | None, header: R.Header, whole: bool, top_kind: bool) -> tuple[Any, list[Any]]:
    places: list[Any] = [None] * len(header.parts)
    groups: dict[tuple[str, ...], Any] = {(): None}
    top = None
    for path, kind, ref in R.walk(header):
        parent = gid if not path else groups[path[:-1]]
        here = name if not path else path[-1].encode()
        if kind in ("dict", "none") or (kind == "object" and ref[1] > 1):
            node = g = h5py.h5g.create(parent, here)
            _set_attrs(g, {L.ATTR_KIND: kind})
            groups[path] = g
            if kind == "object":
                first, n = ref
                for i in range(n):
                    places[first + i] = _part_dataset(g, L.PICKLE if i == 0 else str(i - 1), header.parts[first + i])[1]
        elif kind in R.SCALARS:
            node = _scalar_dataset(parent, here, kind, ref, attr=top_kind or bool(path))
        else:
            part = ref[0] if kind == "object" else ref
            node, places[part] = _part_dataset(parent, here, header.parts[part], None if kind == "array" else kind,
                                               whole, attr=top_kind or bool(path))
        if not path:
            top = node
    return top, places

def _scalar_dataset(gid: Any, name: bytes | None, kind: str, value: Any, attr: bool = True) -> Any:
    space = h5py.h5s.create(h5py.h5s.SCALAR)
    if kind == "str":
        ds = h5py.h5d.create(gid, name, _attr_type(np.dtype(object)), space)
        ds.write(h5py.h5s.ALL, h5py.h5s.ALL, np.array(value, dtype=_STR))
    else:
        arr = np.array(value, dtype=_SCALAR_DTYPE[kind])
        ds = h5py.h5d.create(gid, name, _file_type(arr.dtype), space)
        ds.write(h5py.h5s.ALL, h5py.h5s.ALL, arr)
    if attr:
        _set_attrs(ds, {L.ATTR_KIND: kind})
    return ds

def _part_dataset(gid: Any, name: str | bytes | None, spec: R.PartSpec, kind: str | None = None,
                  whole: bool = False, attr: bool = True) -> tuple[Any, Any]:
    """A contiguous dataset allocated at creation (or a compact one, for a small part written
    whole). Returns its id and where its bytes go: its file offset, or its id when it has
    none (None when it has no bytes)."""
    dt = spec.dtype
    attrs: dict[str, Any] = {L.ATTR_KIND: kind} if kind and attr else {}
    if kind in ("bytes", "object") or _h5_storable(dt):
        shape, store_dt = spec.shape, dt
    else:  # datetime, unicode...: raw bytes, with what it takes to rebuild it
        shape, store_dt = (spec.nbytes,), np.dtype(np.uint8)
        attrs[L.ATTR_DTYPE] = json.dumps(spec.descr) if not isinstance(spec.descr, str) else spec.descr
        attrs[L.ATTR_SHAPE] = json.dumps(list(spec.shape))
    space = h5py.h5s.create_simple(shape) if shape else h5py.h5s.create(h5py.h5s.SCALAR)
    compact = whole and 0 < spec.nbytes <= COMPACT_MAX
    dcpl = _compact_dcpl() if compact else _dcpl() if spec.nbytes else None
    dsid = h5py.h5d.create(gid, name.encode() if isinstance(name, str) else name, _file_type(store_dt), space,
                           dcpl=dcpl)
    if attrs:
        _set_attrs(dsid, attrs)
    if not spec.nbytes:
        return dsid, None
    if compact:
        return dsid, dsid
    off = dsid.get_offset()
    return dsid, dsid if off is None else int(off)  # scalar datasets have no offset: written through HDF5

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

def _exists(group: h5py.Group, name: str) -> bool:
    return bool(group.id.links.exists(name.encode()))

def _open_file(path: Path, mode: str) -> h5py.File:
    return h5py.File(path, mode, track_order=False)
