"""Results kept in the master's memory (``out=None``): the summary and the executor hand them out."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import results as R
from .base import Meta, Sink, Target


class _MemoryTarget(Target):
    def __init__(self, sink: MemorySink, tid: Any, header: R.Header, meta: Meta) -> None:
        self.sink, self.tid, self.header, self.meta = sink, tid, header, meta
        self.raw = [np.empty(p.nbytes, dtype=np.uint8) for p in header.parts]

    def buffer(self, part: int, offset: int, n: int) -> np.ndarray:
        return self.raw[part][offset : offset + n]

    def write(self, part: int, offset: int, buf: Any) -> None:
        self.raw[part][offset : offset + len(buf)] = np.frombuffer(buf, dtype=np.uint8)

    def finish(self) -> None:
        # raises what rebuilding the value raises (an object that fails to unpickle): that task fails
        self.sink._ready.append((self.tid, R.assemble(self.header, self.raw), self.meta))


class MemorySink(Sink):
    """Keeps every result on the master, for library calls with ``out=None`` and the executor."""

    kind = "memory"
    in_memory = True

    def __init__(self) -> None:
        self.results: dict[Any, Any] = {}
        self.meta: dict[Any, Meta] = {}
        self._ready: list[tuple[Any, Any, Meta]] = []

    def open(self, tid: Any, header: R.Header, meta: Meta) -> Target:
        return _MemoryTarget(self, tid, header, meta)

    def put(self, tid: Any, header: R.Header, bufs: list[Any], meta: Meta) -> None:
        # the bytes came unpickled into fresh, writable buffers: view them, no copy
        raws = [np.frombuffer(b, dtype=np.uint8) for b in bufs]
        self._ready.append((tid, R.assemble(header, raws), meta))

    def take_ready(self) -> Any:
        ready, self._ready = self._ready, []
        return ready or None

    def make_durable(self, batch: Any) -> list[tuple[Any, Meta]]:
        out = []
        for tid, value, meta in batch:
            self.results[tid] = value
            self.meta[tid] = meta
            out.append((tid, meta))
        return out

    def in_task_order(self) -> dict[Any, Any]:
        """The results, ordered as the tasks were (numeric ids numerically, others as first seen)."""
        if all(type(t) is int for t in self.results):
            order = sorted(self.results)
        else:
            order = sorted(self.results, key=lambda t: self.meta[t].get("seq", 0))
        return {t: self.results[t] for t in order}
