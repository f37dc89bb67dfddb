"""Memory for large results kept in the master's memory: pages that are ready when the bytes come.

A result is received straight into the array the program gets back, so that memory is new for
every result, and touching new memory costs page faults: on our 2-core VM 3-7 GiB/s when the
system reused it recently, 0.7 GiB/s when it was idle for a few seconds (the hypervisor backs it
again, page by page), against 10 GiB/s for the receive itself. Two things keep that off the
receive:

- a fresh buffer is faulted in ahead of its chunks on a helper thread (``prefault``);
- when the program drops a result, its pages are kept here (``REUSE_SECONDS``, at most
  ``REUSE_MAX`` bytes) and the next result of the same size is received into them, already
  faulted: a program that gathers, processes, drops and gathers again runs at the speed of the
  copy. The pages go back to the system once unused for ``REUSE_SECONDS``.

``MPIGATHER_REUSE=off`` keeps nothing (every result in new memory, as ``np.empty`` gives it).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import threading
import time
import weakref

import numpy as np

from . import prefault

_HUGE = getattr(mmap, "MADV_HUGEPAGE", 0)
REUSE_MIN = 16 << 20  # smaller parts come from numpy's allocator, as before
REUSE_SECONDS = 10.0  # kept pages unused this long go back to the system
REUSE_MAX = 8 << 30  # at most this many bytes kept (the rest go back at once)

_lock = threading.RLock()  # (re-entrant: a finalizer may run inside a locked section, from the GC)
_free: dict[int, list[tuple[float, mmap.mmap]]] = {}  # size -> (released at, mapping)
_kept = 0
_timer: threading.Timer | None = None


def reuse_on() -> bool:
    return os.environ.get("MPIGATHER_REUSE", "on").lower() not in ("0", "off", "no", "false")


def empty(n: int) -> np.ndarray:
    """A writable uint8 array of ``n`` bytes whose contents will be overwritten: kept pages of a
    dropped result of the same size, else fresh memory faulted in ahead on a helper thread."""
    if n < REUSE_MIN or not reuse_on():
        a = np.empty(n, dtype=np.uint8)
        prefault.ahead(a)
        return a
    size = -(-n // mmap.PAGESIZE) * mmap.PAGESIZE
    m = _take(size)
    if m is None:
        # private: Python's default for an anonymous map is MAP_SHARED, i.e. shared memory
        # (shmem), whose first touch faulted in at ~1 GiB/s here and gets no huge pages
        m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if _HUGE:  # as numpy asks for its large arrays (no faster here; the host is the limit)
            m.madvise(_HUGE)
        fresh = True
    else:
        fresh = False
    lease = (ctypes.c_char * size).from_buffer(m)
    weakref.finalize(lease, _give_back, size, m)  # when the program dropped every view of it
    a = np.frombuffer(lease, dtype=np.uint8, count=n)  # type: ignore[call-overload]
    if fresh:
        prefault.ahead(a)
    return a


def kept() -> int:
    """Bytes kept for reuse now."""
    return _kept


def _take(size: int) -> mmap.mmap | None:
    global _kept
    with _lock:
        lst = _free.get(size)
        if not lst:
            return None
        _, m = lst.pop()
        _kept -= size
        return m


def _give_back(size: int, m: mmap.mmap) -> None:
    global _kept
    with _lock:
        if _kept + size > REUSE_MAX:
            m.close()
            return
        _free.setdefault(size, []).append((time.monotonic(), m))
        _kept += size
    _schedule_trim()


def _schedule_trim() -> None:
    global _timer
    with _lock:
        if _timer is not None and _timer.is_alive():
            return
        _timer = threading.Timer(REUSE_SECONDS, _trim)
        _timer.daemon = True
        _timer.start()


def trim(older_than: float = REUSE_SECONDS) -> int:
    """Give kept pages unused for ``older_than`` seconds back to the system; the bytes freed."""
    global _kept
    now = time.monotonic()
    drop: list[mmap.mmap] = []
    with _lock:
        for size, lst in list(_free.items()):
            keep = [(t, m) for t, m in lst if now - t < older_than]
            drop += [m for t, m in lst if now - t >= older_than]
            _kept -= size * (len(lst) - len(keep))
            if keep:
                _free[size] = keep
            else:
                del _free[size]
    freed = sum(len(m) for m in drop)
    for m in drop:
        m.close()
    return freed


def _trim() -> None:
    global _timer
    trim()
    with _lock:
        _timer = None
        again = bool(_free)
    if again:
        _schedule_trim()
