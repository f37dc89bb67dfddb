"""A per-chunk trace of streamed results, for finding where a large transfer waits.

Off unless ``MPIGATHER_TRACE=PATH`` is set when a run starts: then each rank appends lines to
``PATH.<rank>`` (rank in the run's communicator; 0 is the master). When off, ``open_trace``
returns None and the loops test ``if trace is not None`` once per chunk, nothing more.

One event per line, tab-separated, times from ``time.monotonic()`` (one clock for every
process of a node, so the files of one node can be merged and sorted)::

    # mpigather trace 1
    <t>  <rank>  <event>  <task id>  <chunk>  <bytes>  <seconds>

Events: ``run`` (a run starts on this rank), worker ``post`` (chunk k's send is posted),
``trailer`` (the sender's crc goes); master ``announce`` (a streamed result's header is
here), ``probe`` (chunk k is matched), ``landed`` (chunk k is received: ``seconds`` is the
receive), ``sleep`` (the master's loop slept ``seconds`` while a result was being streamed:
the thing that must not happen), ``stored`` (the result is checked and kept).
"""

from __future__ import annotations

import os
import time
from typing import IO, Any

ENV = "MPIGATHER_TRACE"
HEADER = "# mpigather trace 1\n"
FIELDS = ("t", "rank", "event", "tid", "chunk", "bytes", "seconds")


class Trace:
    """Buffered lines for one rank; ``close`` (or ``flush``) writes them out."""

    def __init__(self, path: str, rank: int) -> None:
        self.rank = rank
        self._fh: IO[str] = open(f"{path}.{rank}", "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        if self._fh.tell() == 0:
            self._fh.write(HEADER)
        self._lines: list[str] = []

    def event(self, event: str, tid: Any = "", chunk: int = -1, nbytes: int = 0, seconds: float = 0.0,
              t: float | None = None) -> None:
        self._lines.append(f"{time.monotonic() if t is None else t:.6f}\t{self.rank}\t{event}\t{tid}\t{chunk}"
                           f"\t{nbytes}\t{seconds:.6f}\n")

    def flush(self) -> None:
        if self._lines:
            self._fh.write("".join(self._lines))
            self._lines.clear()
        self._fh.flush()

    def close(self) -> None:
        self.flush()
        self._fh.close()


def open_trace(rank: int, environ: Any = None) -> Trace | None:
    """The trace of this rank if ``MPIGATHER_TRACE`` is set (a ``run`` line written), else None."""
    path = (os.environ if environ is None else environ).get(ENV)
    if not path:
        return None
    tr = Trace(path, rank)
    tr.event("run")
    return tr


def read(path: str) -> list[dict[str, Any]]:
    """The events of one trace file, as dicts with the names of ``FIELDS`` (for scripts and tests)."""
    out = []
    with open(path, encoding="utf-8") as fh:
        first = fh.readline()
        if first != HEADER:
            raise ValueError(f"{path}: not an mpigather trace (first line {first!r})")
        for line in fh:
            t, rank, event, tid, chunk, nbytes, seconds = line.rstrip("\n").split("\t")
            out.append({"t": float(t), "rank": int(rank), "event": event, "tid": tid, "chunk": int(chunk),
                        "bytes": int(nbytes), "seconds": float(seconds)})
    return out
