"""Fault in the pages of a fresh receive buffer on a helper thread, ahead of the receive.

A result kept in memory is received into a new array, and the first write to each of its pages
is a page fault. Measured on our 2-core VM: receiving into memory already faulted runs at about
10 GiB/s; into fresh memory 3-7 GiB/s, and 0.7 GiB/s when the pages come from memory the
machine has not used for a few seconds (the hypervisor backs them again, page by page). Inside
the receive those faults are serial with the copy. Here a helper thread asks the kernel to fault
the buffer in (``madvise(MADV_POPULATE_WRITE)``, Linux 5.14+, which leaves the contents alone,
so it may run while the receive writes the same pages), front to back in pieces, while the
master receives the chunks before it. The receive then mostly finds its pages ready, and the
two run on two cores.

Where the kernel lacks it (older Linux, other systems) nothing is done: ``available()`` is False.
``MPIGATHER_PREFAULT=off`` switches it off (to measure what it gives).
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger("mpigather")

MADV_POPULATE_WRITE = 23  # linux/mman.h (5.14+)
PIECE = 1 << 20  # bytes per madvise call: the receive can overtake between pieces, and mmap_lock is held briefly
PAGE = 4096

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_madvise: Any = None
_ok: bool | None = None  # None: not tried yet


def _load() -> bool:
    global _madvise, _ok
    if _ok is None:
        _ok = False
        if sys.platform.startswith("linux") and os.environ.get("MPIGATHER_PREFAULT", "on").lower() not in (
                "0", "off", "no", "false"):
            try:
                import ctypes.util  # (here, not at start: it imports shutil, subprocess and tempfile)

                libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
                _madvise = libc.madvise
                _madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
                _madvise.restype = ctypes.c_int
                _ok = True
            except (OSError, AttributeError):
                _ok = False
    return bool(_ok)


def available() -> bool:
    """Can this process fault memory in ahead of time (until the first call that fails)?"""
    return _load()


def pages(addr: int, n: int) -> tuple[int, int]:
    """The whole pages inside ``[addr, addr + n)``: (first page's address, bytes); bytes may be 0."""
    start = (addr + PAGE - 1) & ~(PAGE - 1)
    end = (addr + n) & ~(PAGE - 1)
    return start, max(0, end - start)


def populate(buf: Any, piece: int = PIECE) -> int:
    """Fault in the whole pages of ``buf`` (a writable numpy array), piece by piece; the bytes
    covered. Stops, and switches prefaulting off for the process, if the kernel refuses."""
    global _ok
    if not _load():
        return 0
    start, total = pages(buf.ctypes.data, buf.nbytes)
    done = 0
    for off in range(0, total, piece):  # (piece: a whole number of pages)
        n = min(piece, total - off)
        if _madvise(start + off, n, MADV_POPULATE_WRITE) != 0:
            err = ctypes.get_errno()
            if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: this kernel has no MADV_POPULATE_WRITE
                _ok = False
                log.debug("prefault: madvise(MADV_POPULATE_WRITE) unavailable (errno %d); off", err)
            return done  # anything else (ENOMEM: no memory now): leave the rest to the receive
        done += n
    return done


def ahead(buf: Any) -> None:
    """Fault ``buf`` in on the helper thread (it holds ``buf`` until done, so its memory stays)."""
    global _pool
    if buf.nbytes < 2 * PIECE or not _load():
        return
    with _lock:
        if _pool is None:
            from concurrent.futures import ThreadPoolExecutor

            _pool = ThreadPoolExecutor(1, thread_name_prefix="mpigather-prefault")
        pool = _pool
    pool.submit(populate, buf)


def wait() -> None:
    """Until every buffer handed to ``ahead`` so far is done (tests)."""
    with _lock:
        pool = _pool
    if pool is not None:
        pool.submit(lambda: None).result()
