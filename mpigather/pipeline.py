"""Overlap the receive of one chunk with the checksum and write of the previous one.

The master's thread receives chunk k+1 while a helper thread checksums chunk k and writes it
to its file (crc32c and ``os.pwrite`` both release the GIL, so the two run on two cores).
Jobs run in order on one thread, so each result's running crc is updated in chunk order.
Two scratch buffers alternate for sinks that write through a buffer; a buffer is reused
only after its previous job is done. Memory stays at two chunks whatever the total.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from . import results as R

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor


class ChunkPipeline:
    def __init__(self, chunk_size: int, check: bool = True) -> None:
        self._size = min(chunk_size, 1 << 30)
        self.check = check  # checksum what arrives (off: the sender's crc is only recorded)
        self._pool: ThreadPoolExecutor | None = None
        self._bufs: list[np.ndarray | None] = [None, None]
        self._jobs: list[Future | None] = [None, None]
        self._next = 0
        self.busy = 0.0  # seconds the helper thread spent checksumming and writing

    def scratch(self, n: int) -> tuple[np.ndarray, int]:
        """A free buffer of ``n`` bytes and its slot (waits for the job that last used it)."""
        slot = self._next
        self._next ^= 1
        job = self._jobs[slot]
        if job is not None:
            job.result()
            self._jobs[slot] = None
        buf = self._bufs[slot]
        if buf is None or buf.size < n:
            buf = self._bufs[slot] = np.empty(max(n, self._size), dtype=np.uint8)
        return buf[:n], slot

    def absorb(self, stream: Any, part: int, off: int, buf: np.ndarray, slot: int | None) -> None:
        """Checksum (and, for a scratch buffer, write) a received chunk on the helper thread."""
        if slot is None and not self.check:
            return  # received in place, nothing to check: nothing to do
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(1, thread_name_prefix="mpigather-write")
        job = self._pool.submit(self._work, stream, part, off, buf, slot is not None)
        stream.job = job
        if slot is not None:
            self._jobs[slot] = job

    def _work(self, stream: Any, part: int, off: int, buf: np.ndarray, write: bool) -> None:
        t = time.perf_counter()
        if self.check:
            stream.crc = R.crc_update(stream.crc, buf)
        if write:
            stream.target.write(part, off, buf)
        self.busy += time.perf_counter() - t

    @staticmethod
    def settle(stream: Any) -> None:
        """Wait until every chunk of ``stream`` is checksummed and written (raises their errors)."""
        job = getattr(stream, "job", None)
        if job is not None:
            job.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
