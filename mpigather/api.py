"""``mpigather.run``: the same job as the command line, from inside a user's MPI program."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from . import results as R
from .config import Options, make_options
from .errors import MasterFailed, UnsupportedResultError, UsageError
from .journal import Journal, journal_path, load_state, now
from .master import Master, Summary, record_done, release_workers
from .progress import Progress
from .scheduler import Scheduler
from .sinks import MemorySink, Sink, is_hdf5_path, open_sink
from .tasks import iterable_tasks, skip_done, timeout_of

log = logging.getLogger("mpigather")

__version__ = "0.1.0"


def _output_paths(out: Path) -> list[Path]:
    from .h5sink import PARTIAL, PARTS

    paths = [out, journal_path(out)]
    if is_hdf5_path(out):
        paths += [out.with_name(out.name + PARTIAL), out.with_name(out.name + PARTS)]
    return paths


def check_output(out: str | os.PathLike[str] | None, opts: Options) -> None:
    """Refuse an output that exists (unless resuming or overwriting) or cannot be written."""
    if out is None:
        if opts.mode == "direct":
            raise UsageError("--mode direct needs a file output (--out x.h5 or --out DIR)")
        return
    p = Path(out)
    existing = [q for q in _output_paths(p) if q.exists()]
    if existing and not (opts.resume or opts.overwrite):
        raise UsageError(
            f"output {p} already exists ({existing[0]}); pass --resume to continue that run"
            " or --overwrite to replace it"
        )
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
                argv: list[str] | None = None) -> tuple[Sink, Journal | None, set[Any]]:
    """Create or reopen the sink and journal. Returns them and the ids already done."""
    check_output(out, opts)
    if out is None:
        return MemorySink(), None, set()
    p = Path(out)
    if opts.overwrite:
        for q in _output_paths(p):
            if q.is_dir():
                shutil.rmtree(q)
            elif q.exists():
                q.unlink()
    jp = journal_path(p)
    done: set[Any] = set()
    if opts.resume and jp.exists():
        done = set(load_state(jp).done)
    try:
        sink = open_sink(p, resume=opts.resume)
    except OSError as e:
        raise UsageError(f"cannot write output {p}: {e.strerror or e}") from None
    if opts.resume:
        present = sink.reconcile(done)
        if present != done:
            log.warning("%d result(s) the journal calls done are missing from %s; they run again",
                        len(done - present), p)
        done = present
    journal = Journal(jp, resume=opts.resume)
    journal.write({"ev": "start", "time": now(), "total": total, "already_done": len(done),
                   "argv": argv or sys.argv, "pid": os.getpid(), "host": socket.gethostname(), "out": str(p),
                   "mode": opts.mode,
                   "chunk_size": opts.chunk_size})
    journal.commit()
    return sink, journal, done


def run(
    func: Callable[[Any], Any],
    tasks: Iterable[Any],
    out: str | os.PathLike[str] | None = None,
    comm: Any = None,
    **options: Any,
) -> Summary | None:
    """Run ``func`` on every task over the ranks of ``comm`` (default COMM_WORLD).

    On the master (rank 0) it returns a ``Summary``; with ``out=None`` the values are in
    ``summary.results[task_id]``. On workers it returns None once they are released. Every
    rank of ``comm`` must call it. ``tasks`` is only read on the master.
    """
    from .transport import Link

    opts = make_options(**options)
    link = Link(comm)
    source = _as_source(tasks) if link.rank == 0 else None
    return run_on(link, func, source, out, opts, total=_len_or_none(tasks) if link.rank == 0 else None)


def _as_source(tasks: Any) -> Iterable[tuple[Any, Any]]:
    if isinstance(tasks, dict):
        return iter(tasks.items())
    return iterable_tasks(tasks)


def _len_or_none(tasks: Any) -> int | None:
    try:
        return len(tasks)
    except TypeError:
        return None


def run_on(link: Any, func: Callable[[Any], Any], source: Iterable[tuple[Any, Any]] | None,
           out: str | os.PathLike[str] | None, opts: Options, *, total: int | None = None,
           argv: list[str] | None = None, allow_object: bool = False, hooks: dict[str, Any] | None = None,
           ) -> Summary | None:
    """Run with an existing link. Rank 0 is the master; with one rank, tasks run inline."""
    if link.rank != 0:
        from .worker import Worker, quiet_signals

        quiet_signals()
        Worker(link, func, opts, None if out is None else str(out), allow_object=allow_object).run()
        return None
    assert source is not None
    try:
        sink, journal, done = open_output(out, opts, total, argv)
    except UsageError as e:
        _release_workers(link, str(e))
        raise
    hooks = hooks or {}
    summary: Summary
    try:
        tasks = skip_done(source, done) if done else source
        if link.size == 1:
            summary = _run_inline(func, tasks, sink, journal, opts, allow_object, hooks)
        else:
            sched = Scheduler(tasks, expect=range(1, link.size), start=time.monotonic(), prefetch=opts.prefetch,
                              retries=opts.retries, timeout=opts.timeout,
                              timeout_of=timeout_of, batch_window=opts.batch_window)
            progress = Progress.make(opts.progress, total, done_before=len(done))
            master = Master(link, sched, sink, journal, opts, progress=progress,
                            on_done=hooks.get("on_done"), on_failed=hooks.get("on_failed"))
            if "master" in hooks:
                hooks["master"](master)
            try:
                summary = master.run()
            except BaseException as exc:
                # release the workers before the error goes up, so that no rank is left waiting
                log.error("master failed: %s: %s; stopping all workers", type(exc).__name__, exc)
                try:
                    master.abort(f"master failed: {type(exc).__name__}: {exc}")
                except Exception as again:  # the link itself is broken: end the job
                    log.error("could not release the workers (%s: %s); ending the job", type(again).__name__, again)
                    link.abort(3)
                raise
            finally:
                if master.progress is not None:
                    master.progress.close()
            summary.stuck = sched.stuck_workers()
            summary.lost = sched.lost_workers()
        summary.skipped = len(done)
        if total is not None:
            summary.total = total
            summary.not_run = max(0, total - summary.done - len(summary.failed) - len(done))
            if summary.interrupted and summary.not_run == 0:
                summary.interrupted = False  # the signal came as the last tasks ended: nothing to resume
        summary.out = None if out is None else str(out)
        if isinstance(sink, MemorySink):
            summary.results = sink.results
        _finish(sink, journal, summary)
    except BaseException:
        sink.close(complete=False)
        if journal is not None:
            journal.close()
        raise
    if summary.usage_error:
        raise UsageError(summary.usage_error)
    return summary


def _finish(sink: Sink, journal: Journal | None, summary: Summary) -> None:
    info = {"version": __version__, "done": summary.done, "failed": len(summary.failed),
            "bytes": summary.bytes, "wall": summary.wall, "master": summary.master,
            "workers": {str(r): {k: v for k, v in w.items() if k != "spans"} for r, w in summary.workers.items()},
            "interrupted": summary.interrupted}
    complete = not summary.interrupted and not summary.usage_error
    sink.set_run_info(info)
    sink.close(complete=complete)
    if journal is not None:
        for rank, w in summary.workers.items():
            journal.write({"ev": "stats", "rank": rank, **w})
        journal.write({"ev": "end", "time": now(), "done": summary.done, "failed": len(summary.failed),
                       "interrupted": summary.interrupted, "exit": summary.exit_code, "wall": summary.wall,
                       "master": summary.master})
        journal.close()


def _release_workers(link: Any, reason: str) -> None:
    """The master failed before its loop: let every worker go instead of leaving it waiting."""
    if link.size > 1:
        release_workers(link, reason, set(range(1, link.size)))


def _run_inline(func: Callable[[Any], Any], tasks: Iterable[tuple[Any, Any]], sink: Sink,
                journal: Journal | None, opts: Options, allow_object: bool, hooks: dict[str, Any]) -> Summary:
    """One rank: run every task here, with the same sinks, journal and retries (no leases)."""
    import socket

    from .worker import format_exc

    host = socket.gethostname()
    summary = Summary()
    t_start = time.monotonic()
    last_commit = t_start
    on_done, on_failed = hooks.get("on_done"), hooks.get("on_failed")

    def commit() -> None:
        record_done(sink.commit(), journal, summary, on_done)

    for tid, payload in tasks:
        for attempt in range(1, opts.retries + 2):
            t0 = time.perf_counter()
            try:
                value = func(payload)
            except (Exception, SystemExit) as exc:
                err = format_exc(tid, attempt, 0, host, exc)
                if journal is not None:
                    journal.write({"ev": "failed", "id": tid, "att": attempt, "rank": 0, "error": err,
                                   "final": attempt > opts.retries})
                if attempt > opts.retries:
                    summary.failed[tid] = err
                    if on_failed is not None:
                        on_failed(tid, err, None)
                continue
            dt = time.perf_counter() - t0
            try:
                header, bufs = R.encode_any(value) if allow_object else R.encode(value)
            except UnsupportedResultError as e:
                summary.usage_error = f"task {tid!r}: {e}"
                return summary
            meta = {"rank": 0, "attempt": attempt, "duration": dt, "bytes": header.nbytes, "crc32c": header.crc}
            sink.put(tid, header, [bytearray(b) for b in bufs] if isinstance(sink, MemorySink) else bufs, meta)
            break
        if time.monotonic() - last_commit > 0.05:
            commit()
            last_commit = time.monotonic()
    commit()
    summary.wall = time.monotonic() - t_start
    return summary


__all__ = ["MasterFailed", "check_output", "open_output", "run", "run_on"]
