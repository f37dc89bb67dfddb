"""Where results go: memory, a directory of ``.npy`` files, or one HDF5 file.

``open_sink`` gives the master's sink for an output; ``open_writer`` gives a direct-mode
worker's writer for it. The on-disk names live in ``layout``; the interface in ``base``.
"""

from __future__ import annotations

import os
from typing import Any

from .base import Meta, Sink, Target
from .layout import check_id, is_hdf5_path
from .memory import MemorySink


def open_sink(out: str | os.PathLike[str] | None, *, resume: bool = False) -> Sink:
    """The master's sink for ``out`` (None: memory)."""
    if out is None:
        return MemorySink()
    if is_hdf5_path(out):
        from .hdf5 import Hdf5Sink

        return Hdf5Sink(out, resume=resume)
    from .npy import NpyDirSink

    return NpyDirSink(out)


def open_writer(out: str | os.PathLike[str], rank: int) -> Any:
    """A direct-mode worker's writer: ``write(tid, header, bufs, meta) -> path``, then ``flush()``
    makes everything written so far durable (the master is told the paths only after that)."""
    if is_hdf5_path(out):
        from .hdf5_parts import Hdf5PartWriter

        return Hdf5PartWriter(out, rank)
    from .npy import NpyWriter

    return NpyWriter(out)


__all__ = ["MemorySink", "Meta", "Sink", "Target", "check_id", "is_hdf5_path", "open_sink", "open_writer"]
