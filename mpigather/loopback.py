"""A ``link.Link`` between threads of one process: a one-rank run, and fast tests of the real loops.

``LoopbackHub(n).links()`` gives n connected links, rank 0 to n-1. Objects are pickled on the
way, as over MPI, so a value that would not survive MPI does not survive here either. Raw
buffers are not copied on send: the receiver copies them in ``into`` and only then is the
send complete, as with MPI's rendezvous, so a sender keeps its buffer until then.
"""

from __future__ import annotations

import pickle
import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from .link import hostname, wait_until


class _Message:
    __slots__ = ("source", "tag", "count", "_payload", "_raw", "_done")

    def __init__(self, source: int, tag: int, payload: bytes | None, raw: memoryview | None) -> None:
        self.source, self.tag = source, tag
        self._payload, self._raw = payload, raw
        self.count = raw.nbytes if raw is not None else len(payload or b"")
        self._done = threading.Event()

    def obj(self) -> Any:
        assert self._payload is not None, "a raw chunk has no object"
        self._done.set()
        return pickle.loads(self._payload)

    def into(self, buf: Any) -> None:
        dst = np.frombuffer(buf, dtype=np.uint8)
        if self._raw is not None:
            dst[: self.count] = np.frombuffer(self._raw, dtype=np.uint8)
        else:
            dst[: self.count] = np.frombuffer(self._payload or b"", dtype=np.uint8)
        self._raw = None
        self._done.set()


class LoopbackHub:
    """The shared mailboxes of ``size`` ranks."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._boxes: list[deque[_Message]] = [deque() for _ in range(size)]
        self._lock = threading.Lock()
        self.aborted: int | None = None

    def links(self) -> list[LoopbackLink]:
        return [LoopbackLink(self, r) for r in range(self.size)]

    def _put(self, dest: int, msg: _Message) -> None:
        if not 0 <= dest < self.size:
            raise ValueError(f"rank {dest} is not in a loopback of {self.size}")
        with self._lock:
            self._boxes[dest].append(msg)

    def _take(self, rank: int, source: int | None) -> _Message | None:
        with self._lock:
            box = self._boxes[rank]
            if source is None:
                return box.popleft() if box else None
            for i, m in enumerate(box):
                if m.source == source:
                    del box[i]
                    return m
        return None


class LoopbackLink:
    """One rank's end of a ``LoopbackHub``."""

    survives_failures = False
    in_process = True  # master and workers share a process (and its log)

    def __init__(self, hub: LoopbackHub, rank: int) -> None:
        self.hub, self.rank, self.size = hub, rank, hub.size
        self.host = hostname()
        self._posted: list[_Message] = []
        self._coll: dict[str, Any] = {}

    def poll(self, source: int | None = None) -> _Message | None:
        if self.hub.aborted is not None:
            raise SystemExit(self.hub.aborted)
        return self.hub._take(self.rank, source)

    def _message(self, obj: Any, tag: int) -> _Message:
        return _Message(self.rank, tag, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), None)

    def send(self, obj: Any, dest: int, tag: int) -> None:
        self.hub._put(dest, self._message(obj, tag))  # buffered: complete at once, like an eager send

    def post(self, obj: Any, dest: int, tag: int, limit: int | None = None) -> None:
        self.send(obj, dest, tag)

    def progress(self) -> int:
        return 0

    def flush(self, timeout: float = 30.0) -> bool:
        return True

    def send_bufs(self, bufs: Iterable[Any], dest: int = 0, tag: int = 12, window: int = 2,
                  on_posted: Callable[[Any], None] | None = None) -> None:
        inflight: deque[_Message] = deque()
        for buf in bufs:
            msg = _Message(self.rank, tag, None, memoryview(buf).cast("B"))
            self.hub._put(dest, msg)
            inflight.append(msg)
            if on_posted is not None:
                on_posted(buf)
            if len(inflight) >= window:
                self._wait(inflight.popleft())
        for msg in inflight:
            self._wait(msg)

    def _wait(self, msg: _Message) -> None:
        wait_until(lambda: msg._done.is_set() or self.hub.aborted is not None)

    def gather(self, obj: Any) -> list[Any] | None:
        if self.size != 1:
            raise NotImplementedError("collectives over a loopback of more than one rank")
        return [obj]

    def bcast(self, obj: Any) -> Any:
        if self.size != 1:
            raise NotImplementedError("collectives over a loopback of more than one rank")
        return obj

    def abort(self, code: int) -> None:
        self.hub.aborted = code
        raise SystemExit(code)

    def close(self) -> None:
        pass
