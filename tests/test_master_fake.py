"""The master's loop over a fake link, without MPI: streams, trailers and checksum failures."""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from mpigather import messages as M
from mpigather import results as R
from mpigather.config import make_options
from mpigather.master import Master
from mpigather.scheduler import Scheduler
from mpigather.sinks import MemorySink


class FakeIncoming:
    def __init__(self, source: int, tag: int, payload: Any) -> None:
        self.source, self.tag, self._payload = source, tag, payload
        self.count = len(payload) if tag == M.DATA else 0

    def obj(self) -> Any:
        return self._payload

    def into(self, buf: Any) -> None:
        buf[:] = np.frombuffer(self._payload, dtype=np.uint8)


class FakeLink:
    """Rank 0 of a two-rank job whose worker's messages are scripted in advance."""

    rank, size = 0, 2

    def __init__(self, script: list[tuple[int, Any]]) -> None:
        self.inbox = deque(FakeIncoming(1, tag, payload) for tag, payload in script)
        self.sent: list[Any] = []

    def poll(self, source: int | None = None) -> FakeIncoming | None:
        return self.inbox.popleft() if self.inbox else None

    def post(self, obj: Any, dest: int, tag: int = M.TASK) -> None:
        self.sent.append(obj)
        if obj[0] == M.STOP:
            self.inbox.append(FakeIncoming(1, M.CTRL, (M.BYE, {"tasks": 1})))

    def progress(self) -> None:
        pass


def stream_script(value: np.ndarray, chunk: int, crc: int | None = None) -> list[tuple[int, Any]]:
    header, bufs = R.encode(value, with_crc=False)
    chunks = [bytes(bufs[p][o : o + n]) for p, o, n in R.chunk_plan(header, chunk)]
    good = R.checksum(bufs)
    return ([(M.CTRL, (M.HELLO, "host", 1)), (M.CTRL, (M.RESULTS, [(0, 1, header, 0.1, None, None)]))]
            + [(M.DATA, c) for c in chunks] + [(M.CTRL, (M.TRAILER, 0, good if crc is None else crc))])


def run_master(script: list[tuple[int, Any]], **opts: Any) -> Any:
    o = make_options(progress="off", chunk_size=1000, **opts)
    sink = MemorySink()
    master = Master(FakeLink(script), Scheduler([(0, None)], prefetch=1), sink, None, o)
    return master.run(), sink


def test_streamed_result_is_assembled_and_checked():
    value = np.arange(1234, dtype=np.float64)  # 9872 bytes: 10 chunks of 1000, the last short
    summary, sink = run_master(stream_script(value, 1000))
    assert summary.done == 1 and not summary.failed
    assert np.array_equal(sink.results[0], value)
    assert sink.meta[0]["crc32c"] == R.checksum([R.raw(value)])


def test_a_wrong_checksum_fails_the_task():
    value = np.arange(1234, dtype=np.float64)
    summary, sink = run_master(stream_script(value, 1000, crc=12345))
    assert summary.done == 0 and 0 not in sink.results
    assert "checksum" in summary.failed[0]
