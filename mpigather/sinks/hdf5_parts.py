"""Direct mode, on a worker: each worker writes its results into part files
``OUT.parts/r<rank>-<pid>-<n>.h5``, one per batch (written under a temporary name, closed,
fsynced, renamed); the master's file links to them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py

from .. import results as R
from . import layout as L
from .base import Meta, fsync_dir
from .hdf5_nodes import _exists, _open_file, _write_part, create_result


class Hdf5PartWriter:
    """Direct mode, on a worker: results go into a part file of the current batch; ``flush``
    closes, fsyncs and renames it, after which the paths handed out by ``write`` are valid."""

    def __init__(self, out: str | os.PathLike[str], rank: int) -> None:
        self.out = Path(out)
        self.dir = self.out.with_name(self.out.name + L.PARTS)
        self.dir.mkdir(exist_ok=True)
        self.rank = rank
        self._n = 0
        self._f: h5py.File | None = None
        self._fd = -1
        self._tmp = self._final = Path()

    def write(self, tid: Any, header: R.Header, bufs: list[Any], meta: Meta) -> str:
        if self._f is None:
            self._n += 1
            stem = f"r{self.rank}-{os.getpid()}-{self._n}.h5"
            self._tmp, self._final = self.dir / f"{L.TMP}{stem}", self.dir / stem
            self._f = _open_file(self._tmp, "w")
            self._f.require_group(L.RESULTS)
            self._fd = os.open(self._tmp, os.O_RDWR)
        results = self._f[L.RESULTS]
        name = L.check_id(tid)
        if _exists(results, name):
            del results[name]
        places = create_result(results.id, name, header)
        for place, buf in zip(places, bufs):
            if len(buf):
                _write_part(self._fd, place, 0, buf)
        return str(self._final)

    def flush(self) -> None:
        if self._f is None:
            return
        self._f.close()
        os.fsync(self._fd)
        os.close(self._fd)
        self._f = None
        os.replace(self._tmp, self._final)
        fsync_dir(self.dir)

    def close(self) -> None:
        self.flush()
