"""Results stored whole (not in the table of small results): the value and the crc32c of one,
read from an HDF5 object or an entry of a ``.npy`` directory, its pickles refused unless
allowed. ``reader`` opens an output with these; ``reader_table`` reads the table.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from . import results as R
from .sinks import layout as L

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


def load_entry(path: str | os.PathLike[str]) -> Any:
    """One value stored in a ``.npy`` directory (a step's input, stored by this run itself)."""
    p = Path(path)
    return _npy_value(p, True, p.name)


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
