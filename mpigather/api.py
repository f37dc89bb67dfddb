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
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from . import messages as M
from . import signals
from .config import Options, make_options
from .errors import MasterFailed, MPIGatherError, UsageError
from .journal import DoneSet, Journal, id_key, journal_path, load_state
from .lock import OutputLock
from .master import Master, release_workers
from .progress import Progress
from .scheduler import Scheduler
from .sinks import Sink, is_hdf5_path, open_sink
from .sinks import layout as L
from .sinks.table import RowsDone
from .summary import Summary
from .tasks import TaskSource, source_of, timeout_of
from .worker import Worker

log = logging.getLogger("mpigather")

__version__ = "0.2.0"


def steps_path(out: str | os.PathLike[str]) -> Path:
    """Where a run keeps its tasks' step outputs: beside the output."""
    p = Path(out)
    return p.with_name(p.name.rstrip("/") + ".steps")


def _output_paths(out: Path) -> list[Path]:
    paths = [out, journal_path(out), steps_path(out)]
    if is_hdf5_path(out):
        paths += [out.with_name(out.name + L.PARTIAL), out.with_name(out.name + L.PARTS)]
    return paths


def check_output(out: str | os.PathLike[str] | None, opts: Options, exists: bool = True) -> None:
    """Refuse an output that cannot be written, or (``exists``) that exists, unless resuming or overwriting."""
    if out is None:
        if opts.mode == "direct":
            where = "--out x.h5 or --out DIR" if opts.interface == "cli" else "out='x.h5' or out='DIR'"
            raise UsageError(f"mode 'direct' needs a file output ({where})")
        return
    p = Path(out)
    existing = [q for q in _output_paths(p) if q.exists()] if exists else []
    if existing and not (opts.resume or opts.overwrite):
        raise UsageError(f"output {p} already exists ({existing[0]}); pass {opts.flag('resume')} to continue that"
                         f" run or {opts.flag('overwrite')} to replace it")
    parent = p.absolute().parent
    if not parent.is_dir():
        raise UsageError(f"cannot write output {p}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write output {p}: directory {parent} is not writable")
    if p.exists() and not is_hdf5_path(p) and not p.is_dir():
        raise UsageError(f"output {p} is a file; give a directory, or a name ending in .h5 for HDF5")
    if p.is_dir() and is_hdf5_path(p):
        raise UsageError(f"output {p} is a directory but its name says HDF5")


def open_output(out: str | os.PathLike[str] | None, opts: Options, total: int | None,
                argv: list[str] | None = None, source: TaskSource | None = None,
                ) -> tuple[Sink, Journal | None, DoneSet | None, int | None]:
    """Create or reopen the sink and journal (the caller holds the output's lock).

    ``source.prepare`` checks the task list (and, on resume, that done tasks keep their
    parameters: a changed task raises UsageError) and says how many tasks there are. Returns the
    sink, the journal, the tasks already done (None when starting afresh) and the total.
    """
    check_output(out, opts)
    if out is None:
        return open_sink(None), None, None, source.prepare(None, None) if source is not None else total
    p = Path(out)
    if opts.overwrite:
        for q in _output_paths(p):
            if q.is_dir():
                shutil.rmtree(q)
            elif q.exists():
                q.unlink()
    jp = journal_path(p)
    done: DoneSet | None = None
    before = None
    if opts.resume and jp.exists():
        st = load_state(jp, want_done=True)
        done = st.done_set
        before = st.start.get("source")
        if done is not None:
            done.steps = st.steps
    if source is not None:
        total = source.prepare(done, before)
    try:
        sink = open_sink(p, resume=opts.resume)
    except OSError as e:
        raise UsageError(f"cannot write output {p}: {e.strerror or e}") from None
    journal = Journal(jp, resume=opts.resume)
    if done is not None:
        done = _reconcile(sink, journal, done, p)
    journal.start(total=total, already_done=len(done) if done else 0, argv=argv or sys.argv, pid=os.getpid(),
                  host=socket.gethostname(), out=str(p), mode=opts.mode, chunk_size=opts.chunk_size,
                  source=source.signature() if source is not None else None)
    journal.commit()
    return sink, journal, done, total


def _reconcile(sink: Sink, journal: Journal, done: DoneSet, out: Path) -> DoneSet:
    """On resume: the output must hold exactly what the journal calls done. What it holds beyond
    that (a commit cut short) the sink removes; what it lost runs again."""
    present, lost = sink.reconcile(done)
    set_aside = getattr(sink, "set_aside", None) is not None
    if present == done.n_whole and not len(lost) and not set_aside:
        return done
    whole = [] if set_aside else [(t, seq, done.lookup(t)) for t, seq in sink.done_ids() or [] if t in done]
    ranges = [] if set_aside else _ranges_without(done.ranges, lost)
    n_lost = len(done) - len(whole) - sum(n for _, n, _ in ranges)
    log.warning("%d result(s) the journal calls done are missing from %s; they run again", n_lost, out)
    journal.reset(f"{n_lost} done result(s) missing from the output")
    journal.done([(t, {"hash": h, "seq": seq}) for t, seq, h in whole])
    journal.rows([RowsDone(s, n, [], 0, 0, 0, 0, 0.0, h) for s, n, h in ranges])
    return DoneSet([id_key(t) for t, _, _ in whole], [h or 0 for _, _, h in whole],
                   [seq for _, seq, _ in whole if seq >= 0], ranges)


def _ranges_without(ranges: list[tuple[int, int, int]], lost: Any) -> list[tuple[int, int, int]]:
    """Ranges of done rows, less the positions ``lost``: a range cut in pieces keeps no hash."""
    gone = set(int(x) for x in lost)
    out = []
    for s, n, h in ranges:
        if not any(s <= x < s + n for x in gone):
            out.append((s, n, h))
            continue
        start = None
        for x in range(s, s + n + 1):
            if x < s + n and x not in gone:
                start = x if start is None else start
            elif start is not None:
                out.append((start, x - start, 0))
                start = None
    return out


def run(
    func: Callable[[Any], Any],
    tasks: Iterable[Any],
    out: str | os.PathLike[str] | None = None,
    comm: Any = None,
    **options: Any,
) -> Summary | None:
    """Run ``func`` on every task over the ranks of ``comm`` (default COMM_WORLD).

    On the master (rank 0) it returns a ``Summary``; with ``out=None`` the values are in
    ``summary.results[task_id]``, in task order. On workers it returns None once they are
    released. Every rank of ``comm`` must call it; ``tasks`` is only read on the master (a
    list, any iterable, or a dict of task id to task).
    """
    from .launch import check as check_launch
    from .transport import MPILink

    opts = make_options(**options)
    signals.reset()
    link = MPILink(comm, patience=opts.hello_patience)
    try:
        if comm is None:
            check_launch(link.size)
        if link.rank != 0:
            return run_on(link, func, None, out, opts)
        source = source_of(tasks)
        summary = run_on(link, func, source, out, opts, total=source.total)
        if summary is not None and summary.ctrl_c:  # the output is closed: now the program stops, as on every rank
            raise KeyboardInterrupt(f"mpigather.run was interrupted: {summary.done} task(s) done"
                                    + (f", kept in {out} (resume=True finishes the run)" if out is not None else ""))
        return summary
    finally:
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
        old = signals.install(master=False)  # workers leave SIGTERM/SIGUSR1 to the master
        try:
            Worker(link, func, opts, None if out is None else str(out), **wargs).run()
        finally:
            signals.restore(old)
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
    lock = OutputLock(out) if out is not None and opts.lock else None
    try:
        if lock is not None:
            check_output(out, opts, exists=False)  # where it goes must exist before its lock file can
            lock.acquire(argv or sys.argv)
        task_source = source if isinstance(source, TaskSource) else None
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


def _drive(link: Any, source: Any, sink: Sink, journal: Journal | None, done: DoneSet | None, out: Any,
           opts: Options, total: int | None, hooks: dict[str, Any]) -> Summary:
    n_done_before = len(done) if done else 0
    if isinstance(source, TaskSource):
        source.skip(done, hashed=journal is not None)
    elif done:
        raise UsageError("a resume needs the task list as a list, a range, a dict or a task file")
    tasks = source
    sink.total = total
    own = isinstance(source, TaskSource)
    sched = Scheduler(tasks, expect=range(1, link.size), start=time.monotonic(), prefetch=opts.prefetch,
                      retries=opts.retries, max_failures=opts.max_failures, grace=opts.grace, timeout=opts.timeout,
                      timeout_of=source.timeout_of if own else timeout_of,
                      block_time=opts.batch_window, hello_patience=opts.hello_patience,
                      total=None if total is None else max(0, total - n_done_before))
    if hasattr(link, "fault_behaviour"):
        log.info("%s", link.fault_behaviour())
    progress = Progress.make(opts.progress, total, done_before=n_done_before)
    master = Master(link, sched, sink, journal, opts, progress=progress, on_done=hooks.get("on_done"),
                    on_failed=hooks.get("on_failed"), steps_dir=None if out is None else str(steps_path(out)),
                    done=done, describe=source.describe if own else None)
    if "master" in hooks:
        hooks["master"](master)
    if own and hasattr(source, "on_total"):
        source.on_total = _total_known(sched, sink, journal, progress, n_done_before)
    try:
        with signals.deferred_sigint():  # a Ctrl-C stops the loop in order, and never lands inside the closing
            summary = _drive_loop(master, progress, link, sink, journal, done, out, opts, total, n_done_before)
    finally:
        if own:
            source.close()  # (a task file's pass, if the run ended before it did)
    if summary.ctrl_c and master.unreleased and link.size > 1 and not getattr(link, "in_process", False):
        log.error("ending the job: worker(s) %s did not stop on the Ctrl-C", sorted(master.unreleased))
        sys.stdout.flush()
        sys.stderr.flush()
        link.abort(summary.exit_code)  # the output is closed, and the journal says where the run stopped
    return summary


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
        _close_failed(sink, journal, 2 if isinstance(exc, UsageError) else 3, f"{type(exc).__name__}: {exc}")
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
    try:
        master.finish_steps(complete=not summary.interrupted and not summary.crash and not summary.stopped_early)
        _finish(sink, journal, summary)
    except BaseException as exc:
        _close_failed(sink, journal, 3, f"{type(exc).__name__}: {exc}")
        raise
    if summary.crash:
        raise MPIGatherError(f"the run failed: {summary.crash}; every result the journal calls done is safe,"
                             f" and {opts.flag('resume')} continues the run")
    return summary


def _finish(sink: Sink, journal: Journal | None, summary: Summary) -> None:
    info = {"version": __version__, "done": summary.done, "failed": len(summary.failed),
            "bytes": summary.bytes, "wall": summary.wall, "master": summary.master,
            "workers": {str(r): {k: v for k, v in w.items() if k != "spans"} for r, w in summary.workers.items()},
            "interrupted": summary.interrupted}
    complete = not summary.interrupted and not summary.crash and not summary.stopped_early
    sink.set_run_info(info)
    sink.close(complete=complete)
    if journal is not None:
        for rank, w in summary.workers.items():
            journal.stats(rank, w)
        journal.end(done=summary.done, failed=len(summary.failed), interrupted=summary.interrupted,
                    exit=summary.exit_code, wall=summary.wall, master=summary.master,
                    **({"stopped_early": summary.stopped_early} if summary.stopped_early else {}))
        journal.close()


def _close_failed(sink: Sink, journal: Journal | None, code: int, error: str) -> None:
    """A failed run: keep what is durable, and say so in the journal if it can still be written."""
    try:
        sink.close(complete=False)
    except Exception:  # the output itself may be what failed
        pass
    if journal is not None:
        try:
            journal.end(exit=code, error=error, interrupted=False)
            journal.close()
        except Exception:
            pass


def _release_workers(link: Any, reason: str) -> None:
    """The master failed before its loop: let every worker go instead of leaving it waiting."""
    if link.size > 1:
        release_workers(link, reason, set(range(1, link.size)))


__all__ = ["check_output", "master_run", "open_output", "run", "run_on"]
