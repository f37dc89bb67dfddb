"""Joining a run and leaving it politely, with no MPI library of its own (``transport`` calls
it with its communicators and requests): the wait for the other ranks to join, and the release
messages a master leaves in flight when it returns.

A master does not wait for its workers to take their release messages (65 ms at the end of
each run at 128 ranks on 2 cores): they complete during the program's next MPI calls, or at its
exit, before ``MPI_Finalize`` (``finish_in_flight``, registered with ``atexit`` once, runs
before mpi4py's own clean-up)."""

from __future__ import annotations

import atexit
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from .link import Backoff, crowd

log = logging.getLogger("mpigather")

RELEASE_FINISH = 60.0  # at exit, the longest a master waits for its release messages to be taken

_in_flight: list[Any] = []  # sends still on their way when their link closed
_hooked = False


JOIN_PATIENCE = 10.0  # seconds a rank waits for the others to join a run before it says so


class JoinCancelled(Exception):
    """The wait for the other ranks to join was given up (``MPILink``'s ``cancelled``)."""


def idup(base: Any, patience: float, cancelled: Callable[[], bool] | None = None,
          meanwhile: Iterable[Any] = ()) -> Any:
    """``MPI_Comm_idup``, waited for politely: a rank whose partners never call in (only the
    master called ``mpigather.run``, say) says why it waits instead of spinning in silence.
    ``cancelled``: asked between tests; when it says True, JoinCancelled (the request stays posted).
    ``meanwhile``: steps of other work, run first, the request tested after each (see ``MPILink``)."""
    comm, req = base.Idup()
    start = time.monotonic()
    joined = False
    for _ in meanwhile:
        joined = joined or bool(req.Test())  # (each test lets the join move on: MPI progresses only in calls)
    if joined:
        return comm
    back = Backoff(scale=crowd())  # (every rank of the node waits here at once)
    warned = False
    while not req.Test():
        if cancelled is not None and cancelled():
            raise JoinCancelled("the other ranks had not joined")
        if not warned and time.monotonic() - start > patience:
            warned = True
            log.warning("rank %d of %d has waited %.0f s for the other ranks to join: every rank of the"
                        " communicator must call mpigather.run (or enter mpigather.executor) together",
                        base.Get_rank(), base.Get_size(), patience)
        back.sleep()
    return comm


def leave_in_flight(reqs: Iterable[Any], finalized: Callable[[], bool]) -> None:
    """Keep the sends of ``reqs`` not complete yet, to be completed at exit at the latest
    (``finalized``: has the MPI library been finalized?)."""
    global _hooked
    left = [r for r in reqs if not done_or_dead(r)]
    if left:
        _in_flight.extend(left)
        if not _hooked:
            _hooked = True
            atexit.register(finish_in_flight, finalized)


def finish_in_flight(finalized: Callable[[], bool], timeout: float = RELEASE_FINISH) -> None:
    """Complete the sends that closed links left in flight (at exit: workers wait for them)."""
    if not _in_flight or finalized():
        return
    end = time.monotonic() + timeout
    back = Backoff()
    while _in_flight and time.monotonic() < end:
        _in_flight[:] = [r for r in _in_flight if not done_or_dead(r)]
        if _in_flight:
            back.sleep()


def done_or_dead(req: Any) -> bool:
    """Is this send complete? One to a dead process (ULFM) counts as done: nobody waits for it."""
    try:
        return bool(req.Test())
    except Exception:  # (ULFM) to a dead process
        return True
