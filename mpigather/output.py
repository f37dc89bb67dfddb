"""A run's output on the master: check it before the run, open (or reopen on resume) its sink and
journal, and make the output agree with the journal after a run that was cut short."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from .config import Options
from .errors import UsageError
from .journal import DoneSet, Journal, id_key, journal_path, load_state
from .link import hostname
from .sinks import Sink, is_hdf5_path, open_sink
from .sinks import layout as L
from .sinks.table_base import RowsDone
from .tasks import TaskSource

log = logging.getLogger("mpigather")


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
        opts.check_in_memory()
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
                import shutil  # (only to overwrite: not at every start)

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
                  host=hostname(), out=str(p), mode=opts.mode, chunk_size=opts.chunk_size,
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
