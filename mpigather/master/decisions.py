"""Carrying out the scheduler's decisions: ``Send`` and ``Revoke`` become messages, ``Ended`` and
``Expired`` are counted and journaled (``failures``), ``StopEarly`` is reported. Every decision
comes from the scheduler; this room only carries them out.
"""

from __future__ import annotations

import logging
from typing import Any

from .. import messages as M
from .. import results as R
from ..errors import ProtocolError
from ..link import PeerLost
from ..scheduler import Decision, Done, Ended, Expired, Halt, Notice, Revoke, Send, Stop, StopEarly
from .base import Base

log = logging.getLogger("mpigather")


class DecisionsMixin(Base):
    """Part of ``Master``: what each decision of the scheduler makes happen."""

    def _post(self, msg: Any, rank: int) -> None:
        try:
            self.link.post(msg, rank, M.TASK)
        except PeerLost as e:  # (ULFM) handled once this batch of decisions is carried out
            self._lost.update(e.ranks)

    def _decide_all(self, decisions: list[Decision], now: float) -> None:
        for d in decisions:
            self._decide(d, now)

    def _decide(self, d: Decision, now: float) -> None:
        match d:
            case Send(rank, blocks):
                self._post(M.Tasks([_wire(b) for b in blocks]), rank)
            case Revoke(rank, cuts, expect_ack):
                self._post(M.Revoke(cuts, expect_ack), rank)
            case Done(_rank, _attempt, tids):
                if self._exc:
                    for tid in tids:
                        self._exc.pop(tid, None)
            case Stop(rank):
                self._post(M.Stop(), rank)
            case Halt(reason):
                log.error("%s", reason)
                self.summary.interrupted = True
            case Ended(tid, attempt, rank, ok, error):
                if ok and tid in self._parents:  # every child is done: the parent's result lists them
                    self._parents.discard(tid)
                    meta, kids = self._fan_children.pop(tid)
                    header, bufs = R.encode(kids)
                    self.sink.put(tid, header, bufs, {**meta, "rank": rank, "attempt": attempt, "duration": 0.0,
                                                      "bytes": header.nbytes, "crc32c": header.crc,
                                                      "kind": header.kind})
                    return
                if ok:
                    self._exc.pop(tid, None)
                    return
                self._ended_failed(tid, error, d.seq)
            case Expired(rank, tid, attempt, requeued):
                self._expired(rank, tid, attempt, requeued)
            case StopEarly(reason, failed, done, fatal):
                self._stopped_early(reason, failed, done, fatal)
            case Notice(level, text):
                (log.error if level == "error" else log.warning)("%s", text)
            case _:
                raise ProtocolError(f"unknown decision {d!r}")


def _wire(b: Any) -> M.Block:
    """A scheduler block as it goes to the worker: a task resuming at a later step carries its call."""
    calls = None
    if b.recs:
        calls = [r.call if (r := b.recs.get(k)) is not None else None for k in range(len(b.tids))]
        if not any(c is not None for c in calls):
            calls = None
    return M.Block(b.bid, b.attempt, b.tids, b.payloads, calls)
