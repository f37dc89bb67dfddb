"""Reading results back, the same way for every sink and mode, and verifying their checksums."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from . import results as R
from .journal import journal_path, load_state
from .sinks import is_hdf5_path


def _h5_value(obj: Any) -> Any:
    import h5py

    kind = obj.attrs.get("kind", "array")
    if isinstance(kind, bytes):
        kind = kind.decode()
    if kind == "none":
        return None
    if isinstance(obj, h5py.Group):
        return {k: _h5_array(obj[k]) for k in obj}
    arr = _h5_array(obj)
    return arr.tobytes() if kind == "bytes" else arr


def _h5_array(ds: Any) -> np.ndarray:
    descr = ds.attrs.get("mpigather_dtype")
    arr = ds[()]
    if descr is None:
        return np.asarray(arr)
    try:
        d = json.loads(descr)
        d = [tuple(x) if isinstance(x, list) else x for x in d] if isinstance(d, list) else d
    except ValueError:
        d = descr
    raw_shape = ds.attrs["mpigather_shape"]
    if isinstance(raw_shape, (str, bytes)):
        shape = tuple(json.loads(raw_shape))
    else:
        shape = tuple(int(x) for x in raw_shape)
    return R.from_raw(R.PartSpec(None, d, shape, arr.nbytes), np.asarray(arr))


class Results(Mapping[str, Any]):
    """Read-only mapping of task id (as str) to the value its task returned, loaded on access."""

    def __init__(self, out: str | os.PathLike[str]) -> None:
        self.path = Path(out)
        self._h5 = is_hdf5_path(out)
        if not self.path.exists():
            raise FileNotFoundError(f"no results at {self.path}")
        if self._h5:
            import h5py

            self._f: Any = h5py.File(self.path, "r")

    def close(self) -> None:
        if self._h5:
            self._f.close()

    def __enter__(self) -> Results:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _names(self) -> list[str]:
        if self._h5:
            return list(self._f["results"])
        names = []
        for p in self.path.iterdir():
            n = p.name
            if n.startswith((".", "_mpigather")):
                continue
            if p.is_dir():
                names.append(n)
            else:
                for ext in (".npy", ".bytes", ".none"):
                    if n.endswith(ext):
                        names.append(n[: -len(ext)])
        return names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def __getitem__(self, tid: Any) -> Any:
        name = str(tid)
        if self._h5:
            try:
                obj = self._f["results"][name]
            except KeyError:
                raise KeyError(tid) from None
            return _h5_value(obj)
        base = self.path / name
        if base.is_dir():
            return {p.name[:-4]: np.load(p) for p in sorted(base.iterdir()) if p.name.endswith(".npy")}
        for ext in (".npy", ".bytes", ".none"):
            p = self.path / f"{name}{ext}"
            if p.exists():
                if ext == ".npy":
                    return np.load(p)
                return p.read_bytes() if ext == ".bytes" else None
        raise KeyError(tid)

    def checksum(self, tid: Any) -> int:
        """crc32c of a stored result's bytes, streamed from the file."""
        name = str(tid)
        if self._h5:
            obj = self._f["results"][name]
            kind = obj.attrs.get("kind", "array")
            return 0 if kind in ("none", b"none") else _h5_checksum(obj)
        for ext in (".npy", ".bytes", ".none", ""):
            p = self.path / f"{name}{ext}"
            if p.exists() and (ext or p.is_dir()):
                return 0 if ext == ".none" else _npy_checksum(p)
        raise KeyError(tid)

    def attrs(self, tid: Any) -> dict[str, Any]:
        """Per-task metadata (rank, attempt, duration, bytes, crc32c); HDF5 only."""
        if not self._h5:
            return {}
        return {k: (v.item() if hasattr(v, "item") else v) for k, v in self._f["results"][str(tid)].attrs.items()}


def load(out: str | os.PathLike[str]) -> Results:
    """Open the results of a run for reading: ``load("out.h5")["3"]`` is what task 3 returned."""
    return Results(out)


def value_checksum(value: Any) -> int:
    _, parts = R.split(value)
    return R.checksum(R.raw(a) for _, a in parts)


_BLOCK = 64 << 20


def _dataset_crc(ds: Any, crc: int) -> int:
    """crc32c of a dataset's bytes, read in blocks of about 64 MiB (a 3 GiB result is fine)."""
    if ds.shape == () or ds.size == 0 or ds.nbytes <= _BLOCK:
        return R.crc_update(crc, R.raw(np.ascontiguousarray(ds[()])))
    rows = max(1, _BLOCK // max(1, ds.nbytes // ds.shape[0]))
    for start in range(0, ds.shape[0], rows):
        crc = R.crc_update(crc, R.raw(np.ascontiguousarray(ds[start : start + rows])))
    return crc


def _h5_checksum(obj: Any) -> int:
    import h5py

    if isinstance(obj, h5py.Group):
        crc = 0
        for key in sorted(obj):
            crc = _dataset_crc(obj[key], crc)
        return crc
    return _dataset_crc(obj, 0)


def _npy_checksum(path: Path) -> int:
    if path.is_dir():
        crc = 0
        for p in sorted(path.iterdir(), key=lambda q: q.name[:-4]):  # key order, as the worker summed it
            if p.name.endswith(".npy"):
                crc = _npy_file_crc(p, crc)
        return crc
    if path.name.endswith(".npy"):
        return _npy_file_crc(path, 0)
    return R.crc_update(0, np.fromfile(path, dtype=np.uint8))


def _npy_file_crc(p: Path, crc: int) -> int:
    arr = np.load(p, mmap_mode="r")
    flat = R.raw(arr) if arr.size else np.empty(0, np.uint8)
    for start in range(0, flat.size, _BLOCK):
        crc = R.crc_update(crc, np.asarray(flat[start : start + _BLOCK]))
    return crc


def verify(out: str | os.PathLike[str]) -> tuple[int, list[str], list[str]]:
    """Recompute every done result's checksum against the journal.

    Returns (results checked, mismatched ids, missing ids).
    """
    jp = journal_path(out)
    if not jp.exists():
        raise FileNotFoundError(f"no journal {jp} beside {out}")
    st = load_state(jp)
    bad, missing = [], []
    n = 0
    with load(out) as res:
        names = set(res)
        for tid, rec in st.done.items():
            name = str(tid)
            if name not in names:
                missing.append(name)
                continue
            n += 1
            try:
                ok = res.checksum(name) == rec["crc"]
            except Exception:  # unreadable counts as a mismatch
                ok = False
            if not ok:
                bad.append(name)
    return n, bad, missing
