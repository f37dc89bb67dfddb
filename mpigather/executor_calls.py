"""The executor's calls on the worker side, and how a task's exception comes back to its future.

A submission travels as the pickled ``(function, args, kwargs)`` that ``_call`` runs; a chunk of a
map runs in ``_call_chunk``, where a call that raises ends the chunk with a ``_Raised``.
"""

from __future__ import annotations

import contextlib
import pickle
import sys
import time
from collections.abc import Callable
from typing import Any

from .errors import MPIGatherError


class RemoteTaskError(MPIGatherError):
    """A task raised on a worker; the message holds the worker's traceback."""


def _remote_exception(text: str, exc: bytes | BaseException | None) -> BaseException:
    """The task's own exception, as mpi4py.futures gives it, with the worker's traceback as its
    cause. ``exc``: pickled by the worker, or (a result that failed to unpickle here) itself."""
    remote = RemoteTaskError(text)
    if exc is None:
        return remote
    if isinstance(exc, BaseException):
        err = exc
    else:
        try:
            err = pickle.loads(exc)
        except Exception:
            return remote
    if not isinstance(err, BaseException):
        return remote
    err.__cause__ = remote
    return err


def _add_note(exc: BaseException, note: str) -> None:
    """PEP 678: shown under the traceback from Python 3.11; on 3.10 kept in ``__notes__`` only."""
    if sys.version_info >= (3, 11):
        exc.add_note(note)
    else:
        with contextlib.suppress(Exception):
            setattr(exc, "__notes__", [*getattr(exc, "__notes__", []), note])  # noqa: B010


def _call(payload: bytes) -> Any:
    """Worker side: the pickled (function, args, kwargs) of one submission."""
    fn, args, kwargs = pickle.loads(payload)
    return fn(*args, **kwargs)


class _Raised:
    """In a chunk's results: the call there raised (the calls after it did not run, as in
    mpi4py). ``exc``: the pickled exception, or None where it cannot be pickled."""

    __slots__ = ("text", "exc")

    def __init__(self, text: str, exc: bytes | None) -> None:
        self.text, self.exc = text, exc

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Raised, (self.text, self.exc))


def _call_chunk(fn: Callable[..., Any], chunk: list[tuple[Any, ...]]) -> list[Any]:
    """Worker side: the calls of one chunk; a call that raises ends the chunk with a ``_Raised``,
    so that the caller gets the results before it and then that exception, in its place."""
    out: list[Any] = []
    for args in chunk:
        try:
            out.append(fn(*args))
        except Exception as e:
            import traceback

            try:
                exc: bytes | None = pickle.dumps(e, protocol=5)
            except Exception:
                exc = None
            out.append(_Raised(traceback.format_exc(), exc))
            break
    return out


def _call_timed(fn: Callable[..., Any], chunk: list[tuple[Any, ...]]) -> tuple[list[Any], float]:
    """Worker side: ``_call_chunk`` and the seconds its calls took, which size the next chunks."""
    t = time.perf_counter()
    out = _call_chunk(fn, chunk)
    return out, time.perf_counter() - t

