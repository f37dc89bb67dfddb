"""Where results go: memory, a directory of ``.npy`` files, or one HDF5 file (``h5sink``).

A sink hands out a ``Target`` per result being received. The transport asks the target
for a buffer to receive a chunk straight into (``buffer``); where there is none (files),
it receives into a reused scratch buffer and calls ``write``, which is a ``pwrite`` at the
chunk's place in the file. ``finish`` marks a result complete; ``commit`` makes every
finished result durable (fsync, then an atomic rename), after which the journal may call
it done. A result is never visible under its final name before it is complete.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from . import results as R
from .errors import UsageError

META_KEYS = ("rank", "attempt", "duration", "bytes", "crc32c")


def check_id(tid: Any) -> str:
    """The file and dataset name of a task id; rejects ids that cannot be one."""
    if type(tid) is int:
        return str(tid)
    if isinstance(tid, bool) or not isinstance(tid, (int, str)):
        raise UsageError(f"task id {tid!r} is a {type(tid).__name__}; ids must be str or int")
    name = str(tid)
    if not name or "/" in name or "\0" in name or name.startswith(".") or len(name) > 200:
        raise UsageError(f"task id {tid!r} cannot name a file: use a non-empty id without '/', not starting with '.'")
    return name


class Target:
    """One result on its way in."""

    def buffer(self, part: int, offset: int, n: int) -> np.ndarray | None:
        return None

    def write(self, part: int, offset: int, buf: Any) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """All bytes are in; the sink commits it with its next ``commit``."""

    def discard(self) -> None:
        """Drop a partial or losing result."""


class Sink:
    kind = "base"
    path: Path | None = None

    def open(self, tid: Any, header: R.Header, meta: dict[str, Any]) -> Target:
        raise NotImplementedError

    def put(self, tid: Any, header: R.Header, bufs: list[Any], meta: dict[str, Any]) -> None:
        """Store a result whose parts' bytes are all at hand (``bufs``)."""
        t = self.open(tid, header, meta)
        try:
            for i, buf in enumerate(bufs):
                if len(buf):
                    t.write(i, 0, buf)
        except BaseException:
            t.discard()
            raise
        t.finish()

    def adopt(self, tid: Any, header: R.Header, path: str, meta: dict[str, Any]) -> None:
        """Direct mode: a worker wrote the result itself, at ``path``; expose it."""
        raise UsageError(f"direct mode needs a file output, not a {self.kind} sink")

    def commit(self) -> list[tuple[Any, dict[str, Any]]]:
        """Make finished results durable; returns their (task id, meta) in order."""
        batch = self.take_ready()
        return [] if batch is None else self.make_durable(batch)

    def take_ready(self) -> Any:
        """The results finished since the last call (None if none); the caller's thread only."""
        return None

    def make_durable(self, batch: Any) -> list[tuple[Any, dict[str, Any]]]:
        """fsync (and rename into place) one batch from ``take_ready``. May run on another thread,
        while the master goes on receiving: it touches only the batch's own files."""
        return []

    def reconcile(self, done: set[Any]) -> set[Any]:
        """On resume: remove every result not in ``done``; return the done ids really present."""
        return set()

    def set_run_info(self, info: dict[str, Any]) -> None:
        pass

    def result_path(self, tid: Any, header: R.Header) -> str:
        raise NotImplementedError

    def close(self, complete: bool) -> None:
        pass


# -- memory ------------------------------------------------------------------------------


class _MemoryTarget(Target):
    def __init__(self, sink: MemorySink, tid: Any, header: R.Header, meta: dict[str, Any]) -> None:
        self.sink, self.tid, self.header, self.meta = sink, tid, header, meta
        self.raw = [np.empty(p.nbytes, dtype=np.uint8) for p in header.parts]

    def buffer(self, part: int, offset: int, n: int) -> np.ndarray:
        return self.raw[part][offset : offset + n]

    def write(self, part: int, offset: int, buf: Any) -> None:
        self.raw[part][offset : offset + len(buf)] = np.frombuffer(buf, dtype=np.uint8)

    def finish(self) -> None:
        arrays = [R.from_raw(spec, raw) for spec, raw in zip(self.header.parts, self.raw)]
        self.sink._ready.append((self.tid, R.assemble(self.header, arrays), self.meta))


class MemorySink(Sink):
    """Keeps results on the master, for library calls with ``out=None``."""

    kind = "memory"

    def __init__(self) -> None:
        self.results: dict[Any, Any] = {}
        self.meta: dict[Any, dict[str, Any]] = {}
        self._ready: list[tuple[Any, Any, dict[str, Any]]] = []

    def open(self, tid: Any, header: R.Header, meta: dict[str, Any]) -> Target:
        return _MemoryTarget(self, tid, header, meta)

    def put(self, tid: Any, header: R.Header, bufs: list[Any], meta: dict[str, Any]) -> None:
        # the bytes came unpickled into fresh buffers: view them, no copy
        arrays = [R.from_raw(spec, np.frombuffer(b, dtype=np.uint8)) for spec, b in zip(header.parts, bufs)]
        self._ready.append((tid, R.assemble(header, arrays), meta))

    def take_ready(self) -> Any:
        ready, self._ready = self._ready, []
        return ready or None

    def make_durable(self, batch: Any) -> list[tuple[Any, dict[str, Any]]]:
        out = []
        for tid, value, meta in batch:
            self.results[tid] = value
            self.meta[tid] = meta
            out.append((tid, meta))
        return out


# -- a directory of .npy files -------------------------------------------------------------


def pwrite_all(fd: int, buf: Any, pos: int) -> None:
    """Write all of ``buf`` at file offset ``pos`` (``os.pwrite`` may write less than asked)."""
    view = memoryview(buf).cast("B")
    while len(view):
        n = os.pwrite(fd, view, pos)
        view, pos = view[n:], pos + n


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (renames, new files) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """The bytes of a ``.npy`` header, padded so that the data starts aligned."""
    import io

    bio = io.BytesIO()
    d = {"descr": R.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
    try:
        np.lib.format.write_array_header_1_0(bio, d)
    except ValueError:  # header too long for format 1.0
        bio = io.BytesIO()
        np.lib.format.write_array_header_2_0(bio, d)
    return bio.getvalue()


def _final_name(root: Path, tid: Any, kind: str) -> Path:
    ext = {"array": ".npy", "bytes": ".bytes", "none": ".none", "dict": "", "object": ".pickle"}[kind]
    return root / f"{check_id(tid)}{ext}"


class _FileTarget(Target):
    """A result written into files under a temporary name, renamed at commit."""

    def __init__(self, sink: NpyDirSink, tid: Any, header: R.Header, meta: dict[str, Any]) -> None:
        self.sink, self.tid, self.header, self.meta = sink, tid, header, meta
        name = check_id(tid)
        self.tmp = sink.root / f".tmp.{name}.r{meta.get('rank', 0)}.a{meta.get('attempt', 1)}"
        self.final = _final_name(sink.root, tid, header.kind)
        if header.kind == "dict":
            self.tmp.mkdir()
        self.fds: list[int] = []
        self.base: list[int] = []
        if header.kind == "none":
            self.fds.append(os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
        for spec in header.parts:
            p = self.tmp / f"{spec.key}.npy" if header.kind == "dict" else self.tmp
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            self.fds.append(fd)
            hdr = npy_header(spec.dtype, spec.shape) if header.kind in ("array", "dict") else b""
            if hdr:
                os.write(fd, hdr)
            self.base.append(len(hdr))
            if spec.nbytes:
                os.ftruncate(fd, len(hdr) + spec.nbytes)

    def write(self, part: int, offset: int, buf: Any) -> None:
        pwrite_all(self.fds[part], buf, self.base[part] + offset)

    def finish(self) -> None:
        self.sink._ready.append(self)

    def discard(self) -> None:
        self._close()
        if self.tmp.is_dir():
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            self.tmp.unlink(missing_ok=True)

    def _close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []

    def durable(self, rename: bool = True) -> None:
        for fd in self.fds:
            os.fsync(fd)
        self._close()
        if self.header.kind == "dict":
            fsync_dir(self.tmp)
        if rename:
            place(self.tmp, self.final)


def place(tmp: Path, final: Path) -> None:
    """Rename a complete result into its final name, replacing a stale one."""
    if final.exists():  # a stale copy from an earlier run that the journal never called done
        if final.is_dir():
            shutil.rmtree(final)
        else:
            final.unlink()
    os.rename(tmp, final)


class NpyDirSink(Sink):
    """``DIR/<id>.npy``; ``DIR/<id>/<key>.npy`` for a dict; ``<id>.bytes`` and ``<id>.none``."""

    kind = "npy"

    def __init__(self, root: str | os.PathLike[str], *, worker: bool = False) -> None:
        self.root: Path = Path(root)
        self.path = self.root
        self.root.mkdir(parents=True, exist_ok=True)
        self.worker = worker  # direct mode: leave results under their temporary name for the master
        self._ready: list[_FileTarget] = []
        self._adopted: list[tuple[Path, Path, Any, dict[str, Any]]] = []
        self._last: Path | None = None

    def open(self, tid: Any, header: R.Header, meta: dict[str, Any]) -> Target:
        return _FileTarget(self, tid, header, meta)

    def adopt(self, tid: Any, header: R.Header, path: str, meta: dict[str, Any]) -> None:
        """The worker fsynced it under a temporary name; the master renames the winner into place."""
        self._adopted.append((Path(path), _final_name(self.root, tid, header.kind), tid, meta))

    def result_path(self, tid: Any, header: R.Header) -> str:
        return str(self._last)

    def take_ready(self) -> Any:
        if not self._ready and not self._adopted:
            return None
        batch = (self._ready, self._adopted)
        self._ready, self._adopted = [], []
        return batch

    def make_durable(self, batch: Any) -> list[tuple[Any, dict[str, Any]]]:
        ready, adopted = batch
        for t in ready:
            t.durable(rename=not self.worker)
            self._last = t.tmp
        for tmp, final, _, _ in adopted:
            place(tmp, final)
        fsync_dir(self.root)
        if self.worker:
            return []
        return [(t.tid, t.meta) for t in ready] + [(tid, meta) for _, _, tid, meta in adopted]

    def reconcile(self, done: set[Any]) -> set[Any]:
        by_name = {check_id(t): t for t in done}
        present = set()
        for p in self.root.iterdir():
            name = p.name
            if name == "_mpigather.json":
                continue
            stem = name
            for ext in (".npy", ".bytes", ".none", ".pickle"):
                if name.endswith(ext):
                    stem = name[: -len(ext)]
            if not name.startswith(".tmp.") and stem in by_name:
                present.add(by_name[stem])
            elif p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
        return present

    def set_run_info(self, info: dict[str, Any]) -> None:
        import json

        tmp = self.root / ".tmp.mpigather.json"
        tmp.write_text(json.dumps(info, indent=1, default=str))
        os.replace(tmp, self.root / "_mpigather.json")


def write_direct(sink: Sink, tid: Any, header: R.Header, bufs: list[np.ndarray], meta: dict[str, Any]) -> str:
    """Direct mode, on a worker: write one result through ``sink`` and make it durable."""
    sink.put(tid, header, bufs, meta)
    sink.commit()
    return sink.result_path(tid, header)


def is_hdf5_path(out: str | os.PathLike[str]) -> bool:
    return str(out).lower().endswith((".h5", ".hdf5"))


def open_sink(out: str | os.PathLike[str] | None, *, resume: bool = False, worker: bool = False) -> Sink:
    """The master's sink for ``out`` (None: memory), or with ``worker`` a direct-mode worker's."""
    if out is None:
        return MemorySink()
    if is_hdf5_path(out):
        from .h5sink import Hdf5PartSink, Hdf5Sink

        return Hdf5PartSink(out) if worker else Hdf5Sink(out, resume=resume)
    return NpyDirSink(out, worker=worker)
