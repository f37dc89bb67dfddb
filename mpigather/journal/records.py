"""Reading records: every complete record of a journal, streamed (a torn last line is skipped),
and the columns of a ``done`` record."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

HEARTBEAT_PREFIX = b'{"ev":"workers",'  # how the master's heartbeat lines start (``Journal.workers``)


def read_records(path: str | os.PathLike[str], *, lazy: bytes | None = None) -> Iterator[dict[str, Any]]:
    """Every complete record of a journal, streamed; a torn or corrupt last line is skipped.
    Lines that start with ``lazy`` are not parsed: they come as ``{"ev": None, "raw": line}``."""
    with open(path, "rb") as f:
        lineno = 0
        pending: bytes | None = None  # a corrupt line is an error only if another follows it
        for line in f:
            lineno += 1
            if pending is not None:
                raise ValueError(f"journal {path}, line {lineno - 1}: corrupt record")
            if not line.endswith(b"\n"):
                return  # torn tail
            if lazy is not None and line.startswith(lazy):
                yield {"ev": None, "raw": line}
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                pending = line
                continue
            yield rec

def _as_list(x: Any) -> list[Any]:
    return x if isinstance(x, list) else [x]

def done_columns(rec: dict[str, Any]) -> Iterator[tuple[Any, ...]]:
    """(id, seq, hash, attempt, rank, bytes, crc, duration, path) for each task of a done record
    (also the one-task records of older journals)."""
    ids = _as_list(rec["id"])
    n = len(ids)

    def col(key: str, default: Any) -> list[Any]:
        v = rec.get(key)
        return [default] * n if v is None else _as_list(v)

    return zip(ids, col("seq", -1), col("h", 0), col("att", 1), col("rank", 0), col("bytes", 0), col("crc", 0),
               col("dur", 0.0), col("path", None))
