"""The end of a run on the master: what it did goes into the output and the journal, which
are closed (complete or not); a failed run keeps what is durable. Imported at the end only."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .api import __version__

if TYPE_CHECKING:
    from .journal import Journal
    from .sinks import Sink
    from .summary import Summary


def finish(sink: Sink, journal: Journal | None, summary: Summary) -> None:
    """A run that ended: its info and statistics into the output and the journal, both closed."""
    from .workerstats import journaled

    fleet = summary.fleet_summary()
    ranks = journaled(fleet, summary.workers)  # every worker of a small run; the outliers of a large one
    info = {"version": __version__, "done": summary.done, "failed": len(summary.failed),
            "bytes": summary.bytes, "wall": summary.wall, "master": summary.master,
            "workers": {str(r): {k: v for k, v in summary.workers[r].items() if k != "spans"} for r in ranks},
            "interrupted": summary.interrupted}
    if len(ranks) < len(summary.workers):
        info["fleet"] = {k: v for k, v in fleet.items() if k != "profiles"}
    complete = not summary.interrupted and not summary.crash and not summary.stopped_early
    sink.set_run_info(info)
    sink.close(complete=complete)
    if journal is not None:
        for rank in ranks:
            journal.stats(rank, summary.workers[rank])
        journal.fleet(fleet)
        journal.end(done=summary.done, failed=len(summary.failed), interrupted=summary.interrupted,
                    exit=summary.exit_code, wall=summary.wall, master=summary.master,
                    **({"stopped_early": summary.stopped_early} if summary.stopped_early else {}))
        journal.close()


def close_failed(sink: Sink, journal: Journal | None, code: int, error: str) -> None:
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
