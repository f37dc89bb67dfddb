"""``mpigather.run``: the same job as the command line, from inside a user's MPI program.

Every rank calls it. Rank 0 of ``comm`` becomes the master and the others workers, on a
private duplicate of ``comm``: the program's own messages, and its previous or next run, can
never meet this run's. With one rank, the same master and worker loops run in one process,
joined by a loopback link: the task function runs in the calling thread, the master in a
helper thread.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal

from . import messages as M
from . import signals
from .config import OPTION_NAMES as _OPTION_NAMES
from .config import Options, make_options
from .errors import MasterFailed, MPIGatherError, UsageError

# The master's code (scheduler, master loop, output, journal, lock, task sources) is imported
# by the master only, where it runs: a worker rank of a run does not pay for it at its start;
# and the worker's code by the workers only (and a one-rank run).
if TYPE_CHECKING:
    from .journal import DoneSet, Journal
    from .master import Master
    from .scheduler import Scheduler
    from .sinks import Sink
    from .summary import Summary

log = logging.getLogger("mpigather")

__version__ = "0.2.0"

# Options that ``run`` does not take, and why (tests/test_api.py checks that these, and only
# these, are missing from its signature)
NOT_FOR_RUN = {
    "abort_stuck": "the command line's: run returns summary.stuck, and the caller decides",
    "interface": "how error messages spell an option; the command line sets it",
}


def run(
    func: Callable[..., Any],
    tasks: Iterable[Any],
    out: str | os.PathLike[str] | None = None,
    comm: Any = None,
    *,
    timeout: float | None = None,
    retries: int | None = None,
    max_failures: int | str | None = None,
    kwargs: bool | None = None,
    mode: Literal["stream", "direct"] | None = None,
    chunk_size: int | str | None = None,
    prefetch: int | None = None,
    batch_window: float | None = None,
    inline_max: int | None = None,
    checksum: Literal["both", "sender"] | None = None,
    heartbeat: float | None = None,
    grace: float | None = None,
    hello_patience: float | None = None,
    resume: bool | None = None,
    overwrite: bool | None = None,
    lock: bool | None = None,
    progress: Literal["auto", "bar", "log", "off"] | None = None,
    checkpoint: Literal["every", "none"] | None = None,
    keep_steps: bool | None = None,
    affinity: bool | None = None,
    kinds: str | None = None,
    table: bool | None = None,
) -> Summary | None:
    """Run ``func`` on every task over the ranks of ``comm``, and gather what it returns.

    Every rank of ``comm`` calls it. Rank 0 becomes the master and hands out the tasks; the
    other ranks run them. With one rank, the master runs in a helper thread and the tasks in the
    calling thread. Each option left at None takes the value of the environment variable
    ``MPIGATHER_<NAME>`` when it is set (``MPIGATHER_CHUNK_SIZE=16MiB``), else the default given
    below; an explicit argument always wins.

    Parameters
    ----------
    func : callable
        The task function, called once per task with the task (or its keys, with ``kwargs``).
        What it returns is stored: numbers, arrays, dicts of them, any picklable value.
    tasks : iterable
        A list, a range, any iterable, or a dict of task id to task. Only read on rank 0.
        Tasks of a list are named by their position; a dict task's ``"id"`` key names it.
    out : str or os.PathLike, optional
        ``"x.h5"`` (one HDF5 file) or a directory of ``.npy`` files. None (the default) keeps
        the values in memory, in ``summary.results``.
    comm : mpi4py.MPI.Intracomm, optional
        The communicator whose ranks share the work; default ``MPI.COMM_WORLD``. The run uses
        a private duplicate of it.
    timeout : float, optional
        Seconds a task may run before it is given to another worker; a dict task's own
        ``"timeout"`` key wins. Set it when a task can hang. Default: no limit.
    retries : int, optional
        How many times a task that raised runs again; raise it for flaky tasks. Default 0.
    max_failures : int or str, optional
        When failing tasks stop the run early: ``N`` tasks, ``"N%"`` of those ended, ``"auto"``
        (the first 20 all failed and none succeeded) or ``"none"`` (never). Default ``"auto"``.
    kwargs : bool, optional
        Call ``func`` with a dict task's keys (all but ``"id"``) as keyword arguments instead of
        the dict itself. Default False.
    mode : {"stream", "direct"}, optional
        ``"stream"``: results travel to the master, which writes them; ``"direct"``: each worker
        writes its own results into ``out`` (a fast parallel file system). Default ``"stream"``.
    chunk_size : int or str, optional
        Bytes per message of a large result (``"16MiB"`` or an int, at most 1GiB); lower it when
        the master's memory is tight. Default ``"64MiB"``.
    prefetch : int, optional
        Tasks queued at each worker beyond the one it runs; use 1 for tasks of minutes.
        Default 2.
    batch_window : float, optional
        Seconds of measured work handed to a worker at once when tasks are tiny. Default 0.02.
    inline_max : int, optional
        Bytes up to which a result travels inside its header message instead of as a stream.
        Default 262144 (256 KiB).
    checksum : {"both", "sender"}, optional
        ``"both"``: the master checks each large result's crc32c against the worker's;
        ``"sender"``: it only records the worker's (a master without a core to spare).
        Default ``"both"``.
    heartbeat : float, optional
        Seconds between a busy worker's heartbeats. Default 5.0.
    grace : float, optional
        Seconds running tasks get to finish after SIGTERM/SIGUSR1 or an early stop. Default 60.0.
    hello_patience : float, optional
        Seconds before the master warns that workers have not joined. Default 10.0.
    resume : bool, optional
        Continue an interrupted run into the same ``out``: done tasks are skipped. Default False.
    overwrite : bool, optional
        Replace an existing ``out``. Default False.
    lock : bool, optional
        Hold an exclusive lock on ``out`` while the run writes it; turn off only on a file
        system without working locks (then start one run at a time). Default True.
    progress : {"auto", "bar", "log", "off"}, optional
        Progress display: a bar on a terminal, log lines in a batch log (``"auto"``), or none.
        Default ``"auto"``.
    checkpoint : {"every", "none"}, optional
        Multi-step tasks: store each step's output before the step counts as done (``"every"``),
        or keep it in the worker's memory (``"none"``: faster; a failure restarts the task).
        Default ``"every"``.
    keep_steps : bool, optional
        Multi-step tasks: keep every step's output in ``out`` as well. Default False.
    affinity : bool, optional
        Multi-step tasks: the worker that finished a step runs the next one itself when it can.
        Turn off to hand every step to the scheduler. Default True.
    kinds : str, optional
        What this process's workers are, comma-separated (``"gpu,bigmem"``); steps with
        ``needs=`` run only on workers of that kind. Default ``""``.

    table : bool, optional
        Store small numpy arrays (up to 4 KiB, alone or in a dict) as rows of the table of small
        results too, for a sweep whose records hold short vectors; without it a task that returns
        an array gets ``/results/<id>`` (docs/tables.md). Default False.

    Returns
    -------
    Summary or None
        On rank 0, the run's ``Summary`` (counts, failures, timings, ``exit_code``; with
        ``out=None`` the values in ``summary.results``, in task order). On the other ranks None,
        once they are released.

    Raises
    ------
    UsageError
        A bad option value or output (an existing ``out`` without ``resume`` or ``overwrite``).
        It is raised on rank 0; the workers are released.
    MPIGatherError
        The run could not go on (a worker failed outside any task); what is done is kept, and
        ``resume=True`` continues the run.
    KeyboardInterrupt
        A Ctrl-C: the output is closed first, and ``resume=True`` finishes the run.

    Examples
    --------
    ::

        import mpigather

        summary = mpigather.run(abs, [-1, 2, -3])
        if summary is not None:  # on rank 0
            assert dict(summary.results) == {0: 1, 1: 2, 2: 3}
    """
    opts = make_options(**{k: v for k, v in locals().items() if k in _OPTION_NAMES})  # (before MPI starts)
    from .launch import check as check_launch
    from .startup import MASTER_CODE, WORKER_CODE, warming
    from .transport import MPILink, world_size_and_rank

    signals.reset()
    size, rank = world_size_and_rank(comm)
    # each rank imports the code it runs while the others join: rank 0 the master's (and the
    # worker's too when it is alone), the others the worker's
    code = (*MASTER_CODE, "mpigather.tasks.source") if rank == 0 else ()
    link = MPILink(comm, patience=opts.hello_patience,
                   meanwhile=warming((*code, *WORKER_CODE) if rank != 0 or size == 1 else code))
    summary: Summary | None = None
    try:
        if comm is None:
            check_launch(link.size)
        if link.rank != 0:
            run_on(link, func, None, out, opts)
            link.await_release()  # sleeping, until the master has closed the run
            return None
        from .tasks import source_of

        source = source_of(tasks)
        summary = run_on(link, func, source, out, opts, total=source.total)
        if summary is not None and summary.ctrl_c:  # the output is closed: now the program stops, as on every rank
            raise KeyboardInterrupt(f"mpigather.run was interrupted: {summary.done} task(s) done"
                                    + (f", kept in {out} (resume=True finishes the run)" if out is not None else ""))
        return summary
    finally:
        if link.rank == 0:  # the workers released with a stop wait for this (to others it is harmless)
            gone = set(summary.lost if summary is not None else [])
            link.release(r for r in range(1, link.size) if r not in gone)
        link.close()


def run_on(link: Any, func: Callable[[Any], Any], source: Any, out: str | os.PathLike[str] | None,
           opts: Options, *, total: int | None = None, argv: list[str] | None = None,
           hooks: dict[str, Any] | None = None, worker_args: dict[str, Any] | None = None) -> Summary | None:
    """Run with an existing link. Rank 0 is the master; with one rank, master and worker share it.

    ``source``: a ``tasks.TaskSource`` (the master's; None on workers), or the executor's own
    (anything with ``take``, or an iterable of items: see ``scheduler.IterSource``).
    ``hooks`` (the executor's): ``on_done``, ``on_failed``, ``master``, ``sink``. ``worker_args``:
    extra arguments of ``Worker`` (``send_exceptions``, ``initializer``, ``initargs``...).
    """
    wargs = worker_args or {}
    if link.rank != 0:
        from .worker import serve

        serve(link, func, opts, None if out is None else str(out), **wargs)
        return None
    assert source is not None
    kw: dict[str, Any] = {"total": total, "argv": argv, "hooks": hooks}
    if link.size > 1:
        return master_run(link, source, out, opts, **kw)
    return _one_rank(func, source, out, opts, kw, wargs)


def _one_rank(func: Callable[[Any], Any], source: Any,
              out: str | os.PathLike[str] | None, opts: Options, kw: dict[str, Any],
              wargs: dict[str, Any]) -> Summary | None:
    """One rank: the master in a helper thread, the worker (the task function) in this thread."""
    from .loopback import LoopbackHub
    from .worker import Worker

    mlink, wlink = LoopbackHub(2).links()
    box: dict[str, Any] = {}

    def master() -> None:
        try:
            box["summary"] = master_run(mlink, source, out, opts, **kw)
        except BaseException as e:  # noqa: BLE001 - raised again in the calling thread
            box["error"] = e

    t = threading.Thread(target=master, name="mpigather-master", daemon=True)
    old = signals.install(master=True)
    t.start()
    try:
        Worker(wlink, func, opts, None if out is None else str(out), **wargs).run()
    except MasterFailed:
        pass  # the master's own error is raised below
    except BaseException as e:
        if t.is_alive():  # a real Ctrl-C in a task: let the master end in order, then go
            if isinstance(e, KeyboardInterrupt) and signals.sigint_seen():
                wlink.send(M.Interrupted(), 0, M.CTRL)
            else:
                wlink.send(M.Crash(f"interrupted: {type(e).__name__}"), 0, M.CTRL)
            wlink.send(M.Bye({}), 0, M.CTRL)
            t.join(timeout=60)
        raise
    finally:
        signals.restore(old)
    t.join()
    if "error" in box:
        raise box["error"]
    return box["summary"]  # type: ignore[no-any-return]


def master_run(link: Any, source: Any, out: str | os.PathLike[str] | None, opts: Options, *,
               total: int | None = None, argv: list[str] | None = None,
               hooks: dict[str, Any] | None = None) -> Summary:
    """The master's whole run: lock and open the output, run the loop, close and report."""
    lock = None
    try:
        if out is None:  # in memory (and the executor): no output to check, lock or open
            sink, journal, done, total = _in_memory(source, opts, total, "sink" not in (hooks or {}))
        else:
            from .lock import OutputLock
            from .output import check_output, open_output

            lock = OutputLock(out) if opts.lock else None
            if lock is not None:
                check_output(out, opts, exists=False)  # where it goes must exist before its lock file can
                lock.acquire(argv or sys.argv)
            task_source = source if _own_source(source) else None
            sink, journal, done, total = open_output(out, opts, total, argv, task_source)
    except BaseException as e:
        if lock is not None:
            lock.release()
        _release_workers(link, str(e))
        raise
    hooks = hooks or {}
    if "sink" in hooks:  # the executor's: its values go to futures
        sink = hooks["sink"]
    try:
        return _drive(link, source, sink, journal, done, out, opts, total, hooks)
    finally:
        if lock is not None:
            lock.release()


def _in_memory(source: Any, opts: Options, total: int | None,
               make_sink: bool) -> tuple[Any, None, None, int | None]:
    """``output.open_output`` for ``out=None``, without importing the file outputs' code (most of
    a cold executor's or first run's start): the memory sink (unless the caller brings its
    own), no journal, nothing done before, and the number of tasks."""
    opts.check_in_memory()
    sink = None
    if make_sink:
        from .sinks.memory import MemorySink

        sink = MemorySink()
    return sink, None, None, source.prepare(None, None) if _own_source(source) else total


def _timeout_of(payload: Any) -> float | None:
    """``tasks.timeout_of``: a dict task's own ``timeout``. Imported only for a dict: an executor's
    tasks are pickled calls, and its master does not import it before its first result."""
    if not isinstance(payload, dict):
        return None
    from .tasks.params import timeout_of

    return timeout_of(payload)


def _own_source(source: Any) -> bool:
    """Is ``source`` a ``tasks.TaskSource`` (``run``'s), not the executor's? Asked without importing
    that module where none was made (the executor's master, before its first result)."""
    mod = sys.modules.get("mpigather.tasks.source")
    return mod is not None and isinstance(source, mod.TaskSource)


def _drive(link: Any, source: Any, sink: Sink, journal: Journal | None, done: DoneSet | None, out: Any,
           opts: Options, total: int | None, hooks: dict[str, Any]) -> Summary:
    from .master import Master, ranks_text
    from .progress import Progress
    from .scheduler import Scheduler
    n_done_before = len(done) if done else 0
    own = _own_source(source)
    if own:
        source.skip(done, hashed=journal is not None)
    elif done:
        raise UsageError("a resume needs the task list as a list, a range, a dict or a task file")
    tasks = source
    sink.total = total
    sched = Scheduler(tasks, expect=range(1, link.size), start=time.monotonic(), prefetch=opts.prefetch,
                      retries=opts.retries, max_failures=opts.max_failures, grace=opts.grace, timeout=opts.timeout,
                      timeout_of=source.timeout_of if own else _timeout_of,
                      block_time=opts.batch_window, hello_patience=opts.hello_patience,
                      total=None if total is None else max(0, total - n_done_before))
    if hasattr(link, "fault_behaviour"):
        log.info("%s", link.fault_behaviour())
    progress = Progress.make(opts.progress, total, done_before=n_done_before)
    master = Master(link, sched, sink, journal, opts, progress=progress, on_done=hooks.get("on_done"),
                    on_failed=hooks.get("on_failed"), steps_dir=None if out is None else _steps_dir(out),
                    done=done, describe=source.describe if own else None)
    if "master" in hooks:
        hooks["master"](master)
    if own and hasattr(source, "on_total"):
        source.on_total = _total_known(sched, sink, journal, progress, n_done_before)
        master.on_durable = source.started  # (a task file's pass, held while the run starts, goes on)
    try:
        with signals.deferred_sigint():  # a Ctrl-C stops the loop in order, and never lands inside the closing
            summary = _drive_loop(master, progress, link, sink, journal, done, out, opts, total, n_done_before)
    finally:
        if own:
            source.close()  # (a task file's pass, if the run ended before it did)
    if summary.ctrl_c and master.unreleased and link.size > 1 and not getattr(link, "in_process", False):
        log.error("ending the job: worker(s) %s did not stop on the Ctrl-C", ranks_text(master.unreleased))
        sys.stdout.flush()
        sys.stderr.flush()
        link.abort(summary.exit_code)  # the output is closed, and the journal says where the run stopped
    return summary


def _steps_dir(out: Any) -> str:
    from .output import steps_path

    return str(steps_path(out))


def _total_known(sched: Scheduler, sink: Sink, journal: Journal | None, progress: Any,
                 n_done_before: int) -> Any:
    """What to do once a task file checked during the run has been checked whole: its total is
    known (to the scheduler, the output's table and the progress), and the journal keeps it with
    the file's signature (so that a resume of an unchanged file need not check it again)."""

    def known(total: int, signature: dict[str, Any]) -> None:
        sched.total = max(0, total - n_done_before)
        sink.total = total
        if progress is not None:
            progress.set_total(total)
        if journal is not None:
            journal.source(total=total, source=signature)

    return known


def _drive_loop(master: Master, progress: Any, link: Any, sink: Sink, journal: Journal | None, done: DoneSet | None,
                out: Any, opts: Options, total: int | None, n_done_before: int) -> Summary:
    try:
        try:
            summary = master.run()
        finally:
            if progress is not None:
                progress.close()
        if total is None and master.sched.total is not None:  # a task file checked while the run went on
            total = master.sched.total + n_done_before
    except BaseException as exc:
        # release the workers before the error goes up, so that no rank is left waiting
        if not isinstance(exc, UsageError):
            log.error("master failed: %s: %s; stopping all workers", type(exc).__name__, exc)
        try:
            master.abort(f"master failed: {type(exc).__name__}: {exc}")
        except Exception as again:  # the link itself is broken: end the job
            log.error("could not release the workers (%s: %s); ending the job", type(again).__name__, again)
            link.abort(3)
        from .run_end import close_failed

        close_failed(sink, journal, 2 if isinstance(exc, UsageError) else 3, f"{type(exc).__name__}: {exc}")
        raise
    if summary.lost and out is not None:
        sink.remove_leftovers()  # what the lost workers were writing (direct mode)
    summary.skipped = n_done_before
    if total is not None:
        summary.total += total
        summary.not_run = max(0, total - summary.done - len(summary.failed) - n_done_before)
        if summary.interrupted and summary.not_run == 0:
            summary.interrupted = False  # the signal came as the last tasks ended: nothing to resume
    summary.out = None if out is None else str(out)
    if sink.in_memory:
        summary.results = sink.in_task_order()  # type: ignore[attr-defined]
    from .run_end import close_failed, finish

    try:
        master.finish_steps(complete=not summary.interrupted and not summary.crash and not summary.stopped_early)
        finish(sink, journal, summary)
    except BaseException as exc:
        close_failed(sink, journal, 3, f"{type(exc).__name__}: {exc}")
        raise
    if summary.crash:
        raise MPIGatherError(f"the run failed: {summary.crash}; every result the journal calls done is safe,"
                             f" and {opts.flag('resume')} continues the run")
    return summary


def _release_workers(link: Any, reason: str) -> None:
    """The master failed before its loop: let every worker go instead of leaving it waiting."""
    if link.size > 1:
        from .master import release_workers

        release_workers(link, reason, set(range(1, link.size)))


__all__ = ["NOT_FOR_RUN", "master_run", "run", "run_on"]
