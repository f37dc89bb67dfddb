"""Unit and property tests of the pure scheduling state machine (no MPI, no sleeping).

Time is a float passed in by the test. Most unit tests speak of single tasks through ``Old``,
a thin view that finds each task's lease and index the way the master does and turns the
decisions back into per-task terms; the block tests use the scheduler's own events. A
simulated cluster (``Cluster``) plays the part of the master's message loop and of the workers
(local FIFO of blocks, revokes, batched results, late results, losses) to drive the scheduler
through random event orders.
"""

from __future__ import annotations

import math
import random
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from mpigather.errors import ProtocolError
from mpigather.scheduler import (
    TRANSITIONS,
    WAIT,
    Block,
    Chunk,
    Done,
    Ended,
    Expired,
    Halt,
    Notice,
    Revoke,
    Scheduler,
    Send,
    Stop,
    WorkerState,
)
from mpigather.scheduler.queue import MIN_BLOCK_TIME, SPARE_IDLE

# -- helpers ------------------------------------------------------------------------------


class Source:
    """An iterable of tasks that counts how many items were pulled from it."""

    def __init__(self, items):
        self.items = list(items)
        self.pulled = 0

    def __iter__(self):
        for item in self.items:
            self.pulled += 1
            yield item


@dataclass(frozen=True)
class Sent:
    """A ``Send`` in per-task terms: ``(id, attempt, payload[, call])`` items."""

    rank: int
    tasks: list


class Old:
    """The scheduler seen task by task: each call finds the task's lease and index on that
    worker as the master does (the running task of its head block; anything else is a late
    message of a lease that is over), and decisions come back in per-task terms: ``Send`` with
    ``(id, attempt, payload[, call])`` items, ``Revoke`` with task ids, ``Done`` as ``Ended``s."""

    def __init__(self, s: Scheduler) -> None:
        self.s = s
        self._asked: dict[int, tuple[list, dict]] = {}  # rank -> the cuts of its last steal, with their leases

    def __getattr__(self, name):
        return getattr(self.s, name)

    def _where(self, rank, tid):
        w = self.s.workers().get(rank)
        if w is not None and w.queue:
            b = w.queue[0]
            if b.next < len(b) and b.tids[b.next] == tid:
                return b.bid, b.next
        return 0, -1  # not its running task: a message of a lease that is over

    def _tr(self, decisions, before):
        out = []
        for d in decisions:
            if isinstance(d, Send):
                out.append(Sent(d.rank, [(t, b.attempt, p) if not (b.recs and b.recs.get(0) and b.recs[0].call)
                                         else (t, b.attempt, p, b.recs[0].call)
                                         for b in d.blocks for t, p in zip(b.tids, b.payloads)]))
            elif isinstance(d, Revoke):
                if d.expect_ack:
                    self._asked[d.rank] = (d.cuts, before)
                out.append(Revoke(d.rank, [t for bid, k in d.cuts for t in before.get(bid, [])[k:]], d.expect_ack))
            elif isinstance(d, Done):
                out.extend(Ended(t, d.attempt, d.rank, True, None) for t in d.tids)
            else:
                out.append(d)
        return out

    def _snap(self):
        return {bid: list(b.tids) for bid, b in self.s._leases.items()}

    def _call(self, fn, *args, **kw):
        before = self._snap()
        return self._tr(fn(*args, **kw), before)

    def dispatch(self, now):
        return self._call(self.s.dispatch, now)

    def tick(self, now):
        return self._call(self.s.tick, now)

    def drain(self, now=0.0, grace=None):
        return self._call(self.s.drain, now, grace)

    def give_up(self, reason):
        return self._call(self.s.give_up, reason)

    def worker_lost(self, rank, now):
        return self._call(self.s.worker_lost, rank, now)

    def task_done(self, rank, tid, attempt, now, duration=None):
        bid, i = self._where(rank, tid)
        if not self.s.accept(rank, bid, i, tid):
            return self._call(self.s.discarded, rank, now)
        return self._call(self.s.task_done, rank, bid, i, tid, now, duration, attempt)

    def task_failed(self, rank, tid, attempt, error, now, fatal=False):
        bid, i = self._where(rank, tid)
        return self._call(self.s.task_failed, rank, bid, i, tid, error, now, attempt, fatal)

    def result_begin(self, rank, tid, attempt, now):
        bid, i = self._where(rank, tid)
        return self.s.begin_stream(rank, bid, i, tid, now)

    def revoked(self, rank, tids, now):
        """The worker's answer to its last steal: it dropped ``tids`` (the rest had started)."""
        drop = set(tids)
        asked, leases = self._asked.pop(rank, ([], {}))
        cuts = []
        for bid, k in asked:
            ids = leases[bid]
            cuts.append((bid, next((j for j in range(k, len(ids)) if ids[j] in drop), len(ids))))
        return self._call(self.s.revoked, rank, cuts, now)

    def step_begin(self, rank, tid, attempt, n, now, streamed=False):
        bid, i = self._where(rank, tid)
        return self.s.step_begin(rank, bid, i, tid, n, now, streamed)

    def discarded(self, rank, tid, now, attempt=None):
        return self._call(self.s.discarded, rank, now)


def make(n_tasks=10, workers=(1, 2), now=0.0, payload=None, **kw):
    src = Source((i, payload) for i in range(n_tasks))
    s = Old(Scheduler(src, **kw))
    for r in workers:
        s.worker_ready(r, now)
    return s, src


def sched(*args, **kw):
    return Old(Scheduler(*args, **kw))


def of(decisions, cls):
    return [d for d in decisions if isinstance(d, cls)]


def sent(decisions):
    """rank -> list of task ids sent to it (in per-task terms)."""
    out: dict[int, list] = {}
    for d in of(decisions, Sent):
        out.setdefault(d.rank, []).extend(t[0] for t in d.tasks)
    return out


def queues(s):
    """rank -> the ids of the tasks it holds and has not reported, in the order it runs them."""
    return {r: [t for b in w.queue for t in b.tids[b.next:]] for r, w in s.workers().items()}


def growing_source(q: deque, closed: list):
    """A source that may grow later, like the executor's: WAIT while nothing is there."""
    while True:
        if q:
            yield q.popleft()
        elif closed[0]:
            return
        else:
            yield WAIT


# -- construction and dispatch ------------------------------------------------------------


def test_rejects_bad_arguments():
    with pytest.raises(ValueError):
        Scheduler([], prefetch=0)
    with pytest.raises(ValueError):
        Scheduler([], retries=-1)


def test_source_is_not_read_before_dispatch_nor_without_workers():
    s, src = make(10, workers=())
    assert src.pulled == 0
    assert s.dispatch(0.0) == []
    assert src.pulled == 0
    assert not s.finished


def test_dispatch_fills_each_worker_up_to_prefetch_and_reads_lazily():
    s, src = make(100, workers=(1, 2, 3), prefetch=3)
    out = s.dispatch(0.0)
    assert [d.rank for d in out] == [1, 2, 3]
    assert sent(out) == {1: [0, 1, 2], 2: [3, 4, 5], 3: [6, 7, 8]}
    assert all(att == 1 for d in of(out, Sent) for _, att, _ in d.tasks)
    assert src.pulled == 9
    assert s.in_flight() == 9
    assert queues(s) == {1: [0, 1, 2], 2: [3, 4, 5], 3: [6, 7, 8]}
    # full workers get nothing more, and nothing more is read
    assert s.dispatch(0.1) == []
    assert src.pulled == 9


def test_send_carries_payloads():
    s = sched([("a", {"x": 1}), ("b", [2])], prefetch=2)
    s.worker_ready(5, 0.0)
    (d,) = of(s.dispatch(0.0), Sent)
    assert d == Sent(5, [("a", 1, {"x": 1}), ("b", 1, [2])])


def test_refill_waits_for_the_low_water_mark():
    s, src = make(100, workers=(1,), prefetch=4)  # low water: 4 // 2 = 2
    assert sent(s.dispatch(0.0)) == {1: [0, 1, 2, 3]}
    s.task_done(1, 0, 1, 1.0)
    assert s.dispatch(1.0) == []  # 3 held > 2
    s.task_done(1, 1, 1, 2.0)
    assert sent(s.dispatch(2.0)) == {1: [4, 5]}  # back up to 4
    assert src.pulled == 6
    assert queues(s) == {1: [2, 3, 4, 5]}


@pytest.mark.parametrize("prefetch", [1, 2])
def test_small_prefetch_refills_as_soon_as_below_target(prefetch):
    s, _ = make(100, workers=(1,), prefetch=prefetch)
    assert sent(s.dispatch(0.0)) == {1: list(range(prefetch))}
    s.task_done(1, 0, 1, 1.0)
    assert sent(s.dispatch(1.0)) == {1: [prefetch]}


def test_stop_is_sent_to_every_worker_once_when_finished():
    s, src = make(3, workers=(1, 2), prefetch=2)
    assert sent(s.dispatch(0.0)) == {1: [0, 1], 2: [2]}
    assert src.pulled == 3 and not s.finished
    for rank, tid in [(1, 0), (1, 1), (2, 2)]:
        assert s.task_done(rank, tid, 1, 1.0) == [Ended(tid, 1, rank, True, None)]
    assert s.finished
    assert s.dispatch(1.0) == [Stop(1), Stop(2)]
    assert {w.state for w in s.workers().values()} == {"stopping"}
    assert s.dispatch(2.0) == []
    assert (s.n_done, s.n_failed) == (3, 0)


def test_idle_workers_beyond_the_spares_stop_once_nothing_is_left_for_them():
    """Once the source is used up, idle workers that nothing is left for stop at once, all but
    ``SPARE_IDLE`` of them (kept for work that comes back), instead of polling for work until
    the last result. A worker holding unstarted tasks (a steal's donor) keeps them, as does a
    source that may still grow (the executor's) and workers of a kind (steps may need them)."""
    s, _ = make(3, workers=range(1, 9), prefetch=1)
    out = s.dispatch(0.0)
    assert sorted(sent(out)) == [1, 2, 3]
    stops = [d.rank for d in of(out, Stop)]
    assert len(stops) == 5 - SPARE_IDLE and not set(stops) & {1, 2, 3}
    assert s.task_done(1, 0, 1, 1.0) == [Ended(0, 1, 1, True, None)]
    assert [d.rank for d in of(s.dispatch(1.0), Stop)] == [1]  # idle now, and not needed
    s.task_done(2, 1, 1, 1.0)
    s.task_done(3, 2, 1, 1.0)
    assert s.finished
    last = [d.rank for d in of(s.dispatch(2.0), Stop)]
    assert sorted(last + stops + [1]) == list(range(1, 9))  # every worker stopped once

    # a donor: worker 1 holds unstarted tasks, which the idle ones may get (a steal)
    s, _ = make(3, workers=(1,), prefetch=3)
    assert sent(s.dispatch(0.0)) == {1: [0, 1, 2]}
    for r in range(2, 7):
        s.worker_ready(r, 0.0)
    out = s.dispatch(0.1)
    assert of(out, Revoke) and not of(out, Stop)
    assert not of(s.dispatch(0.2), Stop)  # the donor has not answered yet

    # a source that may grow (the executor's): idle workers wait for what comes next
    q, closed = deque([(0, None)]), [False]
    s = sched(growing_source(q, closed))
    for r in range(1, 7):
        s.worker_ready(r, 0.0)
    out = s.dispatch(0.0)
    assert len(sent(out)) == 1 and not of(out, Stop)
    assert not of(s.dispatch(0.1), Stop)

    # workers of a kind: a later step may need them
    s = sched(Source((i, None) for i in range(1)))
    for r in range(1, 7):
        s.worker_ready(r, 0.0, kinds=("gpu",))
    out = s.dispatch(0.0)
    assert len(sent(out)) == 1 and not of(out, Stop)


def test_end_of_source_is_found_lazily():
    s, src = make(2, workers=(1,), prefetch=2)
    assert sent(s.dispatch(0.0)) == {1: [0, 1]}
    s.task_done(1, 0, 1, 1.0)
    s.task_done(1, 1, 1, 1.0)
    assert not s.finished  # the source has not said it is empty yet
    assert s.dispatch(1.0) == [Stop(1)]
    assert s.finished and src.pulled == 2


def test_empty_source_stops_workers_at_once():
    s, _ = make(0, workers=(1, 2))
    assert s.dispatch(0.0) == [Stop(1), Stop(2)]
    assert s.finished


def test_worker_joining_after_the_end_is_stopped():
    s, _ = make(0, workers=(1,))
    assert s.dispatch(0.0) == [Stop(1)]
    s.worker_ready(2, 1.0)
    assert s.dispatch(1.0) == [Stop(2)]


def test_protocol_errors():
    s, _ = make(4, workers=(1,))
    with pytest.raises(ProtocolError):
        s.worker_ready(1, 0.0)
    s.dispatch(0.0)
    with pytest.raises(ProtocolError):
        s.task_done(9, 0, 1, 0.0)
    with pytest.raises(ProtocolError):
        s.task_failed(9, 0, 1, "x", 0.0)
    with pytest.raises(ProtocolError):
        s.result_begin(9, 0, 1, 0.0)
    with pytest.raises(ProtocolError):
        s.revoked(9, [0], 0.0)
    with pytest.raises(ProtocolError):
        s.worker_lost(9, 0.0)


def test_lost_worker_cannot_say_hello_again():
    s, _ = make(4, workers=(1,))
    s.worker_lost(1, 0.0)
    with pytest.raises(ProtocolError):
        s.worker_ready(1, 1.0)


# -- task_done / task_failed / retries ---------------------------------------------------


def test_task_done_bookkeeping():
    s, _ = make(10, workers=(1, 2), prefetch=2)
    s.dispatch(0.0)
    assert s.in_flight() == 4
    assert s.task_done(2, 2, 1, 1.5, duration=0.5) == [Ended(2, 1, 2, True, None)]
    assert (s.n_done, s.n_failed, s.in_flight()) == (1, 0, 3)
    assert queues(s) == {1: [0, 1], 2: [3]}
    assert s.workers()[2].last_seen == 1.5


def test_second_result_of_the_same_task_is_discarded():
    s, _ = make(10, workers=(1,))
    s.dispatch(0.0)
    assert of(s.task_done(1, 0, 1, 1.0), Ended)
    assert s.task_done(1, 0, 1, 1.1) == []
    assert s.n_done == 1


def test_failure_without_retries_ends_failed():
    s, _ = make(3, workers=(1,), retries=0)
    s.dispatch(0.0)
    assert s.task_failed(1, 0, 1, "ValueError: x", 1.0) == [Ended(0, 1, 1, False, "ValueError: x")]
    assert (s.n_done, s.n_failed) == (0, 1)
    assert queues(s) == {1: [1]}


@pytest.mark.parametrize("retries", [1, 2, 3])
def test_failing_task_is_retried_then_fails_with_last_error(retries):
    s, _ = make(1, workers=(1,), retries=retries, prefetch=1)
    for attempt in range(1, retries + 2):
        (d,) = of(s.dispatch(float(attempt)), Sent)
        assert d.tasks == [(0, attempt, None)]
        out = s.task_failed(1, 0, attempt, f"error {attempt}", float(attempt))
        if attempt <= retries:
            assert out == []
            assert not s.finished
    assert out == [Ended(0, retries + 1, 1, False, f"error {retries + 1}")]
    assert (s.n_done, s.n_failed) == (0, 1)
    assert s.dispatch(10.0) == [Stop(1)]


def test_retried_task_can_succeed():
    s, _ = make(1, workers=(1,), retries=1)
    s.dispatch(0.0)
    assert s.task_failed(1, 0, 1, "flaky", 1.0) == []
    assert of(s.dispatch(1.0), Sent)[0].tasks == [(0, 2, None)]
    assert s.task_done(1, 0, 2, 2.0) == [Ended(0, 2, 1, True, None)]
    assert (s.n_done, s.n_failed) == (1, 0)


def test_retry_prefers_a_worker_that_has_not_tried_the_task():
    s, _ = make(10, workers=(1, 2), retries=2, prefetch=1)
    assert sent(s.dispatch(0.0)) == {1: [0], 2: [1]}
    s.task_done(2, 1, 1, 1.0)
    assert s.task_failed(1, 0, 1, "boom", 1.0) == []
    # both idle: task 0 goes to rank 2, rank 1 gets new work
    assert sent(s.dispatch(1.0)) == {1: [2], 2: [0]}


def test_retry_waits_for_the_untried_worker_while_it_is_busy():
    s, _ = make(10, workers=(1, 2), retries=2, prefetch=1)
    s.dispatch(0.0)  # 1 <- 0, 2 <- 1
    s.task_failed(1, 0, 1, "boom", 1.0)
    assert sent(s.dispatch(1.0)) == {1: [2]}  # not task 0 again on rank 1
    s.task_done(2, 1, 1, 2.0)
    out = s.dispatch(2.0)
    assert of(out, Sent) == [Sent(2, [(0, 2, None)])]


def test_retry_on_the_same_worker_when_it_is_the_only_healthy_one():
    s, _ = make(10, workers=(1, 2), retries=1, prefetch=1, timeout=5.0)
    s.dispatch(0.0)  # 1 <- 0, 2 <- 1
    s.task_done(1, 0, 1, 4.0)
    s.dispatch(4.0)  # 1 <- 2
    assert of(s.tick(5.0), Expired) == [Expired(2, 1, 1, True)]  # rank 2 is suspect now
    assert s.task_failed(1, 2, 1, "boom", 6.0) == []
    out = s.dispatch(6.0)
    # rank 1 is the only healthy worker; the requeued tasks come first, in order
    assert of(out, Sent) == [Sent(1, [(1, 2, None)])]
    s.task_done(1, 1, 2, 7.0)
    assert of(s.dispatch(7.0), Sent) == [Sent(1, [(2, 2, None)])]


def test_failure_from_an_old_holder_is_ignored_while_a_newer_lease_runs():
    s, _ = make(2, workers=(1, 2), retries=0, prefetch=1, timeout=10.0)
    s.dispatch(0.0)  # 1 <- 0, 2 <- 1
    s.task_done(2, 1, 1, 1.0)
    s.dispatch(1.0)
    assert of(s.tick(10.0), Expired) == [Expired(1, 0, 1, True)]
    assert sent(s.dispatch(10.0)) == {2: [0]}
    assert s.task_failed(1, 0, 1, "late failure", 11.0) == []
    assert s.workers()[1].state == "ok"  # it reported in
    assert queues(s)[2] == [0] and s.n_failed == 0
    assert s.task_done(2, 0, 2, 12.0) == [Ended(0, 2, 2, True, None)]


def test_failure_while_draining_is_final():
    s, _ = make(10, workers=(1,), retries=5, prefetch=1)
    s.dispatch(0.0)
    s.drain()
    assert s.task_failed(1, 0, 1, "boom", 1.0) == [Ended(0, 1, 1, False, "boom")]
    assert s.finished


# -- leases and tick ------------------------------------------------------------------------


def test_only_the_head_of_a_worker_queue_has_a_running_deadline():
    s, _ = make(10, workers=(1,), prefetch=3, timeout=10.0)
    s.dispatch(0.0)  # 1 <- 0, 1, 2
    assert s.next_deadline() == 10.0
    assert s.tick(9.999) == []
    s.task_done(1, 0, 1, 4.0)  # task 1 starts running at 4.0
    assert s.workers()[1].head_since == 4.0
    assert s.tick(10.0) == []  # task 1 and 2 were sent at 0.0 but 1 only runs since 4.0
    assert s.tick(13.999) == []
    out = s.tick(14.0)
    assert out[0] == Expired(1, 1, 1, True)
    assert Revoke(1, [2], expect_ack=False) in out


def test_expiry_makes_the_worker_suspect_and_requeues_all_its_tasks():
    s, src = make(100, workers=(1, 2), prefetch=3, timeout=10.0)
    assert sent(s.dispatch(0.0)) == {1: [0, 1, 2], 2: [3, 4, 5]}
    s.task_done(2, 3, 1, 5.0)  # rank 2's head restarts at 5.0
    out = s.tick(10.0)
    assert out == [Expired(1, 0, 1, True), Revoke(1, [1, 2], expect_ack=False)]
    w1 = s.workers()[1]
    assert w1.state == "suspect" and not w1.queue
    assert s.stuck_workers() == {1: 0}
    assert s.healthy_workers() == 1
    # the suspect worker gets nothing; rank 2 gets the requeued tasks first, in order
    out = s.dispatch(10.0)
    assert 1 not in sent(out)
    s.task_done(2, 4, 1, 11.0)
    s.task_done(2, 5, 1, 11.0)
    out = s.dispatch(11.0)
    assert of(out, Sent) == [Sent(2, [(0, 2, None), (1, 2, None), (2, 2, None)])]
    assert 1 not in sent(s.dispatch(11.0))


def test_suspect_worker_gets_tasks_again_once_it_reports_in():
    s, _ = make(100, workers=(1, 2), prefetch=1, timeout=10.0)
    s.dispatch(0.0)  # 1 <- 0, 2 <- 1
    s.task_done(2, 1, 1, 9.0)
    s.dispatch(9.0)  # 2 <- 2
    s.tick(10.0)  # rank 1 suspect, 0 requeued
    assert s.workers()[1].state == "suspect"
    assert sent(s.dispatch(10.0)) == {}
    # its late result wins (task 0 is only queued, not yet re-sent, rank 2 is busy)
    assert s.task_done(1, 0, 1, 12.0) == [Ended(0, 1, 1, True, None)]
    assert s.workers()[1].state == "ok" and s.stuck_workers() == {}
    assert sent(s.dispatch(12.0)) == {1: [3]}


def test_suspect_worker_reports_in_with_a_failure():
    s, _ = make(100, workers=(1,), prefetch=1, timeout=10.0, retries=3)
    s.dispatch(0.0)
    s.tick(10.0)
    s.dispatch(10.0)
    assert s.workers()[1].state == "suspect"
    s.worker_ready(2, 10.0)
    assert sent(s.dispatch(10.0)) == {2: [0]}
    assert s.task_failed(1, 0, 1, "boom", 11.0) == []  # stale: rank 2 holds the live lease
    assert s.workers()[1].state == "ok"
    assert sent(s.dispatch(11.0)) == {1: [1]}


def test_per_task_timeout_overrides_the_default():
    items = [("short", {"timeout": 2.0}), ("default", {}), ("long", {"timeout": 50.0})]
    s = sched(items, prefetch=1, timeout=10.0, timeout_of=lambda p: p.get("timeout"))
    for r in (1, 2, 3):
        s.worker_ready(r, 0.0)
    s.dispatch(0.0)
    assert of(s.tick(2.0), Expired) == [Expired(1, "short", 1, True)]
    assert s.tick(9.9) == []
    assert of(s.tick(10.0), Expired) == [Expired(2, "default", 1, True)]
    assert s.tick(49.9) == []
    assert of(s.tick(50.0), Expired) == [Expired(3, "long", 1, True)]


def test_per_task_timeout_without_a_default():
    s = sched([("a", 3.0), ("b", None)], prefetch=1, timeout_of=lambda p: p)
    s.worker_ready(1, 0.0)
    s.worker_ready(2, 0.0)
    s.dispatch(0.0)
    assert s.next_deadline() == 3.0
    assert of(s.tick(1e9), Expired) == [Expired(1, "a", 1, True)]
    assert s.workers()[2].state == "ok"


def test_no_timeout_means_no_deadline():
    s, _ = make(10, workers=(1,))
    s.dispatch(0.0)
    assert s.next_deadline() is None
    assert s.tick(1e12) == []
    assert s.workers()[1].state == "ok"


@pytest.mark.parametrize("retries", [0, 1, 2, 3])
def test_repeated_expiry_ends_the_task_failed(retries):
    # a lease expiry always allows at least one retry: max(retries, 1)
    s = sched([(0, None)], prefetch=1, timeout=10.0, retries=retries)
    allowed = max(retries, 1)
    now = 0.0
    for n in range(1, allowed + 2):
        s.worker_ready(n, now)  # a fresh worker each time: the earlier ones are suspect
        assert of(s.dispatch(now), Sent) == [Sent(n, [(0, n, None)])]
        now += 10.0
        out = s.tick(now)
        if n <= allowed:
            assert out == [Expired(n, 0, n, True)]
            assert not s.finished
        else:
            assert out[0] == Expired(n, 0, n, False)
            (e,) = of(out, Ended)
            assert not e.ok and e.attempt == n and e.error == f"timed out after 10 s on worker {n}"
    assert (s.n_done, s.n_failed) == (0, 1)
    assert s.in_flight() == 0
    assert s.stuck_workers() == {n: 0 for n in range(1, allowed + 2)}


def test_result_in_transfer_suspends_the_lease():
    s, _ = make(10, workers=(1,), prefetch=2, timeout=10.0)
    s.dispatch(0.0)
    assert s.result_begin(1, 0, 1, 9.0) is True
    assert s.tick(10.0) == []
    assert s.tick(30.0) == []  # still receiving
    assert s.workers()[1].state == "ok"
    assert s.task_done(1, 0, 1, 31.0) == [Ended(0, 1, 1, True, None)]
    assert s.workers()[1].streaming is False
    # the next head runs from 31.0
    assert s.tick(40.9) == []
    assert of(s.tick(41.0), Expired) == [Expired(1, 1, 1, True)]


def test_result_begin_of_an_ended_task_is_rejected():
    s, _ = make(10, workers=(1,), prefetch=2)
    s.dispatch(0.0)
    s.task_done(1, 0, 1, 1.0)
    assert s.result_begin(1, 0, 1, 2.0) is False
    assert s.workers()[1].streaming is False
    assert s.workers()[1].last_seen == 2.0


def test_two_open_results_from_one_worker_is_a_protocol_error():
    s, _ = make(10, workers=(1,), prefetch=2)
    s.s._observe(1e-4, 1)  # blocks of several tasks
    s.dispatch(0.0)
    bid = s.workers()[1].queue[0].bid
    assert s.begin_stream(1, bid, 0, 0, 1.0)
    with pytest.raises(ProtocolError, match="another result is open"):
        s.begin_stream(1, bid, 0, 0, 1.0)
    with pytest.raises(ProtocolError, match="expected task 0"):
        s.begin_stream(1, bid, 1, 1, 1.0)  # not the task it runs


def test_failed_transfer_closes_the_stream():
    s, _ = make(10, workers=(1,), prefetch=2, retries=1)
    s.dispatch(0.0)
    assert s.result_begin(1, 0, 1, 1.0)
    assert s.task_failed(1, 0, 1, "checksum", 2.0) == []
    assert s.workers()[1].streaming is False
    assert s.result_begin(1, 1, 1, 3.0)


# -- late results ----------------------------------------------------------------------------


def _expire_rank1_then_resend_to_rank2(prefetch=1):
    """Task 0 expires on rank 1 and is sent again to rank 2. Returns the scheduler."""
    s, _ = make(100, workers=(1, 2), prefetch=prefetch, timeout=10.0)
    s.dispatch(0.0)
    w2 = queues(s)[2]
    for tid in w2:
        s.task_done(2, tid, 1, 5.0)
    s.dispatch(5.0)
    out = s.tick(10.0)
    assert Expired(1, 0, 1, True) in out
    return s


def test_late_result_after_the_task_ended_elsewhere_is_discarded():
    s = _expire_rank1_then_resend_to_rank2(prefetch=1)
    s.task_done(2, 2, 1, 10.5)  # rank 2 is free: it takes task 0
    assert sent(s.dispatch(11.0)) == {2: [0]}
    assert s.task_done(2, 0, 2, 12.0) == [Ended(0, 2, 2, True, None)]
    n = s.n_done
    assert s.task_done(1, 0, 1, 13.0) == []  # the timed-out worker's late result
    assert s.n_done == n
    assert s.workers()[1].state == "ok"  # but it did report in


def test_late_result_arriving_first_wins_and_the_running_holder_becomes_suspect():
    s = _expire_rank1_then_resend_to_rank2(prefetch=2)
    s.task_done(2, 4, 1, 10.5)
    s.task_done(2, 5, 1, 10.5)  # rank 2 drained -> its queue is empty
    out = s.dispatch(10.5)
    assert sent(out)[2][0] == 0  # task 0 is now the head of rank 2
    assert queues(s)[2] == [0, 1]
    out = s.task_done(1, 0, 1, 11.0)  # rank 1's late result arrives first
    assert out[0] == Ended(0, 1, 1, True, None)
    assert Revoke(2, [1], expect_ack=False) in out  # the rest of rank 2's queue goes back
    w2 = s.workers()[2]
    assert w2.state == "suspect" and s.stuck_workers() == {2: 0}
    assert s.n_done == 5  # 2, 3, 4, 5 and 0
    # rank 2's own result of task 0 is discarded and clears its suspicion
    assert s.task_done(2, 0, 2, 12.0) == []
    assert s.n_done == 5 and w2.state == "ok"


def test_late_result_arriving_first_revokes_a_queued_copy():
    s = _expire_rank1_then_resend_to_rank2(prefetch=2)
    s.task_done(2, 4, 1, 10.5)  # rank 2 holds [5]; refill gives it the requeued task 0
    out = s.dispatch(10.5)
    assert queues(s)[2] == [5, 0]
    out = s.task_done(1, 0, 1, 11.0)
    assert out == [Ended(0, 1, 1, True, None), Revoke(2, [0], expect_ack=False)]
    assert queues(s)[2] == [5]
    assert s.workers()[2].state == "ok"


def test_late_failure_while_requeued_is_not_lost():
    """A failure report for a task requeued by expiry still counts and ends it when due."""
    s, _ = make(1, workers=(1,), prefetch=1, timeout=10.0, retries=0)
    s.dispatch(0.0)
    s.tick(10.0)  # requeued, failures=1
    out = s.task_failed(1, 0, 1, "boom", 11.0)  # failures=2 > retries: final
    assert out == [Ended(0, 1, 1, False, "boom")]
    assert s.dispatch(11.0) == [Stop(1)]
    assert s.finished


# -- worker loss -----------------------------------------------------------------------------


def test_worker_lost_requeues_its_tasks():
    s, _ = make(100, workers=(1, 2), prefetch=2)
    s.dispatch(0.0)  # 1 <- 0, 1 ; 2 <- 2, 3
    assert s.worker_lost(1, 1.0) == []
    assert s.workers()[1].state == "lost" and s.healthy_workers() == 1
    s.task_done(2, 2, 1, 2.0)
    s.task_done(2, 3, 1, 2.0)
    out = s.dispatch(2.0)
    assert of(out, Sent) == [Sent(2, [(0, 2, None), (1, 2, None)])]


def test_worker_lost_twice_on_the_same_task_ends_it_failed():
    s, _ = make(1, workers=(1, 2), prefetch=1, retries=0)
    assert sent(s.dispatch(0.0)) == {1: [0]}
    assert s.worker_lost(1, 1.0) == []
    assert sent(s.dispatch(1.0)) == {2: [0]}
    assert s.worker_lost(2, 2.0) == [Ended(0, 2, 2, False, "worker 2 was lost")]
    assert s.finished and s.n_failed == 1
    assert s.dispatch(3.0) == []  # no Stop to lost workers


def test_lost_worker_gets_no_stop():
    s, _ = make(2, workers=(1, 2), prefetch=1)
    s.dispatch(0.0)
    s.worker_lost(2, 0.5)
    s.task_done(1, 0, 1, 1.0)
    s.dispatch(1.0)
    s.task_done(1, 1, 2, 2.0)
    assert s.dispatch(2.0) == [Stop(1)]


def test_worker_stopped_keeps_lost_state():
    s, _ = make(0, workers=(1, 2))
    s.dispatch(0.0)
    s.worker_lost(2, 0.5)
    s.worker_stopped(1)
    s.worker_stopped(2)
    assert s.workers()[1].state == "stopped" and s.workers()[2].state == "lost"


# -- steal -----------------------------------------------------------------------------------


def test_idle_worker_steals_an_unstarted_task_when_the_source_is_empty():
    s, _ = make(4, workers=(1, 2), prefetch=3)
    assert sent(s.dispatch(0.0)) == {1: [0, 1, 2], 2: [3]}
    s.task_done(2, 3, 1, 1.0)
    out = s.dispatch(1.0)
    assert out == [Revoke(1, [2], expect_ack=True)]
    assert s.dispatch(1.1) == []  # one steal request at a time
    s.revoked(1, [2], 1.2)
    assert queues(s)[1] == [0, 1]
    assert of(s.dispatch(1.2), Sent) == [Sent(2, [(2, 1, None)])]  # taken back unstarted: still its first attempt


def test_steal_that_came_too_late_changes_nothing():
    s, _ = make(4, workers=(1, 2), prefetch=3)
    s.dispatch(0.0)
    s.task_done(2, 3, 1, 1.0)
    assert s.dispatch(1.0) == [Revoke(1, [2], expect_ack=True)]
    s.revoked(1, [], 1.2)  # rank 1 had started it already
    assert queues(s)[1] == [0, 1, 2]
    assert not s.workers()[1].revoking


def test_steal_while_the_source_waits_for_more():
    """An executor's source says WAIT: a task queued behind a long one moves to the idle worker."""
    q, closed = deque([(i, None) for i in range(4)]), [False]
    s = sched(growing_source(q, closed), prefetch=3)
    s.worker_ready(1, 0.0)
    s.dispatch(0.0)  # 1 <- 0, 1, 2
    s.worker_ready(2, 0.1)
    assert sent(s.dispatch(0.1)) == {2: [3]}
    s.task_done(2, 3, 1, 1.0)
    assert s.dispatch(1.0) == [Revoke(1, [2], expect_ack=True)]  # WAIT: nothing new, so steal
    s.revoked(1, [2], 1.1)
    assert sent(s.dispatch(1.1)) == {2: [2]}


def test_first_worker_to_say_hello_does_not_take_the_others_work():
    """N equal tasks on N expected workers: one each, however the hellos are ordered."""
    s = sched(Source((i, None) for i in range(3)), expect=(1, 2, 3), prefetch=2)
    s.worker_ready(2, 0.0)
    assert sent(s.dispatch(0.0)) == {2: [0]}  # one task while others have not said hello
    s.worker_ready(3, 0.01)
    assert sent(s.dispatch(0.01)) == {3: [1]}
    s.worker_ready(1, 0.02)
    assert sent(s.dispatch(0.02)) == {1: [2]}


def test_steal_takes_the_later_half_of_the_unstarted_tasks():
    s, _ = make(6, workers=(1, 2), prefetch=5)
    assert sent(s.dispatch(0.0)) == {1: [0, 1, 2, 3, 4], 2: [5]}
    s.task_done(2, 5, 1, 1.0)
    assert s.dispatch(1.0) == [Revoke(1, [3, 4], expect_ack=True)]


# -- drain, give_up, abandon -------------------------------------------------------------------


def test_drain_revokes_unstarted_tasks_and_stops_reading_the_source():
    s, src = make(100, workers=(1, 2), prefetch=3)
    s.dispatch(0.0)
    out = s.drain()
    assert out == [Revoke(1, [1, 2], expect_ack=True), Revoke(2, [4, 5], expect_ack=True)]
    assert s.draining and not s.finished
    assert s.in_flight() == 6  # until each worker says where it cut
    s.revoked(2, [4, 5], 0.5)
    assert queues(s) == {1: [0, 1, 2], 2: [3]}
    assert s.dispatch(1.0) == []
    assert src.pulled == 6
    assert s.task_done(1, 0, 1, 2.0) == [Ended(0, 1, 1, True, None)]
    assert s.dispatch(2.0) == []
    assert s.task_done(2, 3, 1, 3.0) == [Ended(3, 1, 2, True, None)]
    assert not s.finished  # rank 1 has not answered
    # rank 1 had begun task 1 when the revoke came: it finishes and is stored, not run again on resume
    s.revoked(1, [2], 3.5)
    assert queues(s) == {1: [1], 2: []}
    assert s.task_done(1, 1, 1, 4.0) == [Ended(1, 1, 1, True, None)]
    assert s.finished
    assert s.dispatch(4.0) == [Stop(1), Stop(2)]
    assert src.pulled == 6 and (s.n_done, s.n_failed) == (3, 0)
    # results of revoked tasks that started after the cut are discarded
    assert s.task_done(1, 2, 1, 5.0) == []


def test_a_failure_begun_after_a_drains_cut_is_not_counted():
    """A worker runs on through tasks the drain cut until the revoke reaches it: a result is
    stored, but a failure is not counted (tiny failing tasks would go on counting); that task
    stays not done, for a resume."""
    s, _ = make(100, workers=(1,), prefetch=4, max_failures="none")
    s.dispatch(0.0)
    assert queues(s) == {1: [0, 1, 2, 3]}
    s.drain()
    assert s.task_done(1, 0, 1, 1.0) == [Ended(0, 1, 1, True, None)]
    assert s.task_done(1, 1, 1, 1.1) == [Ended(1, 1, 1, True, None)]  # past the cut: stored
    assert s.task_failed(1, 2, 1, "boom", 1.2) == []  # past the cut: not counted
    s.revoked(1, [3], 1.3)
    assert s.finished and (s.n_done, s.n_failed) == (2, 0)


def test_drain_forgets_requeued_and_suspect_tasks():
    s, _ = make(100, workers=(1, 2), prefetch=2, timeout=10.0)
    s.dispatch(0.0)  # 1 <- 0, 1 ; 2 <- 2, 3
    s.task_done(2, 2, 1, 5.0)
    s.tick(10.0)  # rank 1 suspect; 0, 1 requeued
    s.drain()
    assert queues(s) == {1: [], 2: [3]}
    s.task_done(2, 3, 1, 11.0)
    assert s.finished
    assert s.dispatch(11.0) == [Stop(2)]
    assert s.task_done(1, 0, 1, 12.0) == []  # not done: left for --resume


def test_give_up_ends_every_unfinished_task_failed():
    s, _ = make(100, workers=(1, 2), prefetch=2, timeout=10.0)
    s.dispatch(0.0)
    s.task_done(2, 2, 1, 5.0)
    s.tick(10.0)
    out = s.give_up("no healthy worker")
    ended = of(out, Ended)
    assert sorted(e.tid for e in ended) == [0, 1, 3]
    assert all(not e.ok and e.error == "no healthy worker" for e in ended)
    assert s.finished and s.n_failed == 3 and s.n_done == 1
    assert queues(s) == {1: [], 2: []}


def test_abandon_running_after_drain():
    s, _ = make(100, workers=(1, 2), prefetch=2)
    s.dispatch(0.0)
    s.drain()
    assert s.abandon_running() == 2
    assert s.finished
    assert s.dispatch(1.0) == [Stop(1), Stop(2)]


# -- WAIT ------------------------------------------------------------------------------------


def test_wait_sentinel_means_nothing_now_without_ending_the_source():
    q, closed = deque(), [False]
    s = sched(growing_source(q, closed), prefetch=2)
    s.worker_ready(1, 0.0)
    assert s.dispatch(0.0) == []
    assert not s.finished
    q.extend([("a", 1), ("b", 2), ("c", 3)])
    assert of(s.dispatch(1.0), Sent) == [Sent(1, [("a", 1, 1), ("b", 1, 2)])]
    s.task_done(1, "a", 1, 2.0)
    s.task_done(1, "b", 1, 2.0)
    assert of(s.dispatch(2.0), Sent) == [Sent(1, [("c", 1, 3)])]
    s.task_done(1, "c", 1, 3.0)
    assert s.dispatch(3.0) == [] and not s.finished  # still waiting for more
    closed[0] = True
    assert s.dispatch(4.0) == [Stop(1)]
    assert s.finished


# -- blocks: sizes, one event per block, failures, expiry and stealing inside a block -----------


def rows(s, rank, n=None, now=1.0, duration=None):
    """The worker reports the next ``n`` tasks of its running block done (all of them by default)."""
    b = s.workers()[rank].queue[0]
    n = b.left if n is None else n
    assert s.accept(rank, b.bid, b.next, b.tids[b.next])
    return s.rows_done(rank, b.bid, b.next, n, now, duration)


def tiny(s, avg=1e-3):
    """As if tasks of ``avg`` seconds had been measured."""
    s._avg = avg


def blocks_of(decisions):
    return {d.rank: [list(b.tids) for b in d.blocks] for d in of(decisions, Send)}


def test_sizes_come_from_durations_within_bounds():
    s = Scheduler(range(0), block_time=0.02, max_block=64)
    assert s.block_size() == 1  # nothing measured yet
    s._observe(0.001, 1)
    assert s.block_size() == 20
    s._observe(1e-7, 1000)
    assert s.block_size() == 64  # capped
    s._observe(10_000.0, 1000)  # 10 s a task
    assert s.block_size() == 1
    assert s.hold_target(1) == s.prefetch and s.hold_target(20) == 40  # two blocks of tiny tasks


def test_zero_negative_and_missing_durations():
    s = Scheduler(range(0), block_time=0.02, max_block=8)
    s._observe(-1.0, 3)
    s._observe(1.0, 0)
    assert s._avg is None
    s._observe(0.0, 5)  # instant tasks: the largest block
    assert s.block_size() == 8
    s._observe(5e-324, 1)  # subnormal
    assert s.block_size() == 8


@settings(max_examples=200, deadline=None)
@given(prefetch=st.integers(1, 16), block_time=st.floats(0.0, 1.0), max_block=st.integers(1, 64),
       total=st.one_of(st.none(), st.integers(0, 500)), workers=st.integers(1, 5),
       durations=st.lists(st.tuples(st.floats(-1.0, 100.0), st.integers(-1, 100)), max_size=30))
def test_block_size_stays_within_bounds(prefetch, block_time, max_block, total, workers, durations):
    s = Scheduler(range(0), prefetch=prefetch, block_time=block_time, max_block=max_block, total=total)
    for r in range(1, workers + 1):
        s.worker_ready(r, 0.0)
    for seconds, n in durations:
        s._observe(seconds, n)
        size = s.block_size()
        assert 1 <= size <= max_block
        if total is not None and size > 1:  # an equal share of what is left, or a couple of ms of work
            floor = math.ceil(min(MIN_BLOCK_TIME / s._avg, max_block)) if s._avg else 1
            assert size <= max(math.ceil(total / (2 * workers)), floor)
        assert s.hold_target(size) >= prefetch


def test_blocks_shrink_toward_the_end_but_not_below_a_round_trip_of_work():
    s = Scheduler(((i, i, i) for i in range(100_000)), total=100_000, block_time=0.02, max_block=4096)
    s.worker_ready(1, 0.0)
    s.worker_ready(2, 0.0)
    tiny(s, 1e-5)  # 10 us tasks: 2000 a block; a round trip of work is 200
    sizes = []
    now = 0.0
    while not s.finished:
        for d in of(s.dispatch(now), Send):
            sizes += [len(b) for b in d.blocks]
        for r in (1, 2):
            if s.workers()[r].queue:
                rows(s, r, now=now)
        now += 0.01
    assert sizes[0] == 2000 and sum(sizes) == 100_000
    assert min(sizes) >= 200, sizes[-20:]  # never below a round trip of work...
    assert sum(1 for x in sizes if x < 2000) <= 8, sizes[-20:]  # ...so the end takes a few rounds, not a halving each


def test_a_block_is_one_send_one_lease_and_one_event():
    s = Scheduler(((i, i, i) for i in range(10_000)), block_time=0.02, max_block=4096)
    s.worker_ready(1, 0.0)
    assert blocks_of(s.dispatch(0.0)) == {1: [[0], [1]]}
    rows(s, 1, duration=1e-5)  # 0: 10 us
    out = s.dispatch(1.0)
    (d,) = of(out, Send)
    assert [len(b) for b in d.blocks] == [2000, 2000]  # 20 ms of 10 us tasks, two blocks
    assert len(s._leases) == 3 and s.in_flight() == 4001
    rows(s, 1, now=2.0, duration=1e-5)  # task 1
    out = rows(s, 1, now=3.0, duration=0.02)  # the first block of 2000: one event
    assert out == [Done(1, 1, list(range(2, 2002)))]
    assert s.n_done == 2002 and s.in_flight() == 2000


def test_a_block_is_reported_in_batches_and_its_lease_ends_with_its_last_task():
    s = Scheduler(((i, i, i) for i in range(100)), prefetch=1, timeout=5.0, total=100)
    s.worker_ready(1, 0.0)
    tiny(s, 1e-4)
    s.dispatch(0.0)
    b, b2 = s.workers()[1].queue
    assert len(b) == len(b2) == 50  # an equal share of the 100 left, for one worker holding two blocks
    rows(s, 1, 10, now=1.0)
    rows(s, 1, 15, now=2.0)
    assert b.next == 25 and s.workers()[1].head_since == 2.0  # task 25 runs from the last batch
    assert not of(s.tick(6.9), Expired)
    with pytest.raises(ProtocolError):
        s.rows_done(1, b.bid, 30, 5, 2.5)  # not its next tasks
    rows(s, 1, now=3.0)
    assert b.bid not in s._leases and s.n_done == 50 and s.next_deadline() is not None
    assert s.workers()[1].queue[0] is b2 and s.workers()[1].head_since == 3.0


def test_a_failure_inside_a_block_touches_only_its_task():
    s = Scheduler(((i, i, i) for i in range(20)), retries=1)
    s.worker_ready(1, 0.0)
    s.worker_ready(2, 0.0)
    tiny(s)
    s.dispatch(0.0)
    b = s.workers()[1].queue[0]
    rows(s, 1, 2)
    assert s.accept(1, b.bid, 2, b.tids[2])
    assert s.task_failed(1, b.bid, 2, b.tids[2], "boom", 1.0) == []  # retried alone
    assert b.next == 3 and s.task(b.tids[2]).failures == 1
    out = rows(s, 1)  # the rest of the block still counts
    assert sorted(out[0].tids) == [t for t in b.tids if t != 2][2:]
    (retry,) = [x for x in s._requeued if x.tids == [2]]
    assert retry.recs[0].tried == {1}
    # the retry prefers the worker that has not tried it
    out = s.dispatch(2.0)
    assert [2] in blocks_of(out).get(2, []) or any(x.tids == [2] for x in s.workers()[2].queue)


def test_an_expired_block_gives_back_its_tail_which_spreads_over_idle_workers():
    s = Scheduler(((i, i, i) for i in range(24)), timeout=5.0, total=24)
    for r in (1, 2, 3):
        s.worker_ready(r, 0.0)
    tiny(s)
    out = s.dispatch(0.0)
    assert blocks_of(out)[1] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    rows(s, 1, 1, now=1.0)  # task 0 done; task 1 hangs
    for r in (2, 3):
        rows(s, r, now=2.0)
        rows(s, r, now=2.0)
    b1, b2 = (b.bid for b in s.workers()[1].queue)
    out = s.tick(6.0)
    assert out[0] == Expired(1, 1, 1, True)
    assert Revoke(1, [(b1, 2), (b2, 0)], expect_ack=False) in out
    assert [x.tids for x in s._requeued] == [[1], [2, 3], [4, 5, 6, 7]]
    out = s.dispatch(6.0)
    got = blocks_of(out)
    assert 1 not in got  # suspect
    assert sorted(t for r in got for b in got[r] for t in b) == [1, 2, 3, 4, 5, 6, 7]
    assert all(len(got[r]) >= 1 for r in (2, 3))  # over both idle workers
    assert all(len(b) <= 2 for r in got for b in got[r])  # an equal share of the 7 left


def test_steal_takes_the_later_half_from_the_back_of_a_workers_blocks():
    s = Scheduler(((i, i, i) for i in range(40)), total=40)
    s.worker_ready(1, 0.0)
    s.worker_ready(2, 0.0)
    tiny(s)
    out = s.dispatch(0.0)
    assert blocks_of(out) == {1: [list(range(0, 10)), list(range(10, 20))],
                              2: [list(range(20, 30)), list(range(30, 40))]}
    rows(s, 2, now=0.5)
    rows(s, 2, now=0.5)  # rank 2 is idle, nothing is left: steal 9 of the 19 that rank 1 has not started
    b2 = s.workers()[1].queue[1]
    assert s.dispatch(0.6) == [Revoke(1, [(b2.bid, 1)], expect_ack=True)]
    assert s.dispatch(0.7) == []  # one steal at a time
    s.revoked(1, [(b2.bid, 1)], 0.8)
    out = s.dispatch(0.8)
    got = sorted(t for b in blocks_of(out)[2] for t in b)
    assert got == list(range(11, 17))  # two blocks of an equal share of the 9
    assert [x.tids for x in s._requeued] == [[17, 18, 19]]


def test_steal_cuts_a_running_block_and_the_ack_says_where():
    s = Scheduler(((i, i, i) for i in range(20)), prefetch=1, block_time=0.02)
    s.worker_ready(1, 0.0)
    tiny(s, 1e-3)  # blocks of 20
    s.dispatch(0.0)
    (b,) = s.workers()[1].queue
    assert len(b) == 20
    s.worker_ready(2, 0.5)
    assert s.dispatch(0.5) == [Revoke(1, [(b.bid, 11)], expect_ack=True)]  # 9 of the 19 unstarted
    rows(s, 1, 12, now=0.9)  # it ran 12 before the revoke arrived...
    s.revoked(1, [(b.bid, 13)], 1.0)  # ...and had started the 13th: it dropped 13..19
    assert len(b) == 13 and b.left == 1
    out = s.dispatch(1.0)
    assert sorted(t for x in blocks_of(out)[2] for t in x) == [13, 14, 15, 16, 17, 18, 19]
    # tasks taken back unstarted keep their attempt number where they run next
    assert {x.attempt for x in of(out, Send)[0].blocks} == {1}


def test_a_revoke_ack_that_empties_the_head_block_arms_the_next():
    s = Scheduler(((i, i, i) for i in range(4)), prefetch=2, timeout=10.0)
    s.worker_ready(1, 0.0)
    s.worker_ready(2, 0.0)
    s.dispatch(0.0)  # 1 <- [0] [1]; 2 <- [2] [3]
    rows(s, 2, now=1.0)
    rows(s, 2, now=1.0)  # rank 2 idle, nothing new: steal from rank 1
    ((bid, k),) = of(s.dispatch(1.0), Revoke)[0].cuts
    rows(s, 1, now=5.0)  # task 0 done: task 1 (being revoked) is rank 1's head now
    s.worker_lost(2, 5.0)
    s._requeued.append(Block([9], [9], 9))  # something more, for rank 1, behind task 1
    assert blocks_of(s.dispatch(5.0)) == {1: [[9]]}
    s.revoked(1, [(bid, 0)], 6.0)  # rank 1 had dropped task 1 unstarted: task 9 runs from now
    assert s.in_flight() == 1 and s.workers()[1].head_since == 6.0
    assert not of(s.tick(15.9), Expired) and of(s.tick(16.0), Expired) == [Expired(1, 9, 1, True)]


def test_late_results_of_a_lease_that_is_over_are_refused_except_for_a_task_retried_alone():
    s = Scheduler(((i, i, i) for i in range(8)), timeout=5.0, total=8, retries=3)
    s.worker_ready(1, 0.0)
    s.worker_ready(2, 0.0)
    tiny(s)
    s.dispatch(0.0)
    b = s.workers()[1].queue[0]
    assert b.tids == [0, 1]
    s.tick(6.0)  # task 0 hangs on rank 1: it is retried alone, task 1 goes back to the queue
    assert not s.accept(1, b.bid, 1, 1)  # task 1 of the old lease: refused
    assert s.accept(1, b.bid, 0, 0)  # task 0 of the old lease: it still wins
    assert of(s.task_done(1, b.bid, 0, 0, 7.0, attempt=1), Ended) == [Ended(0, 1, 1, True, None)]
    assert s.workers()[1].state == "ok"
    assert not any(0 in x.tids for x in s._requeued)


def test_an_available_count_spreads_a_small_batch_over_idle_workers_at_once():
    class Available:
        def __init__(self, n):
            self.items = deque(range(n))

        def available(self):
            return len(self.items)

        def take(self, n):
            if not self.items:
                return WAIT
            got = [self.items.popleft() for _ in range(min(n, len(self.items)))]
            return Chunk(got, got, got[0])

    src = Available(16)
    s = Scheduler(src)
    s.worker_ready(1, 0.0)
    s.worker_ready(2, 0.0)
    tiny(s, 1e-6)
    out = s.dispatch(0.0)
    assert {r: sum(len(b) for b in bs) for r, bs in blocks_of(out).items()} == {1: 8, 2: 8}


def test_iter_source_ends_a_chunk_at_a_gap_in_positions_and_gives_a_step_alone():
    from mpigather.scheduler import IterSource
    from mpigather.steps import StepCall

    call = StepCall(1, "m:f")
    src = IterSource([("a", 1, 0), ("b", 2, 1), ("d", 4, 3), ("e", 5, 4, call), ("f", 6, 5), WAIT, ("g", 7, 6)])
    assert src.take(10) == Chunk(["a", "b"], [1, 2], 0)
    assert src.take(10) == Chunk(["d"], [4], 3)
    assert src.take(10) == Chunk(["e"], [5], 4, call)
    assert src.take(10) == Chunk(["f"], [6], 5)  # (a WAIT after tasks only ends the chunk)
    assert src.take(1) == Chunk(["g"], [7], 6)
    assert src.take(1) is None
    assert IterSource([WAIT, ("x", 1)]).take(5) is WAIT


# -- regressions: bugs found by these tests, fixed in scheduler.py ----------------------------


def test_losing_a_worker_of_no_kind_keeps_the_check_for_steps_no_worker_can_run():
    """A step that needs a kind whose last worker was lost must fail, even when a worker of no
    kind is lost after it (that loss used to clear the pending check: the run never ended)."""
    from mpigather.steps import StepCall

    s = Scheduler([("a", None, 0, StepCall(1, "m:f", "gpu"))], prefetch=1)
    s.worker_ready(1, 0.0, ["gpu"])
    s.worker_ready(2, 0.0)
    s.worker_ready(3, 0.0)
    s.worker_lost(1, 0.5)  # no gpu worker is left...
    s.dispatch(1.0)  # ...and a worker of no kind finds the step that needs one: it waits in the queue
    s.worker_lost(3, 1.5)
    (e,) = of(s.tick(2.0), Ended)
    assert not e.ok and "needs a worker of kind 'gpu'" in e.error
    assert s.finished


def test_failure_after_expiry_does_not_queue_the_task_twice():
    s = sched([("A", None)], prefetch=2, retries=2, timeout=10.0)
    s.worker_ready(1, 0.0)
    s.dispatch(0.0)
    s.tick(10.0)  # A requeued, rank 1 suspect
    s.task_failed(1, "A", 1, "boom", 11.0)  # rank 1 reports in with A's failure
    out = s.dispatch(11.0)
    tids = [t[0] for d in of(out, Sent) for t in d.tasks]
    assert tids == ["A"]  # before the fix: ["A", "A"], both with attempt 3


def test_failure_after_expiry_does_not_break_worker_lost():
    s = sched([("A", 10.0), ("B", None), ("C", None)], prefetch=1, retries=2,
                  timeout_of=lambda p: p)
    s.worker_ready(1, 0.0)
    s.worker_ready(2, 0.0)
    s.dispatch(0.0)  # 1 <- A, 2 <- B
    s.tick(10.0)  # A expires on 1
    s.task_failed(1, "A", 1, "boom", 11.0)  # A requeued a second time
    s.dispatch(11.0)  # 1 <- C (it tried A; 2 has not)
    s.task_done(2, "B", 1, 12.0)
    s.dispatch(12.0)  # 2 <- A (attempt 2)
    s.task_done(1, "C", 1, 13.0)
    s.dispatch(13.0)  # 1 <- A again (attempt 3) from the duplicate entry
    s.task_done(1, "A", 3, 14.0)  # A ends; rank 2 still holds it
    s.worker_lost(2, 15.0)  # before the fix: KeyError: 'A'


def test_no_task_is_sent_after_drain():
    s, _ = make(4, workers=(1, 2), prefetch=1, timeout=10.0)
    s.dispatch(0.0)  # 1 <- 0, 2 <- 1
    s.task_done(2, 1, 1, 1.0)  # rank 2 idle
    s.drain()
    s.tick(10.0)  # task 0 expires on rank 1 while draining: requeued
    assert of(s.dispatch(10.0), Sent) == []  # before the fix: Sent(2, [(0, 2, None)])


def test_dispatch_after_abandon_running_does_not_crash():
    s, _ = make(2, workers=(1, 2), prefetch=1, timeout=10.0)
    s.dispatch(0.0)  # 1 <- 0, 2 <- 1
    s.drain()
    s.tick(10.0)  # both expire: both requeued, both workers suspect
    s.abandon_running()
    assert s.finished
    s.task_done(2, 1, 1, 11.0)  # rank 2 reports in (its result is discarded)
    out = s.dispatch(11.0)  # before the fix: KeyError: 1
    assert of(out, Sent) == []


def test_rejected_late_result_clears_suspicion():
    s, _ = make(2, workers=(1, 2), prefetch=1, timeout=10.0)
    s.dispatch(0.0)  # 1 <- 0, 2 <- 1
    s.task_done(2, 1, 1, 5.0)
    s.tick(10.0)  # task 0 expires on rank 1
    s.dispatch(10.0)  # 2 <- 0
    s.task_done(2, 0, 2, 11.0)
    # rank 1 finally sends its result of task 0; the master asks result_begin, which rejects
    # it, and (as the master does for a rejected result) does not call task_done
    assert s.result_begin(1, 0, 1, 12.0) is False
    assert s.workers()[1].state == "ok"  # before the fix: still "suspect"
    assert s.stuck_workers() == {}


def test_revoke_ack_of_the_stuck_task_clears_suspicion():
    s, _ = make(3, workers=(1, 2), prefetch=2, timeout=10.0)
    assert sent(s.dispatch(0.0)) == {1: [0, 1], 2: [2]}
    s.task_done(2, 2, 1, 1.0)
    assert s.dispatch(1.0) == [Revoke(1, [1], expect_ack=True)]
    # rank 1 finishes 0, then drops 1 and acknowledges; the master sees the result of 0...
    s.task_done(1, 0, 1, 2.0)  # task 1 is now rank 1's head, running since 2.0 (it is not)
    s.dispatch(2.0)
    assert of(s.tick(12.0), Expired) == [Expired(1, 1, 1, True)]  # ...and the ack came late
    s.revoked(1, [1], 12.5)
    assert s.workers()[1].state == "ok"  # before the fix: "suspect", and rank 1 never sends anything again



# -- simulated cluster --------------------------------------------------------------------------


@dataclass
class SimBlock:
    """A block as the worker holds it: it runs tasks ``[next, end)``."""

    bid: int
    tids: list
    attempt: int
    next: int = 0
    end: int = 0


@dataclass
class SimWorker:
    rank: int
    inbox: deque = field(default_factory=deque)  # master -> worker, in transit (FIFO)
    local: deque = field(default_factory=deque)  # the worker's own FIFO of SimBlocks
    running: tuple | None = None  # (bid, index, tid, attempt)
    pending: list = field(default_factory=list)  # results not yet sent (a batch)
    outbox: deque = field(default_factory=deque)  # worker -> master, in transit (FIFO)
    joined: bool = False
    lost: bool = False
    got_stop: bool = False
    said_bye: bool = False


class Cluster:
    """The master loop and the workers around a Scheduler, one event at a time.

    Workers behave like ``mpigather.worker``: they read messages at any time (a helper thread does,
    also while a task runs), run their blocks in order and the tasks of a block in order, drop
    what a revoke cuts and has not started, batch the results of consecutive tasks of a block
    into one message (``rows``), send a failure or a streamed result in order with them, flush
    their results before a steal's acknowledgement, and say goodbye once their queue is empty
    after a stop. The master does what ``mpigather.master`` does: ``accept`` before storing, then
    ``rows_done`` / ``task_done`` / ``discarded``; a batch of a lease that is over is looked at
    task by task. Messages between a worker and the master keep their order. Worker 1 is never
    lost, so that the run can always finish.

    The bugs these runs once found are pinned by the regression tests above.
    """

    def __init__(self, n_tasks: int, n_workers: int, *, prefetch: int, retries: int, timeout: float | None,
                 timeouts: list[float | None], block_time: float = 0.02, max_block: int = 8,
                 late_joiners: int = 0, known_total: bool = True) -> None:
        self.tids = [f"t{i}" for i in range(n_tasks)]
        self.source = Source((tid, {"timeout": timeouts[i % len(timeouts)] if timeouts else None}, i)
                             for i, tid in enumerate(self.tids))
        self.retries = retries
        self.default_timeout = timeout
        self.stream_tick: dict[int, float] = {}  # rank -> last tick that saw a transfer from it
        self.payloads = {tid: p for tid, p, _ in self.source.items}
        self.s = Scheduler(self.source, expect=range(1, n_workers + 1), prefetch=prefetch, retries=retries,
                           timeout=timeout, timeout_of=lambda p: p["timeout"], block_time=block_time,
                           max_block=max_block, total=n_tasks if known_total else None)
        self.now = 0.0
        self.w = {r: SimWorker(r) for r in range(1, n_workers + 1)}
        self.protected = 1  # never lost, so that the run can always finish
        self.ended: dict[Any, tuple] = {}  # tid -> (ok, attempt, rank, error)
        self.troubled: set[Any] = set()  # tasks that failed, expired or lost a holder
        self.errors: dict[Any, set[str]] = {}
        self.stops: Counter = Counter()
        self.drained = False
        self.pulled_at_drain: int | None = None
        self.sent_after_drain: set[Any] = set()
        self.dispatched_before_drain: set[Any] = set()
        self.last_attempt: dict[Any, int] = {}
        self.ran: dict[Any, int] = {}  # the highest attempt number a worker started each task under
        self.delivered_done: list[tuple] = []  # (rank, bid, index, tid, attempt) of accepted results
        self.steps = 0
        self.notices: list[Notice] = []
        self.block_sizes: Counter = Counter()
        for r in range(1, n_workers + 1 - late_joiners):
            self.join(r)

    # -- the master side ------------------------------------------------------------------

    def end(self, tid, ok, attempt, rank, error=None) -> None:
        assert tid not in self.ended, f"task {tid} ended twice: {self.ended[tid]} and {(ok, attempt, rank, error)}"
        self.ended[tid] = (ok, attempt, rank, error)

    def route(self, decisions: list) -> None:
        s = self.s
        for d in decisions:
            if isinstance(d, Send):
                w = self.w[d.rank]
                assert not w.lost and s.workers()[d.rank].state == "ok", d
                assert self.stops[d.rank] == 0, f"task sent after Stop: {d}"
                for b in d.blocks:
                    assert len(set(b.tids)) == len(b.tids), f"task twice in one block: {b}"
                    assert b.next == 0 and len(b) >= 1
                    self.block_sizes[len(b)] += 1
                    for tid, payload in zip(b.tids, b.payloads):
                        assert payload == self.payloads[tid]
                        assert tid not in self.ended, f"ended task sent again: {tid}"
                        # never a number an execution of it already had (two executions never
                        # share one); a task taken back unstarted may keep its number
                        last = self.last_attempt.get(tid, 0)
                        assert b.attempt >= max(last, 1), f"attempt number decreasing: {tid}"
                        assert b.attempt > self.ran.get(tid, 0), f"attempt number already run: {tid}"
                        self.last_attempt[tid] = b.attempt
                        if self.drained:
                            self.sent_after_drain.add(tid)
                        else:
                            self.dispatched_before_drain.add(tid)
                    w.inbox.append(SimBlock(b.bid, list(b.tids), b.attempt, 0, len(b)))
            elif isinstance(d, (Revoke, Stop)):
                if isinstance(d, Stop):
                    self.stops[d.rank] += 1
                    assert self.stops[d.rank] == 1, f"second Stop to {d.rank}"
                    # at the end, or early: the source is used up and the worker holds nothing,
                    # with spare idle workers kept for work that may come back
                    rec = s.workers()[d.rank]
                    assert s.finished or (s._source is None and rec.held == 0 and not rec.queue
                                          and len(s._idle) >= SPARE_IDLE), d
                    assert not self.w[d.rank].lost
                if not self.w[d.rank].lost:
                    self.w[d.rank].inbox.append(d)
            elif isinstance(d, Done):
                for tid in d.tids:
                    self.end(tid, True, d.attempt, d.rank)
            elif isinstance(d, Ended):
                self.end(d.tid, d.ok, d.attempt, d.rank, d.error)
            elif isinstance(d, Expired):
                self.troubled.add(d.tid)
            elif isinstance(d, Notice):
                self.notices.append(d)
            else:
                raise AssertionError(f"unknown decision {d!r}")

    def after_event(self, decisions: list) -> None:
        self.route(decisions)
        self.route(self.s.dispatch(self.now))
        self.check()

    def join(self, rank: int) -> None:
        self.w[rank].joined = True
        self.s.worker_ready(rank, self.now)
        self.after_event([])

    def _one(self, rank, bid, i, tid, attempt, dur) -> list:
        """One result, as the master handles it: accept, store, report (or drop)."""
        s = self.s
        if not s.accept(rank, bid, i, tid):
            return s.discarded(rank, self.now)
        was_ended = tid in self.ended
        out = s.task_done(rank, bid, i, tid, self.now, dur, attempt)
        assert not was_ended
        self.delivered_done.append((rank, bid, i, tid, attempt))
        return out

    def deliver(self, rank: int) -> None:
        """The master receives the next message from ``rank``."""
        s, w = self.s, self.w[rank]
        msg = w.outbox.popleft()
        kind = msg[0]
        out: list = []
        if kind == "rows":
            _, bid, start, tids, attempt, dur = msg
            if s.lease(rank, bid) is not None:
                n = s.accept_rows(rank, bid, start, len(tids))  # those past a cut are not done
                n_done = s.n_done
                if n:
                    out = s.rows_done(rank, bid, start, n, self.now, dur * n)
                else:
                    out = s.discarded(rank, self.now)
                assert s.n_done == n_done + n
                self.delivered_done.extend((rank, bid, start + k, t, attempt) for k, t in enumerate(tids[:n]))
            else:  # a batch of a lease that is over: only a task retried alone may still win
                for k, tid in enumerate(tids):
                    out += self._one(rank, bid, start + k, tid, attempt, dur)
        elif kind == "failed":
            _, bid, i, tid, attempt, err = msg
            self.troubled.add(tid)
            self.errors.setdefault(tid, set()).add(err)
            n_failed = s.n_failed
            out = s.task_failed(rank, bid, i, tid, err, self.now, attempt)
            assert s.n_failed - n_failed == len(of(out, Ended))
        elif kind == "begin":
            _, bid, i, tid, attempt, dur = msg
            if s.begin_stream(rank, bid, i, tid, self.now):
                w.outbox.appendleft(("end", bid, i, tid, attempt, dur))  # the chunks follow
            else:
                out = s.discarded(rank, self.now)
        elif kind == "end":
            _, bid, i, tid, attempt, dur = msg
            s.transfer_done(rank)
            out = self._one(rank, bid, i, tid, attempt, dur)
        elif kind == "revoked":
            out = s.revoked(rank, msg[1], self.now)
        elif kind == "bye":
            s.worker_stopped(rank)
        self.after_event(out)

    def deliver_duplicate(self, i: int) -> None:
        """A result delivered a second time, for a task that has ended."""
        rank, bid, k, tid, attempt = self.delivered_done[i % len(self.delivered_done)]
        if self.w[rank].lost or self.w[rank].said_bye or tid not in self.ended:
            return  # (nothing comes from a worker after its goodbye)
        n_done = self.s.n_done
        b = self.s.lease(rank, bid)
        if b is not None and b.next != k:
            return  # (a worker never repeats a task of its live lease)
        assert not self.s.accept(rank, bid, k, tid)
        self.s.discarded(rank, self.now)
        assert self.s.n_done == n_done
        self.after_event([])

    def lease_of(self, tid: Any) -> float | None:
        t = self.payloads[tid]["timeout"]
        return t if t is not None else self.default_timeout

    def advance(self, dt: float) -> None:
        """Time passes; the master ticks. Checks which leases expired and which did not."""
        s = self.s
        before = {}
        for r, w in s.workers().items():
            if w.state == "ok" and w.queue:
                b = w.queue[0]
                before[r] = (b.tids[b.next], b.rec(b.next), w.head_since, w.streaming)
        self.now += dt
        for r, w in s.workers().items():
            if w.streaming:
                self.stream_tick[r] = self.now
        out = s.tick(self.now)
        for e in of(out, Expired):
            # only the running task of a worker expires, timed from when it started running
            head, rec, since, streaming = before[e.rank]
            assert e.tid == head and not streaming, (e, before[e.rank])
            if rec is None or rec.step == 0:
                assert self.now >= since + self.lease_of(head), (e, since, self.now)
        for r, w in s.workers().items():
            if w.state == "ok" and w.queue and not w.streaming:
                b = w.queue[0]
                head = b.tids[b.next]
                lease = self.lease_of(head)
                # a head past its lease must have expired, unless a transfer from that worker held
                # the lease over: the lease is then looked at again one second after that tick
                assert (lease is None or self.now < w.head_since + lease
                        or self.now < self.stream_tick.get(r, -math.inf) + 1.0), \
                    f"worker {r}: head {head!r} running since {w.head_since} outlived its {lease} s lease"
        self.after_event(out)

    def lose(self, rank: int) -> None:
        w = self.w[rank]
        if rank == self.protected or w.lost or not w.joined:
            return
        q = self.s.workers()[rank].queue
        if q:
            self.troubled.add(q[0].tids[q[0].next])
        w.lost = True
        w.inbox.clear(), w.outbox.clear(), w.local.clear(), w.pending.clear()
        w.running = None
        self.after_event(self.s.worker_lost(rank, self.now))

    def drain(self) -> None:
        if self.drained:
            return
        self.drained = True
        self.pulled_at_drain = self.source.pulled
        self.after_event(self.s.drain())

    # -- the worker side ------------------------------------------------------------------

    def flush(self, rank: int) -> None:
        w = self.w[rank]
        w.outbox.extend(w.pending)
        w.pending.clear()

    def recv(self, rank: int) -> None:
        """The worker's helper thread handles the next message that reached it."""
        w = self.w[rank]
        d = w.inbox.popleft()
        if isinstance(d, SimBlock):
            w.local.append(d)
        elif isinstance(d, Revoke):
            answer = []
            for bid, k in d.cuts:
                sb = next((x for x in w.local if x.bid == bid), None)
                first = None
                if sb is not None:
                    started = sb.next + (1 if w.running is not None and w.running[0] == bid else 0)
                    k = max(k, started)
                    if k < sb.end:
                        first, sb.end = k, k
                answer.append((bid, first))
            w.local = deque(x for x in w.local if x.next < x.end or (w.running and w.running[0] == x.bid))
            if d.expect_ack:
                self.flush(rank)  # results first: the master must see them before the ack
                w.outbox.append(("revoked", answer))
        elif isinstance(d, Stop):
            w.got_stop = True

    def start(self, rank: int) -> None:
        w = self.w[rank]
        sb = w.local[0]
        i = sb.next
        sb.next += 1
        self.ran[sb.tids[i]] = max(self.ran.get(sb.tids[i], 0), sb.attempt)
        w.running = (sb.bid, i, sb.tids[i], sb.attempt)
        if sb.next >= sb.end:
            w.local.popleft()

    def finish(self, rank: int, outcome: str, dur: float = 0.01) -> None:
        w = self.w[rank]
        bid, i, tid, attempt = w.running
        w.running = None
        last = w.pending[-1] if w.pending else None
        if outcome == "fail":
            w.pending.append(("failed", bid, i, tid, attempt, f"error {tid} attempt {attempt} on {rank}"))
        elif outcome == "stream":
            self.flush(rank)
            w.outbox.append(("begin", bid, i, tid, attempt, dur))
        elif last is not None and last[0] == "rows" and last[1] == bid and last[2] + len(last[3]) == i:
            last[3].append(tid)
        else:
            w.pending.append(("rows", bid, i, [tid], attempt, dur))

    # -- driving --------------------------------------------------------------------------

    def worker_actions(self) -> list[tuple]:
        acts = []
        for r, w in self.w.items():
            if w.lost or not w.joined:
                continue
            if w.inbox:  # the worker's helper thread reads messages, also while a task runs
                acts.append(("recv", r))
            if w.running is None and w.local:
                acts.append(("start", r))
            if w.running is not None:
                acts.append(("finish", r))
            if w.pending:
                acts.append(("flush", r))
            if w.outbox:
                acts.append(("deliver", r))
            if (w.got_stop and not w.said_bye and w.running is None and not w.local and not w.inbox
                    and not w.pending):
                acts.append(("bye", r))  # its queue ran dry after the stop: goodbye
        return acts

    def step(self, rng: random.Random, chaos: bool, p_fail: float, timeout: float) -> bool:
        acts = self.worker_actions()
        if chaos:
            acts += [("advance",), ("lose",), ("dup",), ("join",)]
        else:
            acts += [("join", r) for r, w in self.w.items() if not w.joined]
        if not acts:
            return False
        a = rng.choice(acts)
        self.steps += 1
        if a[0] == "recv":
            self.recv(a[1])
        elif a[0] == "start":
            self.start(a[1])
        elif a[0] == "finish":
            x = rng.random()
            outcome = "fail" if chaos and x < p_fail else ("stream" if x > 0.85 else "done")
            self.finish(a[1], outcome, rng.choice([0.00005, 0.0005, 0.001, 0.05, 1.0]))
        elif a[0] == "flush":
            self.flush(a[1])
        elif a[0] == "deliver":
            self.deliver(a[1])
        elif a[0] == "bye":
            self.w[a[1]].said_bye = True
            self.w[a[1]].outbox.append(("bye",))
        elif a[0] == "advance":
            self.advance(rng.expovariate(1.0 / (0.3 * timeout)))
        elif a[0] == "lose":
            self.lose(rng.choice(list(self.w)))
        elif a[0] == "dup":
            if self.delivered_done:
                self.deliver_duplicate(rng.randrange(len(self.delivered_done)))
        elif a[0] == "join":
            late = [r for r, w in self.w.items() if not w.joined]
            if late:
                self.join(a[1] if len(a) > 1 else rng.choice(late))
        return True

    def settle(self, rng: random.Random, max_steps: int = 50000) -> None:
        """No more failures, losses or passing time: let every message and task through."""
        for _ in range(max_steps):
            if self.step(rng, chaos=False, p_fail=0.0, timeout=1.0):
                continue
            return
        raise AssertionError(f"the cluster did not settle in {max_steps} steps")

    # -- checks ---------------------------------------------------------------------------

    def check(self) -> None:
        s = self.s
        seen: set = set()
        held = 0
        for r, wr in s.workers().items():
            q = [t for b in wr.queue for t in b.tids[b.next:]]
            assert wr.held == len(q), (r, wr.held, q)
            held += len(q)
            if wr.state != "ok":
                assert not q, f"worker {r} in state {wr.state} holds {q}"
            for b in wr.queue:
                assert s._leases.get(b.bid) is b and b.rank == r
            for tid in q:
                assert tid not in seen, f"task {tid} leased to two workers"
                assert tid not in self.ended, f"ended task {tid} still held by worker {r}"
                seen.add(tid)
        for b in s._requeued:
            for tid in b.tids[b.next:]:
                assert tid not in seen, f"task {tid} both leased and queued"
                assert tid not in self.ended or (len(b) == 1 and b.recs[0].ended), f"ended task {tid} queued"
                seen.add(tid)
        assert s.in_flight() == held
        # the sets kept up to date instead of passes over the workers
        assert s._idle == {r for r, w in s.workers().items() if w.state == "ok" and not w.held}
        assert s._multi == {r for r, w in s.workers().items() if w.state == "ok" and w.held > 1 and not w.revoking}
        assert s._asked == {r for r, w in s.workers().items() if w.revoking}
        ok = sum(1 for e in self.ended.values() if e[0])
        assert (s.n_done, s.n_failed) == (ok, len(self.ended) - ok)
        if self.drained:
            assert self.source.pulled == self.pulled_at_drain, "source read after drain"
            assert self.sent_after_drain <= self.dispatched_before_drain, "new task sent after drain"

    def check_final(self) -> None:
        s = self.s
        assert s.finished, "the run did not finish"
        assert s.in_flight() == 0
        # giving up (every worker stuck or lost for too long) fails what was started, and the
        # rest of the source is never read: the master reports those as not run
        gave_up = any(n.level == "error" and "no healthy worker" in n.text for n in self.notices)
        if not self.drained and not gave_up:
            assert set(self.ended) == set(self.tids), set(self.tids) ^ set(self.ended)
            assert self.source.pulled == len(self.tids)
        for tid, (ok, _attempt, _rank, error) in self.ended.items():
            if not ok and gave_up and "no healthy worker" in (error or ""):
                continue  # every worker was stuck or lost for longer than the patience
            if not ok:
                assert tid in self.troubled, f"{tid} failed but never failed, expired or lost its worker"
                assert error in self.errors.get(tid, set()) or "timed out" in error or "lost" in error
        for r, w in self.w.items():
            st_ = s.workers().get(r)
            if w.lost or st_ is None:
                continue
            assert st_.state != "suspect", f"worker {r} is still suspect at the end (stuck in {st_.stuck!r})"
            assert st_.state == "stopped" and self.stops[r] == 1 and w.got_stop, (r, st_.state)
            assert not w.local and w.running is None
        assert s.over, "every worker is stopped, lost or stuck, yet the run is not over"


def run_cluster(seed: int, n_tasks: int, n_workers: int, prefetch: int, retries: int, timeout: float,
                per_task: list, chaos_steps: int, p_fail: float, late_joiners: int, drain_at: int | None,
                tiny: float | None = None, known_total: bool = True):
    rng = random.Random(seed)
    c = Cluster(n_tasks, n_workers, prefetch=prefetch, retries=retries, timeout=timeout, timeouts=per_task,
                late_joiners=late_joiners, known_total=known_total)
    if tiny is not None:
        c.s._observe(tiny, 1)  # as if tiny tasks had been measured: blocks of many tasks from the start
    for i in range(chaos_steps):
        if drain_at is not None and i == drain_at:
            c.drain()
        c.step(rng, chaos=True, p_fail=p_fail, timeout=timeout)
    if drain_at is not None:
        c.drain()
    c.settle(rng)
    c.check_final()
    return c


cluster_params = dict(
    seed=st.integers(0, 2**32 - 1),
    n_tasks=st.integers(0, 60),
    n_workers=st.integers(1, 5),
    prefetch=st.integers(1, 4),
    retries=st.integers(0, 3),
    timeout=st.sampled_from([1.0, 5.0, 20.0]),
    per_task=st.lists(st.sampled_from([None, 0.5, 3.0, 50.0]), max_size=3),
    chaos_steps=st.integers(0, 400),
    p_fail=st.sampled_from([0.0, 0.1, 0.3, 0.6]),
    late_joiners=st.integers(0, 2),
    tiny=st.sampled_from([None, 1e-4, 1e-3]),
    known_total=st.booleans(),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**cluster_params)
def test_random_cluster_every_task_ends_exactly_once(seed, n_tasks, n_workers, prefetch, retries, timeout,
                                                      per_task, chaos_steps, p_fail, late_joiners, tiny,
                                                      known_total):
    late_joiners = min(late_joiners, n_workers - 1)
    run_cluster(seed, n_tasks, n_workers, prefetch, retries, timeout, per_task, chaos_steps, p_fail,
                late_joiners, drain_at=None, tiny=tiny, known_total=known_total)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**cluster_params, drain_frac=st.floats(0.0, 1.0))
def test_random_cluster_with_drain(seed, n_tasks, n_workers, prefetch, retries, timeout, per_task,
                                   chaos_steps, p_fail, late_joiners, tiny, known_total, drain_frac):
    late_joiners = min(late_joiners, n_workers - 1)
    c = run_cluster(seed, n_tasks, n_workers, prefetch, retries, timeout, per_task, chaos_steps, p_fail,
                    late_joiners, drain_at=int(drain_frac * chaos_steps), tiny=tiny, known_total=known_total)
    assert c.s.draining and c.drained
    assert set(c.ended) <= c.dispatched_before_drain


def test_random_cluster_smoke_many_seeds():
    """A quick deterministic sweep, so that a plain run covers many orders even without hypothesis;
    half of the runs with blocks of many tasks from the start."""
    sizes: Counter = Counter()
    for seed in range(60):
        rng = random.Random(seed)
        c = run_cluster(seed, n_tasks=rng.randint(0, 50), n_workers=rng.randint(1, 4), prefetch=rng.randint(1, 3),
                        retries=rng.randint(0, 2), timeout=5.0, per_task=[None, 2.0], chaos_steps=300, p_fail=0.2,
                        late_joiners=0, drain_at=None, tiny=1e-4 if seed % 2 else None,
                        known_total=seed % 3 != 0)
        sizes.update(c.block_sizes)
    assert max(sizes) > 1 and sizes[1]  # both blocks of many tasks and single tasks were exercised


# -- stateful test: hypothesis picks every event ------------------------------------------------


class SchedulerMachine(RuleBasedStateMachine):
    """Hypothesis chooses each event; the teardown lets the cluster settle and checks the end."""

    @initialize(
        n_tasks=st.integers(0, 24),
        n_workers=st.integers(1, 4),
        prefetch=st.integers(1, 3),
        retries=st.integers(0, 2),
        timeout=st.sampled_from([2.0, 10.0]),
        per_task=st.lists(st.sampled_from([None, 1.0, 30.0]), max_size=2),
        tiny=st.sampled_from([None, 1e-4]),
    )
    def setup(self, n_tasks, n_workers, prefetch, retries, timeout, per_task, tiny):
        self.c = Cluster(n_tasks, n_workers, prefetch=prefetch, retries=retries, timeout=timeout,
                         timeouts=per_task)
        if tiny is not None:
            self.c.s._observe(tiny, 1)
        self.timeout = timeout

    def _acts(self, kind):
        return [a[1] for a in self.c.worker_actions() if a[0] == kind]

    @rule(i=st.integers(0, 7))
    def recv(self, i):
        acts = self._acts("recv")
        if acts:
            self.c.recv(acts[i % len(acts)])

    @rule(i=st.integers(0, 7))
    def start(self, i):
        acts = self._acts("start")
        if acts:
            self.c.start(acts[i % len(acts)])

    @rule(i=st.integers(0, 7), outcome=st.sampled_from(["done", "done", "stream", "fail"]),
          dur=st.sampled_from([0.0005, 0.05, 1.0]))
    def finish(self, i, outcome, dur):
        acts = self._acts("finish")
        if acts:
            self.c.finish(acts[i % len(acts)], outcome, dur)

    @rule(i=st.integers(0, 7))
    def flush(self, i):
        acts = self._acts("flush")
        if acts:
            self.c.flush(acts[i % len(acts)])

    @rule(i=st.integers(0, 7))
    def deliver(self, i):
        acts = self._acts("deliver")
        if acts:
            self.c.deliver(acts[i % len(acts)])

    @rule(frac=st.floats(0.0, 1.5))
    def advance(self, frac):
        self.c.advance(frac * self.timeout)

    @rule(r=st.integers(1, 4))
    def lose(self, r):
        if r in self.c.w:
            self.c.lose(r)

    @precondition(lambda self: bool(self.c.delivered_done))
    @rule(i=st.integers(0, 100))
    def duplicate(self, i):
        self.c.deliver_duplicate(i)

    @invariant()
    def consistent(self):
        self.c.check()

    def teardown(self):
        if hasattr(self, "c"):
            self.c.settle(random.Random(0))
            self.c.check_final()


SchedulerMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=50, deadline=None,
                                              suppress_health_check=[HealthCheck.too_slow])
test_scheduler_state_machine = SchedulerMachine.TestCase



# -- policies that live in the scheduler: states, grace, patience, the end of the run ------------


def test_illegal_event_names_event_state_and_worker_and_changes_nothing():
    s, _ = make(2, workers=(1,))
    s.worker_stopped(1)
    with pytest.raises(ProtocolError, match=r"event 'hello' is not allowed for worker 1 in state stopped"):
        s.worker_ready(1, 0.0)
    assert s.workers()[1].state is WorkerState.STOPPED


def test_every_transition_in_the_table_is_reachable_only_from_its_state():
    for (state, event), new in TRANSITIONS.items():
        assert isinstance(state, WorkerState) and isinstance(new, WorkerState), (state, event)
    events = {e for _, e in TRANSITIONS}
    for state in WorkerState:
        for event in events:
            s = sched([], expect=(1,))
            w = s.workers()[1]
            s._count[w.state] -= 1
            w.state = state
            s._count[state] += 1
            if (state, event) in TRANSITIONS:
                s._transition(w, event)
                assert w.state is TRANSITIONS[(state, event)]
            else:
                with pytest.raises(ProtocolError):
                    s._transition(w, event)
                assert w.state is state


def test_grace_period_ends_in_tick_and_leaves_running_tasks_for_resume():
    s, _ = make(10, workers=(1, 2), prefetch=2)
    s.dispatch(0.0)
    s.drain(now=1.0, grace=5.0)
    assert not of(s.tick(5.9), Notice) and not s.finished
    out = s.tick(6.1)
    assert of(out, Notice) == [Notice("warning", "grace period over: 2 running task(s) left for a resume")]
    assert s.finished and s.n_done == 0
    assert s.dispatch(6.1) == [Stop(1), Stop(2)]


def test_workers_that_never_say_hello_are_named_after_the_patience():
    s = sched([(0, None)], expect=(1, 2, 3), hello_patience=10.0)
    s.worker_ready(2, 1.0)
    assert s.tick(9.0) == []
    (n,) = of(s.tick(10.5), Notice)
    assert n.level == "warning" and "2 worker(s) have not checked in" in n.text and "ranks 1, 3" in n.text
    assert of(s.tick(20.0), Notice) == []  # said once


def test_no_healthy_worker_left_fails_the_rest_after_the_patience():
    s, _ = make(3, workers=(1,), prefetch=1, timeout=5.0, retries=2)
    s.dispatch(0.0)
    assert of(s.tick(5.0), Expired)  # rank 1 stuck
    assert of(s.tick(9.0), Ended) == []
    out = s.tick(10.5)
    assert [n.level for n in of(out, Notice)] == ["error"]
    assert [e.tid for e in of(out, Ended)] == [0] and s.finished


def test_the_run_is_over_once_every_expected_worker_is_released():
    s = sched([(0, None)], expect=(1, 2, 3), prefetch=1)
    for r in (1, 2, 3):
        s.worker_ready(r, 0.0)
    s.dispatch(0.0)
    s.task_done(1, 0, 1, 1.0)
    assert [d.rank for d in of(s.dispatch(1.0), Stop)] == [1, 2, 3]
    assert s.finished and not s.over
    s.worker_stopped(1)
    s.worker_lost(2, 1.5)
    assert not s.over
    s.worker_stopped(3)
    assert s.over


def test_a_stuck_worker_does_not_hold_the_end_of_the_run():
    s = sched([(0, None)], expect=(1, 2), prefetch=1, timeout=5.0, retries=1)
    s.worker_ready(1, 0.0)
    s.worker_ready(2, 0.0)
    s.dispatch(0.0)  # 1 <- 0
    s.tick(5.0)  # stuck on 0
    s.dispatch(5.0)  # 2 <- 0
    s.task_done(2, 0, 2, 6.0)
    assert of(s.dispatch(6.0), Stop) == [Stop(2)]
    s.worker_stopped(2)
    assert s.over and s.stuck_workers() == {1: 0}


def test_counts_are_kept_in_one_place():
    s, _ = make(3, workers=(1,), prefetch=3)
    s.dispatch(0.0)
    s.task_done(1, 0, 1, 1.0)
    s.task_failed(1, 1, 1, "x", 1.0)
    s.give_up("gone")
    assert (s.n_done, s.n_failed) == (1, 2)


def test_every_worker_lost_halts_the_run_and_leaves_the_rest_for_a_resume():
    s, _ = make(10, workers=(1, 2), prefetch=2)
    s.dispatch(0.0)
    s.task_done(1, 0, 1, 0.5)
    assert s.worker_lost(1, 1.0) == [] and s.worker_lost(2, 1.0) == []
    out = s.tick(1.5)
    (h,) = of(out, Halt)
    assert "every worker is lost" in h.reason and s.finished and s.n_done == 1 and s.n_failed == 0


def test_a_stale_steps_late_output_keeps_the_newer_lease_on_the_same_worker():
    """Step output of an expired attempt arrives after the task went back to the same worker:
    it is dropped, and the newer lease stays in that worker's FIFO (it used to leave it, so that
    when the worker was then lost the task was never requeued and the run never ended)."""
    s, _ = make(1, workers=(1,), timeout=10.0, prefetch=1, retries=5)
    assert sent(s.dispatch(0.0)) == {1: [0]}
    assert Expired(1, 0, 1, True) in s.tick(10.5)
    assert not s.step_begin(1, 0, 1, 0, 11.0)  # attempt 1's late output: its lease is over
    s.discarded(1, 0, 11.0, 1)  # (the master drops it; the worker reported in)
    assert sent(s.dispatch(11.0)) == {1: [0]}  # attempt 2, on the same worker
    assert not s.step_begin(1, 0, 1, 1, 12.0)  # more of attempt 1's late output
    s.discarded(1, 0, 12.0, 1)
    assert queues(s)[1] == [0]
    s.worker_ready(2, 12.5)
    s.worker_lost(1, 13.0)
    assert sent(s.dispatch(13.0)) == {2: [0]}


# -- stopping early: --max-failures (scheduler.limits) --------------------------------------

from mpigather.scheduler import AUTO_FIRST, FailureLimit, StopEarly  # noqa: E402


@pytest.mark.parametrize("text, kind, value", [("auto", "auto", 0), ("none", "none", 0), ("NONE", "none", 0),
                                               ("0", "count", 0), ("10", "count", 10), (7, "count", 7),
                                               ("5%", "percent", 5), ("2.5 %", "percent", 2.5)])
def test_failure_limit_parses(text, kind, value):
    lim = FailureLimit.parse(text)
    assert (lim.kind, lim.value) == (kind, value)
    assert FailureLimit.parse(str(lim)) == lim


@pytest.mark.parametrize("bad", ["", "ten", "-1", -1, "0%", "100%", "150%", True, "5%%"])
def test_failure_limit_rejects_bad_values_naming_them(bad):
    with pytest.raises(ValueError, match="max failures"):
        FailureLimit.parse(bad)


def test_auto_stops_only_when_the_first_tasks_all_failed():
    auto = FailureLimit.parse("auto")
    assert auto.reached(0, AUTO_FIRST - 1) is None
    assert "none succeeded" in auto.reached(0, AUTO_FIRST)
    assert auto.reached(1, 10_000) is None  # one success: never stopped by the default
    assert FailureLimit.parse("none").reached(0, 10**9) is None


def test_count_allows_n_failures_and_stops_at_the_next():
    lim = FailureLimit.parse("3")
    assert lim.reached(100, 3) is None and "4 tasks failed" in lim.reached(100, 4)
    assert FailureLimit.parse("0").reached(0, 1) is not None


def test_percent_waits_for_a_sample_then_compares_the_rate():
    lim = FailureLimit.parse("5%")
    assert lim.reached(0, 1) is None  # 1 of 1 is 100%, but one task says little
    assert lim.reached(18, 1) is None  # 1 of 19: too few
    assert lim.reached(18, 2) is not None  # 2 of 20 = 10% > 5%
    assert lim.reached(19, 1) is None  # 1 of 20 = 5%: not more
    assert lim.reached(1, 2, total=30) is not None  # 2 of 30 total: more than 5% whatever comes
    one = FailureLimit.parse("1%")
    assert one.reached(90, 2) is None  # judged only from 100 tasks: one failure is then 1%
    assert one.reached(98, 2) is not None


def _fail_all(s, ranks, now):
    """Every worker reports its running task failed, until the scheduler stops sending."""
    out = []
    for _ in range(1000):
        progressed = False
        for r in ranks:
            q = queues(s)[r]
            if q:
                out += s.task_failed(r, q[0], 1, "TypeError: boom", now)
                progressed = True
        out += s.dispatch(now)
        if not progressed:
            break
    return out


def test_scheduler_stops_early_when_every_task_fails_and_drains():
    s, src = make(1000, workers=(1, 2), max_failures="auto", grace=30.0, prefetch=2)
    out = s.dispatch(0.0)
    out += _fail_all(s, (1, 2), 1.0)
    stops = of(out, StopEarly)
    assert len(stops) == 1 and "none succeeded" in stops[0].reason and not stops[0].fatal
    # the tasks running when it stopped (one per worker) still end, here failed too
    assert stops[0].failed == AUTO_FIRST and AUTO_FIRST <= s.n_failed <= AUTO_FIRST + 2 and s.draining
    assert s.n_done == 0 and src.pulled < 1000  # the rest was never read: left for a resume
    assert s.finished


def test_scheduler_without_a_limit_runs_every_task():
    s, _ = make(200, workers=(1, 2), max_failures="none")
    out = s.dispatch(0.0) + _fail_all(s, (1, 2), 1.0)
    assert not of(out, StopEarly) and s.n_failed == 200 and s.finished


def test_retried_attempts_do_not_count_until_the_task_ends_failed():
    s, _ = make(10, workers=(1,), max_failures="0", retries=2, prefetch=1)
    s.dispatch(0.0)
    assert s.task_failed(1, 0, 1, "e", 1.0) == []  # attempt 1 of 3: retried, not counted
    s.dispatch(1.0)
    assert s.task_failed(1, 0, 2, "e", 2.0) == []
    s.dispatch(2.0)
    out = s.task_failed(1, 0, 3, "e", 3.0)
    assert of(out, Ended) == [Ended(0, 3, 1, False, "e")] and len(of(out, StopEarly)) == 1


def test_limit_reached_while_tasks_run_lets_them_finish_and_loses_nothing():
    s, _ = make(100, workers=(1, 2, 3), max_failures="0", grace=10.0, prefetch=2)
    s.dispatch(0.0)
    running = {r: queues(s)[r][0] for r in (1, 2, 3)}
    out = s.task_failed(1, running[1], 1, "boom", 1.0)
    assert len(of(out, StopEarly)) == 1
    # each worker keeps only the task it may have started (worker 1 went on to its next one); the rest is revoked
    for r in of(out, Revoke):
        assert r.expect_ack
        s.revoked(r.rank, r.cuts, 1.2)  # none had started more than the master knew of
    q = queues(s)
    assert q[2] == [running[2]] and q[3] == [running[3]] and len(q[1]) == 1
    assert not of(s.dispatch(1.5), Sent)  # no new work
    assert of(s.task_done(2, running[2], 1, 2.0), Ended) == [Ended(running[2], 1, 2, True, None)]
    assert s.n_done == 1  # a running task that finishes in the grace period is done
    late = s.tick(20.0)  # the grace period is over: the others are left for a resume, not failed
    assert any(isinstance(d, Notice) and "2 running task(s) left for a resume" in d.text for d in late)
    assert s.n_failed == 1 and s.finished


def test_a_fatal_failure_stops_at_once_without_retries():
    s, _ = make(50, workers=(1, 2), retries=3, max_failures="none")
    s.dispatch(0.0)
    t = queues(s)[1][0]
    out = s.task_failed(1, t, 1, "TypeError: point() missing 1 required positional argument: 'x'", 1.0, fatal=True)
    assert of(out, Ended) == [Ended(t, 1, 1, False, "TypeError: point() missing 1 required positional argument: 'x'")]
    (stop,) = of(out, StopEarly)
    assert stop.fatal and s.draining


def test_failed_tasks_size_blocks_as_done_ones_do():
    """A run whose every task fails fast must not get blocks of one task (a round trip each)."""
    s = Scheduler(((i, None) for i in range(100_000)), prefetch=2, block_time=0.02, max_failures="none")
    s.worker_ready(1, 0.0)
    (send,) = of(s.dispatch(0.0), Send)
    b = send.blocks[0]
    assert len(b.tids) == 1  # nothing measured yet
    s.task_failed(1, b.bid, 0, b.tids[0], "TypeError: x", 0.001, duration=0.0001)
    later = [blk for d in of(s.dispatch(0.01), Send) for blk in d.blocks]
    assert later and max(len(blk.tids) for blk in later) > 10, [len(blk.tids) for blk in later]


def test_dispatch_at_the_end_of_a_run_does_not_pass_over_the_idle_workers():
    """10,000 workers and one task, running: the master dispatches after every message while a
    worker is hungry, and with nothing left to hand out that must not cost a look at each idle
    worker (a sort of them all per message took 3.8 ms at 10,000 workers)."""
    n = 10_000
    s, _src = make(1, workers=range(1, n + 1), prefetch=2)
    assert sum(len(v) for v in sent(s.dispatch(0.0)).values()) == 1
    s.dispatch(0.0)

    class Counting(dict):
        gets = 0

        def __getitem__(self, k):
            Counting.gets += 1
            return dict.__getitem__(self, k)

    s.s._workers = Counting(s.s._workers)
    for i in range(100):
        assert s.dispatch(1.0 + i) == []
    assert Counting.gets < 1000, Counting.gets


def test_steals_and_their_refills_at_the_end_of_a_run_do_not_pass_over_the_workers():
    """10,000 workers, two one-task blocks each, the source empty: half the workers go idle at
    once and ask the other half for their queued task. While the acknowledgements come back one
    at a time, each is one refill of one idle worker: no message may cost a look at every donor
    already asked, nor a pass over every hungry worker to put the idle ones first (both did, and
    made the end of a 10,000-worker run cost more per result than its middle)."""
    n = 10_000
    s = Scheduler(((i, None) for i in range(2 * n)), prefetch=2, total=2 * n)
    for r in range(1, n + 1):
        s.worker_ready(r, 0.0)
    assert sum(len(b.tids) for d in of(s.dispatch(0.0), Send) for b in d.blocks) == 2 * n
    for r in range(1, n // 2 + 1):  # half of them finish both their tasks
        w = s.workers()[r]
        while w.queue:
            b = w.queue[0]
            assert s.accept(r, b.bid, b.next, b.tids[b.next])
            s.rows_done(r, b.bid, b.next, 1, 1.0, 0.5)
    revokes = of(s.dispatch(1.0), Revoke)
    assert len(revokes) == n // 2  # one steal per idle worker, from the workers still holding two

    class Counting(dict):
        gets = 0

        def __getitem__(self, k):
            Counting.gets += 1
            return dict.__getitem__(self, k)

    s._workers = Counting(s._workers)
    for rv in revokes[:100]:
        assert s.dispatch(1.1) == []  # every donor is asked already
        s.revoked(rv.rank, rv.cuts, 1.2)
        (send,) = of(s.dispatch(1.2), Send)
        assert s._workers[send.rank].held == 1 and send.rank <= n // 2
    assert Counting.gets < 1000, Counting.gets


def test_regression_a_task_sent_again_never_gets_a_number_an_execution_had():
    """Hypothesis found it: 6 tasks, 4 workers (2 joining late), prefetch 1, 1 s leases. The
    lease of block (t4, t5) expires at rank 3 and t5 goes out as attempt 2 to rank 1, while rank 3,
    which has not seen the revoke yet, starts t5 under attempt 1. A steal takes t5 back from rank 1
    unstarted, and it goes out again as attempt 2. Only attempt 1 ever ran, so that is right: the
    model's check counted any start since the last send, whatever its number, and stopped here
    (kept as a strict xfail until it was understood). It now checks against the numbers that
    executions had."""
    run_cluster(1654, 6, 4, 1, 0, 1.0, [], 40, 0.0, 2, drain_at=None, tiny=None, known_total=False)
