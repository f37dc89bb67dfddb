"""The facade: ``Master``, built from one mixin per room (see the package's docstring), its
state set in one place (declared in ``base.Base``), and ``run``, which times the loop."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..failures import Error, ErrorLog
from ..link import Wake
from ..pipeline import ChunkPipeline
from ..startup import fewer_collections
from ..summary import Summary
from ..trace import open_trace
from .commit import COMMIT_EVERY, CommitMixin
from .decisions import DecisionsMixin
from .failures import FailuresMixin
from .loop import LoopMixin
from .rows import RowsMixin
from .shutdown import ShutdownMixin
from .steps import StepsMixin
from .streams import StreamsMixin, _Stream
from .workers import worker_table

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor

    from ..journal import Journal
    from ..scheduler import Scheduler
    from ..sinks import Meta, Sink


class Master(LoopMixin, DecisionsMixin, StreamsMixin, RowsMixin, CommitMixin, FailuresMixin, ShutdownMixin,
             StepsMixin):
    def __init__(
        self,
        link: Any,
        scheduler: Scheduler,
        sink: Sink,
        journal: Journal | None,
        opts: Any,
        *,
        progress: Any = None,
        on_done: Callable[[Any, Meta], None] | None = None,
        on_failed: Callable[[Any, str, bytes | BaseException | None], None] | None = None,
        steps_dir: str | None = None,
        done: Any = None,
        describe: Callable[[Any], tuple[str, int]] | None = None,
    ) -> None:
        self.link, self.sched, self.sink, self.journal, self.opts = link, scheduler, sink, journal, opts
        self.progress = progress
        self.on_done, self.on_failed = on_done, on_failed
        self.on_durable: Callable[[], None] | None = None
        self.summary = Summary()
        self._params = journal is not None or not sink.in_memory  # task parameters go with the result
        self.describe = describe or _describe  # a task's parameters as text, and their hash
        # per worker (by rank): what the master keeps about each
        self._streams: dict[int, _Stream] = {}
        self._hb_task: dict[int, Any] = {}
        self._hosts: dict[int, str] = {}
        self._byes: set[int] = set()
        self._lost: set[int] = set()  # ranks the MPI library reported dead, not yet handled
        self._dead: set[int] = set()  # ranks handled as lost: their messages are dropped
        # receiving and committing
        self._pipe = ChunkPipeline(opts.chunk_size, check=opts.checksum == "both")
        self._settling: list[tuple[int, _Stream]] = []  # received, last chunk still being checksummed
        self._committer: ThreadPoolExecutor | None = None
        self._commit_job: Future | None = None
        self._last_commit = 0.0
        self._commit_gap = COMMIT_EVERY
        self._signal: int | None = None
        self._interrupt: str | None = None  # why the run stops now (a Ctrl-C)
        self.wake = Wake()  # set by another thread with new tasks (the executor's submit)
        self.unreleased: set[int] = set()  # workers that did not leave after a Ctrl-C: the job must be aborted
        self._t = {"recv": 0.0, "write": 0.0, "wait": 0.0}
        self._last_hb_write = 0.0
        self._hb_every = min(opts.heartbeat, 1.0)
        self._exc: dict[Any, bytes | BaseException] = {}  # executor: a task's last exception (pickled if remote)
        # multi-step tasks
        self.steps_dir = steps_dir  # where step outputs are stored (None: in memory)
        self.done = done  # on resume: the tasks an earlier run finished (fan-out children among them)
        self._steps_sink: Sink | None = None
        self._fan: dict[Any, dict[int, Any]] = {}  # fan-out inputs received so far, per parent
        self._parents: set[Any] = set()  # fanned-out tasks waiting for their children
        self._fan_children: dict[Any, tuple[Meta, list[str]]] = {}
        self._early_calls: dict[Any, Any] = {}  # children's stored inputs, before their fan-out is complete
        self._ckpts: dict[Any, list[str]] = {}  # stored step outputs of each unfinished task
        self._multistep = False  # a step message was seen: status shows tasks by step
        self._said_whole = False  # the log said once that rows of another shape are stored whole
        self.errors = ErrorLog()  # each distinct error once, with the tasks it ended
        self._failing: dict[Any, Error] = {}  # tasks whose failure is being decided: their error
        self.trace = open_trace(link.rank)  # MPIGATHER_TRACE: when each chunk was probed and landed (None: off)

    # -- public -------------------------------------------------------------------------

    def request_stop(self, signum: int) -> None:
        """Stop handing out work; let running tasks finish within the grace period."""
        self._signal = signum

    def interrupt(self, reason: str) -> None:
        """A Ctrl-C: stop now. What is finished is kept; running tasks are left for a resume.
        May be called from any thread."""
        if self._interrupt is None:
            self._interrupt = reason

    def run(self) -> Summary:
        t0 = time.monotonic()
        cpu0 = time.process_time()
        try:
            with fewer_collections():  # (a young collection every ~100 tiny results otherwise)
                self._loop()
        finally:
            if self._committer is not None:
                self._committer.shutdown(wait=True)  # a failed run: durable but not journaled, redone on resume
            self._pipe.close()
            self._t["write_thread"] = self._pipe.busy
            self.summary.wall = time.monotonic() - t0
            cpu = time.process_time() - cpu0  # all threads of the master's process
            self.summary.master = dict(self._t, peak_rss_mib=peak_rss_mib(), cpu=cpu,
                                       cpu_pct=round(100 * cpu / max(self.summary.wall, 1e-9), 1))
            self.summary.stuck = self.sched.stuck_workers()
            self.summary.lost = self.sched.lost_workers()
            self.summary.errors = self.errors.describe()
            if self.trace is not None:
                self.trace.close()
        return self.summary

    def worker_table(self, now: float) -> tuple[dict[int, dict[str, Any]], int, int, dict[str, list[int]]]:
        """Each worker's state, queue length and last-seen age; how many tasks run and wait; and
        for multi-step tasks, how many run and wait at each step ({step: [running, queued]})."""
        return worker_table(self.sched.workers(), self._hb_task, self._multistep, now)


def peak_rss_mib() -> float:
    """This process's peak resident memory, MiB: ``VmHWM``, the high-water mark of its own address
    space. (``getrusage``'s ru_maxrss carries over the parent's across a vfork and exec: a master
    started by a 2.4 GiB pytest reported 2.4 GiB.)"""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)  # kB
    except OSError:
        pass
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def _describe(payload: Any) -> tuple[str, int]:
    """``tasks.params.describe``, imported at its first use: only a run with an output keeps its
    tasks' parameters (an in-memory master, and the executor's, never import it)."""
    from ..tasks.params import describe

    return describe(payload)
