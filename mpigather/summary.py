"""What a run did: counts, failures, bytes, timings, and the exit status they mean."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .workerstats import Fleet

INTERRUPTED = 75  # exit status: stopped on a signal, resumable (EX_TEMPFAIL)
CTRL_C = 130  # exit status: stopped by a Ctrl-C (128 + SIGINT, as shells report it), resumable


@dataclass(init=False, repr=False, eq=False)  # (the three written out below; see __init__)
class Summary:
    """What a run did: ``mpigather.run`` returns it on rank 0.

    ``exit_code`` is the status the command line would exit with, and ``text()`` the report it
    prints. A failed task does not raise: it is in ``failed``; check ``exit_code`` (0: every task
    done) or ``failed`` after a run.

    Attributes
    ----------
    total : int
        Tasks in the run, those done by an earlier run included.
    done : int
        Tasks whose result this run stored.
    failed : dict
        Each failed task's id to the text of its error (its traceback). The first thousand keep
        their own text; later ones share their error's first text, so a storm of failures costs
        little memory.
    skipped : int
        Tasks done by an earlier run (``resume=True``), not run again.
    not_run : int
        Tasks never run: the run was interrupted or stopped early.
    bytes : int
        Bytes of results stored.
    wall : float
        Seconds the run took.
    interrupted : bool
        Stopped by a signal (SIGTERM, SIGUSR1, Ctrl-C) before the end; ``resume=True`` finishes it.
    ctrl_c : bool
        The signal was a Ctrl-C (SIGINT).
    crash : str or None
        Why the run could not go on (a worker failed outside any task), or None.
    stuck : dict
        Each worker still stuck in a task past its ``timeout`` (rank to task id); the task ran
        elsewhere or failed. The command line ends such workers; a library caller decides.
    lost : list of int
        The ranks of workers that were lost (died) during the run.
    workers : dict
        Per worker rank: its host, tasks, and seconds computing, sending and idle.
    master : dict
        The master's seconds receiving, writing and waiting, its CPU use and peak memory.
    results : mapping
        With ``out=None``: task id to value, in task order (``columns()`` and ``to_pandas()``
        give the table of small results). Empty when the results went to a file.
    out : str or None
        Where the results went; None when they are in memory.
    errors : list of dict
        Each distinct error once, with how many tasks it failed.
    stopped_early : str or None
        Why the run stopped handing out work (``max_failures``), or None.
    stopped_hint : str
        How to go on after it did.
    fleet : workerstats.Fleet
        The workers seen at scale: ``workers`` with their spans kept for at most 64 of them (then
        for the outliers only) and their busy-time profiles summed; ``fleet_summary()`` gives
        totals, percentiles and outliers.
    """

    total: int = 0
    done: int = 0
    failed: dict[Any, str] = field(default_factory=dict)
    skipped: int = 0  # done by an earlier run (resume)
    not_run: int = 0
    bytes: int = 0
    wall: float = 0.0
    interrupted: bool = False
    ctrl_c: bool = False  # the run was stopped by a Ctrl-C (SIGINT)
    crash: str | None = None  # a worker failed outside any task: the run could not go on
    stuck: dict[int, Any] = field(default_factory=dict)
    lost: list[int] = field(default_factory=list)
    workers: dict[int, dict[str, Any]] = field(default_factory=dict)
    master: dict[str, float] = field(default_factory=dict)
    results: Mapping[Any, Any] = field(default_factory=dict)
    out: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: str | None = None  # why the run stopped early (too many failures), or None
    stopped_hint: str = ""  # how to go on after it did
    fleet: Fleet = field(init=False, repr=False, compare=False)  # ``workers`` with bounded spans, profiles

    # __init__, __repr__ and __eq__ are those @dataclass would write (tests/test_units.py checks
    # them against its own): having it generate them cost 0.5 ms of every master's start, before
    # its first result. A dict or list left at None is a new empty one.
    def __init__(self, total: int = 0, done: int = 0, failed: dict[Any, str] | None = None, skipped: int = 0,
                 not_run: int = 0, bytes: int = 0, wall: float = 0.0, interrupted: bool = False,
                 ctrl_c: bool = False, crash: str | None = None, stuck: dict[int, Any] | None = None,
                 lost: list[int] | None = None, workers: dict[int, dict[str, Any]] | None = None,
                 master: dict[str, float] | None = None, results: Mapping[Any, Any] | None = None,
                 out: str | None = None, errors: list[dict[str, Any]] | None = None, stopped_early: str | None = None,
                 stopped_hint: str = "") -> None:
        self.total, self.done, self.failed = total, done, {} if failed is None else failed
        self.skipped, self.not_run, self.bytes, self.wall = skipped, not_run, bytes, wall
        self.interrupted, self.ctrl_c, self.crash = interrupted, ctrl_c, crash
        self.stuck, self.lost = {} if stuck is None else stuck, [] if lost is None else lost
        self.workers, self.master = {} if workers is None else workers, {} if master is None else master
        self.results, self.out = {} if results is None else results, out
        self.errors = [] if errors is None else errors
        self.stopped_early, self.stopped_hint = stopped_early, stopped_hint

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in _COMPARED)

    def __repr__(self) -> str:
        return f"{type(self).__qualname__}(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in _COMPARED) + ")"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is self.__class__:
            return self._values() == other._values()  # type: ignore[attr-defined]
        return NotImplemented

    def __getattr__(self, name: str) -> Any:
        # ``fleet`` is made when first asked for (a worker's goodbye, at the end): the summaries'
        # module, which it comes from, is not imported by a master before its first result
        if name != "fleet":
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        from .workerstats import Fleet

        fleet = self.fleet = Fleet(self.workers)
        return fleet

    def add_worker(self, rank: int, stats: dict[str, Any]) -> None:
        """A worker's goodbye: its record in ``workers``; its spans only while few workers have
        theirs (``workerstats.LANES_MAX``), then only the outliers'."""
        self.fleet.add(rank, stats)

    def fleet_summary(self) -> dict[str, Any]:
        """Totals, percentiles and outliers of the workers (``workerstats.summarise``; a few tenths
        of a second for 10,000 workers, so it is computed once for the summary and the journal)."""
        from . import workerstats as WS

        key = (len(self.workers), len(self.lost), len(self.stuck))
        cached = getattr(self, "_fleet_cache", None)
        if cached is None or cached[0] != key:
            cached = self._fleet_cache = (key, WS.summarise(self.workers, lost=self.lost, stuck=self.stuck,
                                                            profiles=self.fleet.profiles()))
        return cached[1]

    @property
    def exit_code(self) -> int:
        """The command line's exit status for this run: 0 every task done, 1 some failed or not
        run, 75 interrupted (resumable), 130 a Ctrl-C, 3 the run could not go on."""
        if self.crash:
            return 3
        if self.ctrl_c:
            return CTRL_C
        if self.interrupted:
            return INTERRUPTED
        return 1 if self.failed or self.not_run else 0

    def text(self) -> str:
        """The report the command line prints: counts, per-worker times, failures, what to do next."""
        from . import workerstats as WS

        gib = self.bytes / (1 << 30)
        rate = self.bytes / self.wall / (1 << 30) if self.wall > 0 else 0.0
        lines = [
            f"mpigather: {self.done} done, {len(self.failed)} failed"
            + (f", {self.skipped} already done" if self.skipped else "")
            + (f", {self.not_run} not run" if self.not_run else "")
            + f"; {gib:.3f} GiB in {self.wall:.2f} s ({rate:.2f} GiB/s)"
            + (f" -> {self.out}" if self.out else "")
        ]
        if self.workers:
            head = "  rank  host              tasks   compute     send     idle   (seconds)"
            if len(self.workers) <= WS.LIST_MAX:
                lines.append(head)
                lines += [_row(rank, self.workers[rank]) for rank in sorted(self.workers)]
            else:
                lines += WS.lines(self.fleet_summary(), self.workers, _row, head)
        if self.master:
            m = self.master
            lines.append(
                f"  master: receiving {m.get('recv', 0):.2f} s, writing {m.get('write', 0):.2f} s,"
                f" waiting {m.get('wait', 0):.2f} s; CPU {m.get('cpu_pct', 0):.0f}% of a core,"
                f" peak RSS {m.get('peak_rss_mib', 0):.0f} MiB"
            )
        stuck = sorted(self.stuck.items()) if len(self.workers) <= WS.LIST_MAX else []  # else in the lines above
        lost = self.lost if len(self.workers) <= WS.LIST_MAX else []
        for rank, tid in stuck[: WS.OUTLIERS]:
            lines.append(f"  worker {rank} is stuck in task {tid!r} (its lease expired; it was ended at exit)")
        if len(stuck) > WS.OUTLIERS:
            lines.append(f"  ... and {len(stuck) - WS.OUTLIERS} more stuck workers")
        for rank in lost[: WS.OUTLIERS]:
            lines.append(f"  worker {rank} was lost")
        if len(lost) > WS.OUTLIERS:
            lines.append(f"  ... and {len(lost) - WS.OUTLIERS} more lost workers")
        if self.errors:
            from .failures import show

            lines += show(self.errors, len(self.failed))
        else:
            for tid, err in list(self.failed.items())[:50]:
                first = err.strip().splitlines()
                lines.append(f"  FAILED {tid!r}: {first[-1] if first else err}")
            if len(self.failed) > 50:
                lines.append(f"  ... and {len(self.failed) - 50} more failures (see `mpigather status`)")
        if self.stopped_early:
            lines.append(f"  STOPPED EARLY: {self.stopped_early}")
            if self.not_run:
                lines.append(f"  {self.not_run} task(s) not run")
            if self.stopped_hint:
                lines.append(f"  {self.stopped_hint}")
        if self.interrupted:
            lines.append(f"  interrupted{' (Ctrl-C)' if self.ctrl_c else ''}: run again with --resume to finish"
                         f" (exit status {self.exit_code})")
        return "\n".join(lines)


# the fields shown by repr and compared by ==: all but ``fleet``
_COMPARED = ("total", "done", "failed", "skipped", "not_run", "bytes", "wall", "interrupted", "ctrl_c", "crash",
             "stuck", "lost", "workers", "master", "results", "out", "errors", "stopped_early", "stopped_hint")


def _row(rank: Any, w: dict[str, Any]) -> str:
    return (f"  {rank:>4}  {str(w.get('host', '?'))[:16]:<16} {w.get('tasks', 0):>6} "
            f"{w.get('compute', 0):>9.2f} {w.get('send', 0):>8.2f} {w.get('idle', 0):>8.2f}")
