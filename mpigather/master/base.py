"""The state every room of the master shares, declared once (``Master.__init__`` sets it), and
the few methods that one room calls in another. What the master keeps per worker is the
first group: a later change that bounds it looks here and in ``Master.__init__``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor

    from .. import results as R
    from ..failures import Error, ErrorLog
    from ..journal import Journal
    from ..link import Wake
    from ..pipeline import ChunkPipeline
    from ..scheduler import Decision, Scheduler
    from ..sinks import Meta, Sink
    from ..summary import Summary
    from .streams import _Stream


class Base:
    # per worker (by rank)
    _streams: dict[int, _Stream]  # the large result each worker is sending now
    _hb_task: dict[int, Any]  # the task each worker last said it runs (its heartbeat)
    _hosts: dict[int, str]
    _byes: set[int]  # workers that said goodbye
    _lost: set[int]  # ranks the MPI library reported dead, not yet handled
    _dead: set[int]  # ranks handled as lost: their messages are dropped
    # the run
    link: Any
    sched: Scheduler
    sink: Sink
    journal: Journal | None
    opts: Any
    progress: Any
    on_done: Callable[[Any, Meta], None] | None
    on_failed: Callable[[Any, str, bytes | BaseException | None], None] | None
    on_durable: Callable[[], None] | None  # called once, when the run's first results are journaled
    summary: Summary
    _params: bool  # task parameters go with the result
    describe: Callable[[Any], tuple[str, int]]
    _t: dict[str, float]  # seconds spent receiving, writing, waiting
    trace: Any
    # receiving and storing
    _pipe: ChunkPipeline
    _settling: list[tuple[int, _Stream]]  # received, last chunk still being checksummed
    _said_whole: bool
    # commit
    _committer: ThreadPoolExecutor | None
    _commit_job: Future | None
    _last_commit: float
    _commit_gap: float  # seconds from one group commit to the next (more when one costs more)
    _last_hb_write: float
    _hb_every: float  # seconds between heartbeat records (longer when one costs more: many workers)
    # stopping
    _signal: int | None
    _interrupt: str | None
    wake: Wake
    unreleased: set[int]
    # failures
    _exc: dict[Any, bytes | BaseException]  # executor: a task's last exception (pickled if remote)
    errors: ErrorLog
    _failing: dict[Any, Error]
    # multi-step tasks
    steps_dir: str | None
    done: Any
    _steps_sink: Sink | None
    _fan: dict[Any, dict[int, Any]]
    _parents: set[Any]
    _fan_children: dict[Any, tuple[Meta, list[str]]]
    _early_calls: dict[Any, Any]
    _ckpts: dict[Any, list[str]]
    _multistep: bool

    # -- what one room calls in another -------------------------------------------------

    def interrupt(self, reason: str) -> None:
        raise NotImplementedError

    def worker_table(self, now: float) -> tuple[dict[int, dict[str, Any]], int, int, dict[str, list[int]]]:
        raise NotImplementedError

    def _decide_all(self, decisions: list[Decision], now: float) -> None:
        raise NotImplementedError

    def _post(self, msg: Any, rank: int) -> None:
        raise NotImplementedError

    def _on_message(self, inc: Any, now: float) -> None:
        raise NotImplementedError

    def _on_result(self, src: int, item: Any, now: float) -> None:
        raise NotImplementedError

    def _on_trailer(self, src: int, tid: Any, crc: int, now: float) -> None:
        raise NotImplementedError

    def _on_chunk(self, inc: Any, now: float) -> None:
        raise NotImplementedError

    def _settle_from(self, src: int, now: float) -> None:
        raise NotImplementedError

    def _complete_settled(self, now: float) -> None:
        raise NotImplementedError

    def _complete(self, src: int, stream: _Stream, now: float) -> None:
        raise NotImplementedError

    def _meta(self, src: int, b: Any, i: int, tid: Any, attempt: int, header: R.Header, duration: float,
              step: Any = None) -> Meta:
        raise NotImplementedError

    def _on_rows(self, src: int, rows: Any, now: float) -> None:
        raise NotImplementedError

    def _commit(self, wait: bool = False) -> None:
        raise NotImplementedError

    def _task_failed(self, src: int, bid: int, i: int, tid: Any, attempt: int, text: str, now: float,
                     where: str = "", fatal: bool = False, duration: float | None = None) -> None:
        raise NotImplementedError

    def _error(self, key: str, text: str, tid: Any) -> Error:
        raise NotImplementedError

    def _ended_failed(self, tid: Any, error: str | None, seq: int) -> None:
        raise NotImplementedError

    def _expired(self, rank: int, tid: Any, attempt: int, requeued: bool) -> None:
        raise NotImplementedError

    def _rebuild_failed(self, src: int, bid: int, i: int, tid: Any, attempt: int, e: BaseException,
                        now: float) -> None:
        raise NotImplementedError

    def _bad_checksum(self, src: int, bid: int, i: int, tid: Any, attempt: int, want: int, got: int,
                      now: float) -> None:
        raise NotImplementedError

    def _on_lost(self, ranks: list[int], now: float) -> None:
        raise NotImplementedError

    def _stopped_early(self, reason: str, failed: int, done: int, fatal: bool) -> None:
        raise NotImplementedError

    def _stop_now(self) -> None:
        raise NotImplementedError

    def abort(self, reason: str) -> None:
        raise NotImplementedError

    def sink_discard_open(self) -> None:
        raise NotImplementedError

    def _stored(self, src: int, bid: int, i: int, tid: Any, attempt: int, duration: float, step: Any,
                now: float) -> None:
        raise NotImplementedError

    def _on_step(self, src: int, bid: int, i: int, tid: Any, attempt: int, step: Any, duration: float,
                 now: float) -> None:
        raise NotImplementedError

    def _steps(self) -> Sink:
        raise NotImplementedError

    def _ckpt_key(self, tid: Any, step: Any) -> str:
        raise NotImplementedError

    def _steps_stored(self, ready: list[tuple[Any, Meta]]) -> None:
        raise NotImplementedError
