"""``GatherExecutor``: the root's executor, its futures and the master thread that serves them."""

from __future__ import annotations

import itertools
import pickle
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import BrokenExecutor, Executor, Future, TimeoutError
from typing import Any

from .executor_calls import _add_note, _call, _call_chunk, _Raised, _remote_exception
from .executor_feeder import AUTO_SMALL, _Feeder
from .startup import fewer_collections

INTERRUPTED_ROOT = "interrupted (Ctrl-C on the root)"
INTERRUPT_WAIT = 1.0  # seconds a one-rank executor waits for its worker thread after a Ctrl-C


class GatherExecutor(Executor):
    """The executor that ``with mpigather.executor() as ex:`` gives on the root rank.

    A ``concurrent.futures.Executor``: ``submit`` and ``map`` may be called from any thread, and
    ``shutdown`` is safe to call twice. Values of any picklable type come back; arrays inside
    them travel as raw buffers. A task that raises fails its own future only.
    """

    def __init__(self, link: Any, opts: Any, worker_args: dict[str, Any] | None = None, *,
                 size: int | None = None) -> None:
        """``link``: the master's link; or, with ``size`` (the ranks'), a function that makes it,
        ``link(cancelled)``, called first by the master thread and closed by it at the end (an MPI
        link waits for every rank to join: the executor is ready before that, and its tasks
        queue). ``cancelled()`` says when to give up waiting (a Ctrl-C on the root)."""
        self._make_link = link if size is not None else None
        self._link: Any = None if size is not None else link
        self._opts = opts
        self._q: deque[tuple[int, bytes, Future]] = deque()
        self._futures: dict[int, Future] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._closed = False
        self._error: BaseException | None = None
        self._master: Any = None  # the running Master (set by its thread once it is made)
        self._ready = threading.Event()  # every worker joined, or the executor ended
        self._interrupted = False
        self._stopped = threading.Event()  # the master's loop is over (its futures may still be being failed)
        self._feeders: set[_Feeder] = set()  # maps still submitting their chunks (the master waits for them)
        self._cancelling = False  # shutdown(cancel_futures=True) was called
        self.num_workers = max(1, (size if size is not None else link.size) - 1)
        self._thread = threading.Thread(target=self._serve, args=(worker_args or {},), name="mpigather-executor",
                                        daemon=True)
        self._begun = threading.Event()
        self._thread.start()
        self._begun.set()

    # -- the master thread ----------------------------------------------------------------

    def _source(self) -> Iterator[Any]:
        from .scheduler import WAIT

        while True:
            with self._lock:
                item = self._q.popleft() if self._q else None
                closed = self._closed
            if item is None:
                if closed and not self._feeders:
                    return
                yield WAIT
                continue
            tid, payload, fut = item
            if fut.set_running_or_notify_cancel():  # False: cancelled while it waited
                yield tid, payload, tid
            else:
                self._futures.pop(tid, None)

    def _serve(self, worker_args: dict[str, Any]) -> None:
        # the caller's thread first: it waits in Thread.start() for this one to begin, then needs
        # the GIL back, which the imports below would hold for a switch interval (5 ms): entering
        # the executor took 4-5 ms instead of 2 (median of 20 launches, on a busy machine)
        self._begun.wait()
        try:
            # (the master's own collections are spaced out while it runs: from its start on, as it
            # imports its code, joins the workers (which import theirs meanwhile), then serves)
            with fewer_collections():
                if self._make_link is not None:
                    self._link = self._make_link(lambda: self._interrupted)
                try:
                    self._serve_on(worker_args)
                finally:
                    if self._make_link is not None and self._link is not None:
                        self._link.close()
        except BaseException as e:  # noqa: BLE001 - handed to every waiting future
            broken = BrokenExecutor(f"the executor failed: {type(e).__name__}: {e}")
            broken.__cause__ = e
            self._error = broken
        else:
            if self._master is not None and self._master.summary.ctrl_c:
                self._error = BrokenExecutor("the executor was interrupted (Ctrl-C)")
        finally:
            self._end()

    def _serve_on(self, worker_args: dict[str, Any]) -> None:
        from .api import master_run, run_on
        from .sinks.memory import MemorySink

        sink_of: dict[str, MemorySink] = {}

        def on_done(tid: int, meta: dict[str, Any]) -> None:
            value = sink_of["sink"].results.pop(tid)
            sink_of["sink"].meta.pop(tid, None)
            fut = self._futures.pop(tid, None)
            if fut is not None:
                fut.set_result(value)

        def on_failed(tid: int, err: str, exc: bytes | BaseException | None) -> None:
            fut = self._futures.pop(tid, None)
            if fut is not None:
                fut.set_exception(_remote_exception(err, exc))

        def grab(master: Any) -> None:
            sink_of["sink"] = master.sink
            with self._lock:
                self._master = master
                if self._interrupted:
                    master.interrupt(INTERRUPTED_ROOT)

        from .sinks.memory import ValuesSink

        hooks = {"on_done": on_done, "on_failed": on_failed, "master": grab, "sink": ValuesSink()}
        wargs = {"send_exceptions": True, "keep_params": False, **worker_args}
        if self._link.size > 1:
            master_run(self._link, self._source(), None, self._opts, hooks=hooks)
        else:
            self._one_rank(hooks, wargs, run_on)

    def _end(self) -> None:
        """The master's loop is over: the futures still waiting fail (or are cancelled)."""
        self._stopped.set()
        with self._lock:
            self._closed = True
            queued = [f for _, _, f in self._q]
            queued_ids = {tid for tid, _, _ in self._q}
            handed_out = [f for tid, f in self._futures.items() if tid not in queued_ids]
            self._q.clear()
            self._futures.clear()
        self._ready.set()
        error = self._error or BrokenExecutor("the executor ended before this task ran")
        for fut in queued:  # pending, or cancelled by the caller and not yet seen by the waiters
            if self._interrupted:
                fut.cancel()
            if fut.set_running_or_notify_cancel():
                fut.set_exception(error)
        for fut in handed_out:
            if not fut.done():
                fut.set_exception(error)

    def _one_rank(self, hooks: dict[str, Any], wargs: dict[str, Any], run_on: Any) -> None:
        """One rank: a worker thread beside this master thread, joined by a loopback link."""
        from .api import master_run
        from .loopback import LoopbackHub
        from .transport import no_comm_workers
        from .worker import Worker

        mlink, wlink = LoopbackHub(2).links()
        failure: list[BaseException] = []

        def work() -> None:
            try:
                with no_comm_workers():
                    Worker(wlink, _call, self._opts, None, **wargs).run()
            except BaseException as e:  # noqa: BLE001
                failure.append(e)

        t = threading.Thread(target=work, name="mpigather-executor-worker", daemon=True)
        t.start()
        try:
            master_run(mlink, self._source(), None, self._opts, hooks=hooks)
        finally:
            # after a Ctrl-C the task in that thread (no signal reaches it) is not waited for
            t.join(INTERRUPT_WAIT if self._interrupted or (self._master and self._master.summary.ctrl_c) else None)

    # -- public -------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """The number of workers, as a pool's ``size``: dynesty sizes its queue of points by it."""
        return self.num_workers

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Schedule ``fn(*args, **kwargs)``; an argument that cannot be pickled fails this future only."""
        return self._submit(fn, args, kwargs)

    def _submit(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], *,
                feeder: bool = False) -> Future:
        """``submit``; a ``feeder`` (the chunks of a map) may still submit after a shutdown that
        waits for what was submitted, as its map's calls were all submitted before it."""
        fut: Future = Future()
        try:
            payload = pickle.dumps((fn, args, kwargs), protocol=5)
        except Exception as e:  # the error itself, as mpi4py gives it, with what it stopped
            with self._lock:
                self._check_open(feeder)
            _add_note(e, "cannot send this task to a worker: pickling its function or arguments failed")
            fut.set_running_or_notify_cancel()
            fut.set_exception(e)
            return fut
        with self._lock:
            self._check_open(feeder)
            tid = next(self._ids)
            self._futures[tid] = fut
            self._q.append((tid, payload, fut))
            master = self._master
        if master is not None:
            master.wake.set()  # its loop may be sleeping: the task should not wait for it
        return fut

    def _unfeed(self, feeder: _Feeder) -> None:
        with self._lock:
            self._feeders.discard(feeder)
            master = self._master
        if master is not None:
            master.wake.set()  # the last feeder gone: a shut-down executor's loop may end

    def _check_open(self, feeder: bool = False) -> None:
        if self._error is not None:
            raise self._error
        if self._closed and not (feeder and not self._cancelling and not self._interrupted
                                 and not self._stopped.is_set()):
            raise RuntimeError("cannot schedule new futures after shutdown")

    def bootup(self, wait: bool = True) -> GatherExecutor:
        """Returns the executor; with ``wait``, once every worker has joined (as mpi4py's), so that
        a task submitted next starts at once."""
        with self._lock:
            self._check_open()
        if wait:
            from .scheduler import WorkerState

            while not self._ready.wait(0.002):
                master = self._master
                if master is not None and all(w.state is not WorkerState.NEW
                                              for w in list(master.sched.workers().values())):
                    self._ready.set()
        return self

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int | None = None, buffersize: int | None = None,
            unordered: bool = False) -> Iterator[Any]:
        """Like ``Executor.map``: ``fn`` over the zipped iterables, results in order (or as they
        come with ``unordered``). ``chunksize`` sends that many calls as one task; without it,
        a map of up to 32 calls per worker (AUTO_SMALL) sends one call per task, and a larger one
        is cut into chunks of about 20 ms each (AUTO_TARGET), sized from the calls' measured
        durations. ``buffersize`` keeps at most that many tasks submitted ahead of the consumer
        (then, without ``chunksize``, one call per task). ``timeout``: seconds for the whole map,
        after which the next result raises ``TimeoutError``."""
        return self.starmap(fn, zip(*iterables), timeout=timeout, chunksize=chunksize, buffersize=buffersize,
                            unordered=unordered)

    def starmap(self, fn: Callable[..., Any], iterable: Iterable[tuple[Any, ...]], *, timeout: float | None = None,
                chunksize: int | None = None, buffersize: int | None = None,
                unordered: bool = False) -> Iterator[Any]:
        """Like ``map``, with each item of ``iterable`` the argument tuple of one call."""
        if chunksize is not None and chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if buffersize is not None:
            if not isinstance(buffersize, int) or isinstance(buffersize, bool):
                raise TypeError(f"buffersize must be an integer or None, not {type(buffersize).__name__}")
            if buffersize < 1:
                raise ValueError(f"buffersize must be None or > 0, not {buffersize}")
            if unordered:
                raise ValueError("buffersize cannot be combined with unordered")
        end = None if timeout is None else time.monotonic() + timeout
        args: Iterator[Any] = iter(iterable)
        if chunksize is None:
            if buffersize is None:  # every call is submitted now anyway: count them
                calls = list(args)
                if len(calls) > AUTO_SMALL * self.num_workers:
                    feeder = _Feeder(self, fn, calls)
                    with self._lock:
                        self._check_open()
                        self._feeders.add(feeder)
                    feeder.top_up()
                    return feeder.results(end, unordered)
                args = iter(calls)
            chunksize = 1
        if chunksize > 1:
            chunks = iter(lambda: list(itertools.islice(args, chunksize)), [])
            submit_one = (lambda chunk: self.submit(_call_chunk, fn, chunk))  # noqa: E731
            source: Iterator[Any] = chunks
        else:
            submit_one = (lambda a: self.submit(fn, *a))  # noqa: E731
            source = args
        limit = buffersize
        futs: deque[Future] = deque(submit_one(a) for a in (itertools.islice(source, limit) if limit else source))
        return self._results(futs, source if limit else iter(()), submit_one, end, chunksize > 1, unordered)

    def _results(self, futs: deque[Future], more: Iterator[Any], submit_one: Callable[[Any], Future],
                 end: float | None, chunked: bool, unordered: bool) -> Iterator[Any]:
        from concurrent.futures import FIRST_COMPLETED, wait

        try:
            while futs:
                if unordered:
                    left = None if end is None else end - time.monotonic()
                    ready, _ = wait(futs, timeout=left, return_when=FIRST_COMPLETED)
                    if not ready:
                        raise TimeoutError()
                    fut = next(f for f in futs if f in ready)
                    futs.remove(fut)
                else:
                    fut = futs.popleft()
                for a in itertools.islice(more, 1):
                    futs.append(submit_one(a))
                value = fut.result(None if end is None else max(0.0, end - time.monotonic()))
                if chunked:
                    for v in value:
                        if isinstance(v, _Raised):
                            raise _remote_exception(v.text, v.exc)
                        yield v
                else:
                    yield value
        finally:
            for f in futs:
                f.cancel()

    def _interrupt(self) -> None:
        """A Ctrl-C on the root: the master stops at once (the workers, which got the Ctrl-C too,
        are told to leave); returns once its loop is over. The tasks not handed out are cancelled
        after that, by the master's thread: a million of them take seconds, which a Ctrl-C must
        not wait for."""
        with self._lock:
            self._interrupted = self._closed = True
            master = self._master
        if master is not None:
            master.interrupt(INTERRUPTED_ROOT)
        while not self._stopped.wait(0.05) and self._thread.is_alive():
            pass

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new tasks; with ``cancel_futures``, drop those not yet started. ``wait``: until all ran."""
        with self._lock:
            self._closed = True
            if cancel_futures:
                self._cancelling = True
                feeders = list(self._feeders)
                dropped = [f for _, _, f in self._q]
                for tid, _, _ in self._q:
                    self._futures.pop(tid, None)
                self._q.clear()
            else:
                dropped, feeders = [], []
        for feeder in feeders:
            feeder.stop()
        for fut in dropped:
            # cancel() alone leaves it CANCELLED, which concurrent.futures.wait and as_completed
            # do not count as done, and nobody would ever tell them (their waiters hung forever)
            fut.cancel()
            fut.set_running_or_notify_cancel()
        if wait and self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()

