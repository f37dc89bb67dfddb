"""An executor in the style of ``mpi4py.futures.MPICommExecutor``.

    with mpigather.executor() as ex:
        if ex is not None:                      # only on the root
            squares = list(ex.map(pow, range(100), [2] * 100))

On the root it yields an object with ``submit`` and ``map``; on the workers it serves tasks
and then yields ``None``. With one rank, tasks run inline. Unlike ``run``, values of any
picklable type come back (arrays, bytes and dicts still travel as raw buffers).
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import Any

from .config import make_options
from .errors import MPIGatherError


class RemoteTaskError(MPIGatherError):
    """A task raised on a worker; the message holds the worker's traceback."""


def _remote_exception(text: str, exc: bytes | None) -> BaseException:
    """The task's own exception, as mpi4py.futures gives it, with the worker's traceback as its cause."""
    import pickle

    remote = RemoteTaskError(text)
    if exc is None:
        return remote
    try:
        err = pickle.loads(exc)
    except Exception:
        return remote
    err.__cause__ = remote
    return err


def _call(payload: tuple[Callable[..., Any], tuple, dict]) -> Any:
    fn, args, kwargs = payload
    return fn(*args, **kwargs)


class GatherExecutor:
    """Root side. ``submit`` and ``map`` may be called from any thread; shutdown is idempotent."""

    def __init__(self, link: Any, opts: Any) -> None:
        self._link, self._opts = link, opts
        self._q: queue.SimpleQueue[tuple[int, Any]] = queue.SimpleQueue()
        self._futures: dict[int, Future] = {}
        self._ids = itertools.count()
        self._closed = False
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if link.size > 1:
            self._thread = threading.Thread(target=self._serve, name="mpigather-master", daemon=True)
            self._thread.start()

    # -- the master thread ----------------------------------------------------------------

    def _source(self) -> Iterator[Any]:
        from .scheduler import WAIT

        while True:
            closed = self._closed
            try:
                yield self._q.get_nowait()
            except queue.Empty:
                if closed:
                    return
                yield WAIT

    def _serve(self) -> None:
        from .api import run_on

        sink_holder: dict[str, Any] = {}

        def on_done(tid: int, meta: dict[str, Any]) -> None:
            value = sink_holder["sink"].results.pop(tid)
            fut = self._futures.pop(tid)
            fut.set_result(value)

        def on_failed(tid: int, err: str, exc: bytes | None) -> None:
            fut = self._futures.pop(tid)
            fut.set_exception(_remote_exception(err, exc))

        def grab(master: Any) -> None:
            sink_holder["sink"] = master.sink

        try:
            run_on(self._link, _call, self._source(), None, self._opts, allow_object=True,
                   hooks={"on_done": on_done, "on_failed": on_failed, "master": grab})
        except BaseException as e:  # noqa: BLE001 - handed to every waiting future
            self._error = e
            for fut in list(self._futures.values()):
                fut.set_exception(e)
            self._futures.clear()

    # -- public -------------------------------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot submit after shutdown")
            if self._error is not None:
                raise RuntimeError(f"the executor failed: {self._error}")
            fut: Future = Future()
            tid = next(self._ids)
            if self._thread is None:  # one rank: run inline
                try:
                    fut.set_result(fn(*args, **kwargs))
                except Exception as e:
                    fut.set_exception(e)
                return fut
            self._futures[tid] = fut
            self._q.put((tid, (fn, args, kwargs)))
            return fut

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int = 1, unordered: bool = False) -> Iterator[Any]:
        """Like ``Executor.map``; ``chunksize`` is accepted for compatibility (batching is automatic)."""
        futs = [self.submit(fn, *args) for args in zip(*iterables)]

        def results() -> Iterator[Any]:
            if unordered:
                from concurrent.futures import as_completed

                for f in as_completed(futs, timeout=timeout):
                    yield f.result()
            else:
                for f in futs:
                    yield f.result(timeout=timeout)

        return results()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
        if wait and self._thread is not None:
            self._thread.join()


@contextlib.contextmanager
def executor(comm: Any = None, root: int = 0, **options: Any) -> Iterator[GatherExecutor | None]:
    """Yield an executor on ``root`` and None on the other ranks (after serving tasks)."""
    from .transport import Link

    if root != 0:
        raise ValueError("root must be 0: the master is rank 0 of comm")
    opts = make_options(**options)
    link = Link(comm)
    if link.rank != 0:
        from .api import run_on

        run_on(link, _call, None, None, opts, allow_object=True)
        yield None
        return
    ex = GatherExecutor(link, opts)
    try:
        yield ex
    finally:
        ex.shutdown(wait=True)
