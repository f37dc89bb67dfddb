"""One writer per output: an exclusive ``flock`` on ``OUT.lock`` for the whole run.

The lock file records the holder (host, pid, start time, command line). A second run on the
same output is refused at once, naming the holder. The kernel releases a ``flock`` when its
process dies, however it dies, so a killed run never blocks the next one; and ``status``
learns whether a run is live by trying the lock for a moment, without ever holding a lock
the master needs (the master retries for a second before it calls an output taken).

Network file systems: NFS (v4, or v3 with lockd) carries ``flock`` between nodes as a POSIX
lock; Lustre needs the ``flock`` mount option (``localflock`` only locks within a node). On a
file system without working locks, set ``MPIGATHER_LOCK=off`` (``lock=False``): then nothing
stops two runs on one output, so start only one.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

from .errors import UsageError
from .link import hostname

SUFFIX = ".lock"
RETRY = 1.0  # seconds the master keeps trying a lock that a status check may hold for a moment
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


def lock_path(out: str | os.PathLike[str]) -> Path:
    p = Path(out)
    return p.with_name(p.name.rstrip("/") + SUFFIX)


def holder_text(out: str | os.PathLike[str], info: dict[str, Any]) -> str:
    since = time.strftime("%Y-%m-%d %H:%M", time.localtime(info["time"])) if info.get("time") else "?"
    return (f"{out} is being written by pid {info.get('pid', '?')} on {info.get('host', '?')} since {since}"
            f" ({' '.join(info.get('argv') or [])[:200]}); wait for it or stop it")


def read_holder(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text() or "{}")  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return {}


class OutputLock:
    """Held by the master from before it looks at the output until its run has ended."""

    def __init__(self, out: str | os.PathLike[str]) -> None:
        self.out = out
        self.path = lock_path(out)
        self._fd = -1

    def acquire(self, argv: list[str] | None = None) -> None:
        end = time.monotonic() + RETRY
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if time.monotonic() < end:
                    time.sleep(0.02)
                    continue
                raise UsageError(holder_text(self.out, read_holder(self.path))) from None
            except OSError as e:
                os.close(fd)
                if e.errno in _NO_LOCKS:
                    raise UsageError(
                        f"cannot lock {self.path} ({e.strerror}): this file system has no working file locks;"
                        " set MPIGATHER_LOCK=off to run without one (then start only one run on this output)"
                    ) from None
                raise
            if os.fstat(fd).st_ino != _inode(self.path):
                os.close(fd)  # the file was replaced while we locked it: lock the new one
                continue
            break
        self._fd = fd
        info = {"pid": os.getpid(), "host": hostname(), "time": time.time(), "argv": argv or []}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # releases the flock; the file stays, naming the last holder
            self._fd = -1

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _inode(path: Path) -> int:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return -1


def probe(out: str | os.PathLike[str]) -> tuple[bool | None, dict[str, Any]]:
    """Is a run holding ``out`` now? (True, holder) / (False, last holder) / (None, {}) if there is
    no lock file (an output of an older version). Holds the lock only for a moment."""
    path = lock_path(out)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None, {}
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True, read_holder(path)
        except OSError:
            return None, read_holder(path)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False, read_holder(path)
    finally:
        os.close(fd)
