"""Details of ``mpigather.executor()`` that go beyond mpi4py's contract, checked under MPI:
``mpiexec -n N python tests/executor_details.py``. Every rank runs every check; rank 0 prints
``CHECK <name> pass|fail <detail>`` for each, and the job exits 1 if any failed.
"""

from __future__ import annotations

import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any

import mpigather

CHECKS: dict[str, Callable[[Any], None]] = {}


def check(fn: Callable[[Any], None]) -> Callable[[Any], None]:
    CHECKS[fn.__name__] = fn
    return fn


class Unpicklable:
    def __reduce__(self) -> Any:
        return 1 / 0


def _refuse(lock: Any) -> Any:
    raise LockedError("refuses to be unpickled", lock)


class LockedError(Exception):
    """An exception that itself cannot be pickled (it holds a lock)."""


class Unloadable:
    """Pickles fine; unpickling it on the root raises LockedError, which cannot be pickled."""

    def __reduce__(self) -> Any:
        return _refuse, (None,)


def make_unloadable() -> Unloadable:
    return Unloadable()


def comm_workers_size() -> int:
    from mpi4py import futures

    return int(futures.get_comm_workers().Get_size())


def comm_workers_error() -> str:
    """What mpi4py's get_comm_workers() says here, outside any task."""
    from mpi4py import futures

    try:
        futures.get_comm_workers().Get_size()
    except RuntimeError as e:
        return str(e)
    return "no error"


def identity(x: Any) -> Any:
    return x


@check
def pickling_error_is_the_original(comm: Any) -> None:
    """The future holds the pickling error itself; our context rides as a note."""
    with mpigather.executor(comm) as ex:
        if ex is not None:
            e = ex.submit(identity, Unpicklable()).exception(30)
            assert type(e) is ZeroDivisionError, f"got {e!r}"
            assert e.__cause__ is None, f"cause {e.__cause__!r}"
            notes = getattr(e, "__notes__", [])
            assert any("cannot send this task to a worker" in n for n in notes), f"notes {notes!r}"
            formatted = "".join(traceback.format_exception(e))
            if sys.version_info >= (3, 11):
                assert "cannot send this task to a worker" in formatted, formatted


@check
def unloadable_result_is_the_original(comm: Any) -> None:
    """A result that fails to unpickle on the root: the very exception raised there (here one
    that could not even be pickled), with its traceback, and the task and worker as its cause."""
    with mpigather.executor(comm) as ex:
        if ex is not None:
            e = ex.submit(make_unloadable).exception(30)
            assert type(e) is LockedError, f"got {e!r}"
            assert e.__traceback__ is not None and "_refuse" in "".join(traceback.format_tb(e.__traceback__)), \
                "the traceback of the unpickling is lost"
            assert isinstance(e.__cause__, mpigather.RemoteTaskError), f"cause {e.__cause__!r}"
            assert "could not be rebuilt" in str(e.__cause__) and "rank" in str(e.__cause__), str(e.__cause__)
            assert ex.submit(abs, -2).result(30) == 2, "the executor did not go on"


@check
def comm_null_refused_everywhere(comm: Any) -> None:
    from mpi4py import MPI

    try:
        mpigather.executor(MPI.COMM_NULL)
    except ValueError as e:
        assert "COMM_NULL" in str(e), str(e)
    else:
        raise AssertionError("executor(MPI.COMM_NULL) raised nothing")
    try:
        mpigather.executor("COMM_WORLD")
    except TypeError as e:
        assert "intracommunicator" in str(e), str(e)
    else:
        raise AssertionError("executor('COMM_WORLD') raised nothing")


@check
def get_comm_workers_points_to_current_worker(comm: Any) -> None:
    """mpi4py's get_comm_workers() in our tasks fails with a pointer to our equivalent; outside
    them (and on the workers once they left) it says what mpi4py says."""
    outside = comm_workers_error()
    assert "communicator is not accessible" in outside, outside
    with mpigather.executor(comm) as ex:
        if ex is not None:
            e = ex.submit(comm_workers_size).exception(30)
            assert isinstance(e, RuntimeError), f"got {e!r}"
            assert "mpigather.current_worker()" in str(e), str(e)
            assert comm_workers_error() == outside, "the root's own thread changed"
            box: list[str] = []
            t = threading.Thread(target=lambda: box.append(comm_workers_error()))
            t.start()
            t.join()
            assert box == [outside], f"another thread of the root: {box}"
    assert comm_workers_error() == outside, f"after the executor: {comm_workers_error()}"


@check
def size_is_the_number_of_workers(comm: Any) -> None:
    """Samplers (dynesty) size their queue from ``pool.size``."""
    with mpigather.executor(comm) as ex:
        if ex is not None:
            assert ex.size == ex.num_workers == max(1, comm.Get_size() - 1), (ex.size, ex.num_workers)


def nap(x: int) -> int:
    import time

    time.sleep(0.03)  # longer than a chunk's target: each call stays a task of its own
    return x


def tasks_made(ex: Any) -> int:
    """The number of tasks the executor made so far (it takes one id itself)."""
    return next(ex._ids)


@check
def map_chunks_from_measured_durations(comm: Any) -> None:
    """map without chunksize: many tiny calls become a few chunks; calls slower than a chunk's
    target stay one per task (so that a per-task timeout or retry still means one call)."""
    from mpigather.executor_feeder import AUTO_SMALL

    with mpigather.executor(comm) as ex:
        if ex is not None:
            n = 20_000
            before = tasks_made(ex)
            assert list(ex.map(abs, range(-n, 0))) == list(range(n, 0, -1)), "wrong results"
            made = tasks_made(ex) - before - 1
            assert made <= n // 20, f"{made} tasks for {n} tiny calls"
            m = AUTO_SMALL * ex.num_workers + 8
            before = tasks_made(ex)
            assert sorted(ex.map(nap, range(m), unordered=True)) == list(range(m)), "wrong results"
            made = tasks_made(ex) - before - 1
            assert made == m, f"{made} tasks for {m} slow calls"


@check
def map_outlives_a_waiting_shutdown(comm: Any) -> None:
    """As with mpi4py: a map made before shutdown(wait=True) yields all of its results after it,
    though its later chunks are submitted while the executor shuts down."""
    with mpigather.executor(comm) as ex:
        if ex is not None:
            it = ex.map(abs, range(-50_000, 0))
    if ex is not None:
        assert list(it) == list(range(50_000, 0, -1)), "a map lost results to the shutdown"


@check
def map_cancelled_by_shutdown(comm: Any) -> None:
    """shutdown(cancel_futures=True) ends a large map: its iterator raises CancelledError where
    the cancelled calls begin, and nothing hangs; a map left half-read does not stop the next."""
    from concurrent.futures import CancelledError

    with mpigather.executor(comm) as ex:
        if ex is not None:
            for k, _ in enumerate(ex.map(nap, range(1000))):
                if k == 3:
                    break
            assert list(ex.map(abs, range(-10_000, 0))) == list(range(10_000, 0, -1)), "the next map failed"
            it = ex.map(nap, range(1000))
            ex.shutdown(wait=False, cancel_futures=True)
            got = 0
            try:
                for _ in it:
                    got += 1
            except CancelledError:
                pass
            else:
                raise AssertionError(f"the map ran to its end ({got} results) after cancel_futures")
            assert got < 1000, got


def main() -> int:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    names = sys.argv[1:] or list(CHECKS)
    failed = 0
    for name in names:
        try:
            CHECKS[name](comm)
            mine = "pass", ""
        except BaseException as e:  # noqa: BLE001 - every outcome is reported
            mine = "fail", f"rank {comm.Get_rank()}: {type(e).__name__}: {e}"
        outcomes = comm.gather(mine, root=0)
        if comm.Get_rank() == 0:
            bad = [o for o in outcomes if o[0] != "pass"]
            status, detail = bad[0] if bad else ("pass", "")
            failed += status != "pass"
            print(f"CHECK {name} {status} {detail}".rstrip(), flush=True)
    return 1 if comm.bcast(failed, root=0) else 0


if __name__ == "__main__":
    sys.exit(main())
