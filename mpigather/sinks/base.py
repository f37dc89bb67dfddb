"""What every sink offers the master, and the file helpers the file sinks share.

A sink hands out a ``Target`` per result being received. The transport asks the target for
a buffer to receive a chunk straight into (``buffer``); where there is none (files), it
receives into a reused scratch buffer and calls ``write``, which is a ``pwrite`` at the
chunk's place in the file. ``finish`` marks a result complete; ``take_ready`` then
``make_durable`` (on a helper thread) make every finished result durable, after which the
journal may call it done. A result is never visible under its final name before that.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .. import results as R
from ..errors import UsageError

Meta = dict[str, Any]  # seq, rank, attempt, duration, bytes, crc32c, params, kind (and path, in direct mode)


class Target:
    """One result on its way in."""

    def buffer(self, part: int, offset: int, n: int) -> np.ndarray | None:
        return None

    def write(self, part: int, offset: int, buf: Any) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """All bytes are in; the sink makes it durable with its next commit."""

    def discard(self) -> None:
        """Drop a partial or losing result."""


class Sink:
    kind = "base"
    path: Path | None = None
    in_memory = False  # results stay in the master's memory, nothing is written
    total: int | None = None  # tasks in the run, when known (the table's rows)

    def open(self, tid: Any, header: R.Header, meta: Meta) -> Target:
        raise NotImplementedError

    def put(self, tid: Any, header: R.Header, bufs: list[Any], meta: Meta) -> None:
        """Store a result whose parts' bytes are all at hand (``bufs``)."""
        fill(self.open(tid, header, meta), bufs)

    def put_rows(self, seq0: int, tids: list[Any], rows: Any, meta: Meta) -> bool:
        """Store the rows of a ``messages.Rows`` (only the first ``len(tids)`` of them) at
        positions ``seq0...`` of the table. ``meta``: rank, attempt, duration, crc, bytes, hash.
        False: they do not fit this sink's table (the master then stores each one whole)."""
        return False

    def adopt(self, tid: Any, header: R.Header, path: str, meta: Meta) -> None:
        """Direct mode: a worker wrote the result itself, at ``path``, and made it durable; expose it."""
        raise UsageError(f"direct mode needs a file output, not a {self.kind} sink")

    def commit(self) -> list[tuple[Any, Meta]]:
        """Make finished results durable; returns their (task id, meta) in order."""
        batch = self.take_ready()
        return [] if batch is None else self.make_durable(batch)

    def take_ready(self) -> Any:
        """The results finished since the last call (None if none); the master's thread only."""
        return None

    def make_durable(self, batch: Any) -> list[tuple[Any, Meta]]:
        """fsync (and rename into place) one batch from ``take_ready``. May run on another thread
        while the master goes on receiving: it touches only the batch's own files."""
        return []

    def reconcile(self, done: Any) -> tuple[int, Any]:
        """On resume, with ``done`` (a ``journal.DoneSet``): remove whatever the journal does not
        call done (partial results, a commit cut short, rows it never saw). Returns how many of
        the results it calls done whole are really there (``done.n_whole``, or fewer if the output
        lost some), and the positions of done rows the table lost (both then run again)."""
        return 0, ()

    def done_ids(self) -> list[tuple[Any, int]] | None:
        """(id, position) of the results really stored whole (asked when ``reconcile`` found fewer)."""
        return None

    def set_run_info(self, info: dict[str, Any]) -> None:
        pass

    def remove_leftovers(self) -> None:
        """Remove what lost workers left half-written (direct mode), after the run."""

    def close(self, complete: bool) -> None:
        pass


def fill(target: Target, bufs: list[Any]) -> None:
    """Write every part of a result at once into ``target`` and finish it (discard it on error)."""
    try:
        for i, buf in enumerate(bufs):
            if len(buf):
                target.write(i, 0, buf)
    except BaseException:
        target.discard()
        raise
    target.finish()


# -- file helpers ---------------------------------------------------------------------------


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


_libc: Any = None
SYNCFS_MIN_FILES = 8  # below this many files, one fsync each is cheaper than flushing the filesystem


def _syncfs(fd: int) -> bool:
    global _libc
    if _libc is None:
        import ctypes.util  # (here: it imports shutil, subprocess and tempfile, ~10 ms a process pays at start)

        name = ctypes.util.find_library("c")
        try:
            _libc = ctypes.CDLL(name, use_errno=True) if name else False
        except OSError:
            _libc = False
    if not _libc or not hasattr(_libc, "syncfs"):
        return False
    return int(_libc.syncfs(fd)) == 0


def make_files_durable(paths: list[Path], directory: Path) -> None:
    """fsync closed files: one ``syncfs`` of their filesystem for many (about 40 us a file here,
    against 1.6 ms for an fsync of each), else an fsync per file. Raises OSError on failure."""
    if len(paths) >= SYNCFS_MIN_FILES and os.environ.get("MPIGATHER_SYNCFS", "1") != "0":
        fd = os.open(directory, os.O_RDONLY)
        try:
            if _syncfs(fd):
                return
        finally:
            os.close(fd)
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_quietly(path: str | Path) -> None:
    import shutil

    try:
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except OSError:
        pass
