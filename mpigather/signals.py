"""Stop requests and interrupts, recorded in one place.

SIGTERM and SIGUSR1 ask a run to stop in order: the master stops handing out work, lets
running tasks finish within the grace period, makes every finished result durable and ends
with status 75. Workers leave those signals to the master. The handlers only record the
signal; the master's loop acts on it, so a signal during start-up or shutdown is neither lost
nor fatal.

SIGINT (Ctrl-C) is recorded too, then raises KeyboardInterrupt as usual: a task that raises
KeyboardInterrupt by itself fails like any other exception, while a real Ctrl-C ends the
program. ``mpiexec`` forwards a Ctrl-C to every rank: the workers tell the master and leave,
and the master, which only records it while its loop runs (``deferred_sigint``), keeps what is
finished and lets everyone go within a second.
"""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import signal
else:
    # the C module that ``signal`` wraps, with the same functions and numbers: ``signal`` itself
    # builds its enums of signals and handlers at import, 0.65 ms of every process's start.
    # (Old handlers come back as ints instead of those enums: they are only ever put back.)
    import _signal as signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

_stop: int | None = None
_sigint = False


def stop_requested() -> int | None:
    """The stop signal received so far, or None."""
    return _stop


def request_stop(signum: int = signal.SIGTERM) -> None:
    global _stop
    _stop = signum


def sigint_seen() -> bool:
    return _sigint


def reset() -> None:
    """Forget earlier requests (a new run in the same process)."""
    global _stop, _sigint
    _stop, _sigint = None, False


def _on_stop(signum: int, _frame: Any) -> None:
    request_stop(signum)


def _ignore(signum: int, _frame: Any) -> None:
    pass


def _on_sigint(signum: int, frame: Any) -> None:
    global _sigint
    _sigint = True
    signal.default_int_handler(signum, frame)


def _on_sigint_deferred(signum: int, frame: Any) -> None:
    global _sigint
    if _sigint:  # a second Ctrl-C: the master is stuck somewhere; stop it the usual way
        signal.default_int_handler(signum, frame)
    _sigint = True


@contextlib.contextmanager
def deferred_sigint() -> Any:
    """While the master's loop runs in the main thread, a first Ctrl-C is only recorded: the loop
    then stops in order, between two steps (a KeyboardInterrupt could land inside an HDF5 call or
    a journal write). Elsewhere than the main thread, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, _on_sigint_deferred)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def install(master: bool) -> dict[int, Any]:
    """Install the handlers (main thread only; elsewhere nothing happens). Returns the old ones,
    for ``restore``. The master records stop signals; a worker ignores them."""
    old: dict[int, Any] = {}
    if threading.current_thread() is not threading.main_thread():
        return old
    for sig in STOP_SIGNALS:
        try:
            old[sig] = signal.signal(sig, _on_stop if master else _ignore)
        except (ValueError, OSError):
            pass
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        old[signal.SIGINT] = signal.signal(signal.SIGINT, _on_sigint)
    return old


def ignore_stop() -> None:
    """A process on its way out ignores stop signals: Python puts back the default handlers
    (which end the process) while it shuts down, and a run that finished must not die then."""
    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


def restore(old: dict[int, Any]) -> None:
    for sig, h in old.items():
        try:
            signal.signal(sig, h)
        except (ValueError, OSError):
            pass
