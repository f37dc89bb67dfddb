"""Unit and property tests of the pure scheduling state machine (no MPI, no sleeping).

Time is a float passed in by the test. A simulated cluster (``Cluster``) plays the part of
the master's message loop and of the workers (local FIFO, revokes, late results, losses)
to drive the scheduler through random event orders.
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


def make(n_tasks=10, workers=(1, 2), now=0.0, payload=None, **kw):
    src = Source((i, payload) for i in range(n_tasks))
    s = Scheduler(src, **kw)
    for r in workers:
        s.worker_ready(r, now)
    return s, src


def of(decisions, cls):
    return [d for d in decisions if isinstance(d, cls)]


def sent(decisions):
    """rank -> list of task ids sent to it."""
    out: dict[int, list] = {}
    for d in of(decisions, Send):
        out.setdefault(d.rank, []).extend(t[0] for t in d.tasks)
    return out


def queues(s):
    return {r: list(w.queue) for r, w in s.workers().items()}


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
    assert all(att == 1 for d in of(out, Send) for _, att, _ in d.tasks)
    assert src.pulled == 9
    assert s.in_flight() == 9
    assert queues(s) == {1: [0, 1, 2], 2: [3, 4, 5], 3: [6, 7, 8]}
    # full workers get nothing more, and nothing more is read
    assert s.dispatch(0.1) == []
    assert src.pulled == 9


def test_send_carries_payloads():
    s = Scheduler([("a", {"x": 1}), ("b", [2])], prefetch=2)
    s.worker_ready(5, 0.0)
    (d,) = of(s.dispatch(0.0), Send)
    assert d == Send(5, [("a", 1, {"x": 1}), ("b", 1, [2])])


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


def test_duplicate_task_id_on_one_worker_raises():
    s = Scheduler([("a", 1), ("a", 2)], prefetch=2)
    s.worker_ready(1, 0.0)
    with pytest.raises(ProtocolError, match="twice"):
        s.dispatch(0.0)


def test_duplicate_task_id_across_workers_raises():
    s = Scheduler([("a", 1), ("b", 2), ("a", 3)], prefetch=1)
    for r in (1, 2, 3):
        s.worker_ready(r, 0.0)
    with pytest.raises(ProtocolError, match="twice"):
        s.dispatch(0.0)


def test_duplicate_of_a_requeued_task_raises():
    s = Scheduler([("b", 1), ("c", 2), ("b", 3)], prefetch=1, retries=1)
    s.worker_ready(1, 0.0)
    s.worker_ready(2, 0.0)
    s.dispatch(0.0)  # 1 <- b, 2 <- c
    assert s.task_failed(1, "b", 1, "boom", 1.0) == []  # b waits for a retry, tried by rank 1
    with pytest.raises(ProtocolError, match="twice"):
        s.dispatch(1.0)  # rank 1 leaves b to rank 2 and reads the second "b"


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
        (d,) = of(s.dispatch(float(attempt)), Send)
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
    assert of(s.dispatch(1.0), Send)[0].tasks == [(0, 2, None)]
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
    assert of(out, Send) == [Send(2, [(0, 2, None)])]


def test_retry_on_the_same_worker_when_it_is_the_only_healthy_one():
    s, _ = make(10, workers=(1, 2), retries=1, prefetch=1, timeout=5.0)
    s.dispatch(0.0)  # 1 <- 0, 2 <- 1
    s.task_done(1, 0, 1, 4.0)
    s.dispatch(4.0)  # 1 <- 2
    assert of(s.tick(5.0), Expired) == [Expired(2, 1, 1, True)]  # rank 2 is suspect now
    assert s.task_failed(1, 2, 1, "boom", 6.0) == []
    out = s.dispatch(6.0)
    # rank 1 is the only healthy worker; the requeued tasks come first, in order
    assert of(out, Send) == [Send(1, [(1, 2, None)])]
    s.task_done(1, 1, 2, 7.0)
    assert of(s.dispatch(7.0), Send) == [Send(1, [(2, 2, None)])]


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
    assert of(out, Send) == [Send(2, [(0, 2, None), (1, 2, None), (2, 2, None)])]
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
    s = Scheduler(items, prefetch=1, timeout=10.0, timeout_of=lambda p: p.get("timeout"))
    for r in (1, 2, 3):
        s.worker_ready(r, 0.0)
    s.dispatch(0.0)
    assert of(s.tick(2.0), Expired) == [Expired(1, "short", 1, True)]
    assert s.tick(9.9) == []
    assert of(s.tick(10.0), Expired) == [Expired(2, "default", 1, True)]
    assert s.tick(49.9) == []
    assert of(s.tick(50.0), Expired) == [Expired(3, "long", 1, True)]


def test_per_task_timeout_without_a_default():
    s = Scheduler([("a", 3.0), ("b", None)], prefetch=1, timeout_of=lambda p: p)
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
    s = Scheduler([(0, None)], prefetch=1, timeout=10.0, retries=retries)
    allowed = max(retries, 1)
    now = 0.0
    for n in range(1, allowed + 2):
        s.worker_ready(n, now)  # a fresh worker each time: the earlier ones are suspect
        assert of(s.dispatch(now), Send) == [Send(n, [(0, n, None)])]
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
    assert s.workers()[1].streaming is None
    # the next head runs from 31.0
    assert s.tick(40.9) == []
    assert of(s.tick(41.0), Expired) == [Expired(1, 1, 1, True)]


def test_result_begin_of_an_ended_task_is_rejected():
    s, _ = make(10, workers=(1,), prefetch=2)
    s.dispatch(0.0)
    s.task_done(1, 0, 1, 1.0)
    assert s.result_begin(1, 0, 1, 2.0) is False
    assert s.workers()[1].streaming is None
    assert s.workers()[1].last_seen == 2.0


def test_two_open_results_from_one_worker_is_a_protocol_error():
    s, _ = make(10, workers=(1,), prefetch=2)
    s.dispatch(0.0)
    assert s.result_begin(1, 0, 1, 1.0)
    with pytest.raises(ProtocolError):
        s.result_begin(1, 1, 1, 1.0)


def test_failed_transfer_closes_the_stream():
    s, _ = make(10, workers=(1,), prefetch=2, retries=1)
    s.dispatch(0.0)
    assert s.result_begin(1, 0, 1, 1.0)
    assert s.task_failed(1, 0, 1, "checksum", 2.0) == []
    assert s.workers()[1].streaming is None
    assert s.result_begin(1, 1, 1, 3.0)


# -- late results ----------------------------------------------------------------------------


def _expire_rank1_then_resend_to_rank2(prefetch=1):
    """Task 0 expires on rank 1 and is sent again to rank 2. Returns the scheduler."""
    s, _ = make(100, workers=(1, 2), prefetch=prefetch, timeout=10.0)
    s.dispatch(0.0)
    w2 = list(s.workers()[2].queue)
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
    assert of(out, Send) == [Send(2, [(0, 2, None), (1, 2, None)])]


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
    assert of(s.dispatch(1.2), Send) == [Send(2, [(2, 2, None)])]


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
    s = Scheduler(growing_source(q, closed), prefetch=3)
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
    s = Scheduler(Source((i, None) for i in range(3)), expect=(1, 2, 3), prefetch=2)
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
    assert out == [Revoke(1, [1, 2], expect_ack=False), Revoke(2, [4, 5], expect_ack=False)]
    assert s.draining and not s.finished
    assert queues(s) == {1: [0], 2: [3]}
    assert s.in_flight() == 2
    assert s.dispatch(1.0) == []
    assert src.pulled == 6
    assert s.task_done(1, 0, 1, 2.0) == [Ended(0, 1, 1, True, None)]
    assert s.dispatch(2.0) == []
    assert s.task_done(2, 3, 1, 3.0) == [Ended(3, 1, 2, True, None)]
    assert s.finished
    assert s.dispatch(3.0) == [Stop(1), Stop(2)]
    assert src.pulled == 6 and (s.n_done, s.n_failed) == (2, 0)
    # results of revoked tasks that had started anyway are discarded
    assert s.task_done(1, 1, 1, 4.0) == []


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
    assert sorted(s.abandon_running()) == [0, 2]
    assert s.finished
    assert s.dispatch(1.0) == [Stop(1), Stop(2)]


# -- WAIT ------------------------------------------------------------------------------------


def test_wait_sentinel_means_nothing_now_without_ending_the_source():
    q, closed = deque(), [False]
    s = Scheduler(growing_source(q, closed), prefetch=2)
    s.worker_ready(1, 0.0)
    assert s.dispatch(0.0) == []
    assert not s.finished
    q.extend([("a", 1), ("b", 2), ("c", 3)])
    assert of(s.dispatch(1.0), Send) == [Send(1, [("a", 1, 1), ("b", 1, 2)])]
    s.task_done(1, "a", 1, 2.0)
    s.task_done(1, "b", 1, 2.0)
    assert of(s.dispatch(2.0), Send) == [Send(1, [("c", 1, 3)])]
    s.task_done(1, "c", 1, 3.0)
    assert s.dispatch(3.0) == [] and not s.finished  # still waiting for more
    closed[0] = True
    assert s.dispatch(4.0) == [Stop(1)]
    assert s.finished


# -- target_outstanding -------------------------------------------------------------------------


def test_target_grows_for_tiny_tasks():
    s, _ = make(1000, workers=(1,), prefetch=2, batch_window=0.02)
    assert s.target_outstanding() == 2
    s.dispatch(0.0)
    s.task_done(1, 0, 1, 0.1, duration=0.001)
    assert s.target_outstanding() == math.ceil(0.02 / 0.001) >= 20
    out = s.dispatch(0.1)
    (d,) = of(out, Send)
    assert len(queues(s)[1]) == s.target_outstanding()
    assert len(d.tasks) == s.target_outstanding() - 1


def test_target_is_capped_by_max_batch_and_never_below_prefetch():
    s, _ = make(10, workers=(1,), prefetch=3, batch_window=0.02, max_batch=8)
    s.dispatch(0.0)
    s.task_done(1, 0, 1, 0.1, duration=1e-6)
    assert s.target_outstanding() == 8
    s2, _ = make(10, workers=(1,), prefetch=5, batch_window=0.02, max_batch=2)
    s2.dispatch(0.0)
    s2.task_done(1, 0, 1, 0.1, duration=1e-6)
    assert s2.target_outstanding() == 5
    s3, _ = make(10, workers=(1,), prefetch=3)
    s3.dispatch(0.0)
    s3.task_done(1, 0, 1, 0.1, duration=10.0)
    assert s3.target_outstanding() == 3


def test_zero_negative_and_missing_durations_do_not_grow_the_target():
    s, _ = make(10, workers=(1,), prefetch=2)
    s.dispatch(0.0)
    s.task_done(1, 0, 1, 0.1, duration=0.0)
    assert s.target_outstanding() == 2
    s.task_done(1, 1, 1, 0.1, duration=-1.0)
    s.dispatch(0.1)
    s.task_done(1, 2, 1, 0.1, duration=None)
    assert s.target_outstanding() == 2


@settings(max_examples=200, deadline=None)
@given(
    prefetch=st.integers(1, 16),
    batch_window=st.floats(0.0, 1.0),
    max_batch=st.integers(1, 64),
    # realistic durations: 0 or at least a nanosecond (subnormal ones have their own test)
    durations=st.lists(st.one_of(st.none(), st.floats(-1.0, 100.0).filter(lambda x: x == 0 or abs(x) >= 1e-9)),
                       max_size=30),
)
def test_target_outstanding_stays_within_bounds(prefetch, batch_window, max_batch, durations):
    s = Scheduler(Source((i, None) for i in range(len(durations))), prefetch=prefetch,
                  batch_window=batch_window, max_batch=max_batch)
    s.worker_ready(1, 0.0)
    for i, dur in enumerate(durations):
        s.dispatch(float(i))
        tid = next(iter(s.workers()[1].queue))
        s.task_done(1, tid, 1, float(i), duration=dur)
        t = s.target_outstanding()
        assert prefetch <= t <= max(max_batch, prefetch)


# -- regressions: bugs found by these tests, fixed in scheduler.py ----------------------------


def test_revoke_of_the_head_arms_the_next_task():
    s, _ = make(5, workers=(1, 2, 3), prefetch=2, timeout=10.0)
    assert sent(s.dispatch(0.0)) == {1: [0, 1], 2: [2, 3], 3: [4]}
    s.task_done(3, 4, 1, 1.0)
    assert s.dispatch(1.0) == [Revoke(1, [1], expect_ack=True)]  # rank 3 is idle: steal task 1
    s.task_done(1, 0, 1, 5.0)  # task 1 is rank 1's head now
    s.tick(10.0)  # rank 2's lease ran out: tasks 2 and 3 requeued
    s.dispatch(10.0)  # rank 1 (one task held) gets task 2 behind task 1
    assert queues(s)[1] == [1, 2]
    s.revoked(1, [1], 11.0)  # rank 1 had dropped task 1 unstarted: task 2 runs from now
    assert queues(s)[1] == [2]
    out = s.tick(21.0)
    # task 2 is armed again from 11.0; its second expiry is final (retries=0 allows one)
    assert [d for d in of(out, Expired) if d.rank == 1] == [Expired(1, 2, 2, False)]


def test_subnormal_duration_does_not_crash_target_outstanding():
    s, _ = make(10, workers=(1,), prefetch=1, batch_window=1.0, max_batch=4)
    s.dispatch(0.0)
    s.task_done(1, 0, 1, 0.1, duration=5e-324)
    assert s.target_outstanding() == 4


def test_failure_after_expiry_does_not_queue_the_task_twice():
    s = Scheduler([("A", None)], prefetch=2, retries=2, timeout=10.0)
    s.worker_ready(1, 0.0)
    s.dispatch(0.0)
    s.tick(10.0)  # A requeued, rank 1 suspect
    s.task_failed(1, "A", 1, "boom", 11.0)  # rank 1 reports in with A's failure
    out = s.dispatch(11.0)
    tids = [t[0] for d in of(out, Send) for t in d.tasks]
    assert tids == ["A"]  # before the fix: ["A", "A"], both with attempt 3


def test_failure_after_expiry_does_not_break_worker_lost():
    s = Scheduler([("A", 10.0), ("B", None), ("C", None)], prefetch=1, retries=2,
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
    assert of(s.dispatch(10.0), Send) == []  # before the fix: Send(2, [(0, 2, None)])


def test_dispatch_after_abandon_running_does_not_crash():
    s, _ = make(2, workers=(1, 2), prefetch=1, timeout=10.0)
    s.dispatch(0.0)  # 1 <- 0, 2 <- 1
    s.drain()
    s.tick(10.0)  # both expire: both requeued, both workers suspect
    s.abandon_running()
    assert s.finished
    s.task_done(2, 1, 1, 11.0)  # rank 2 reports in (its result is discarded)
    out = s.dispatch(11.0)  # before the fix: KeyError: 1
    assert of(out, Send) == []


def test_rejected_late_result_clears_suspicion():
    s, _ = make(2, workers=(1, 2), prefetch=1, timeout=10.0)
    s.dispatch(0.0)  # 1 <- 0, 2 <- 1
    s.task_done(2, 1, 1, 5.0)
    s.tick(10.0)  # task 0 expires on rank 1
    s.dispatch(10.0)  # 2 <- 0
    s.task_done(2, 0, 2, 11.0)
    # rank 1 finally sends its result of task 0; the master asks result_begin, which rejects
    # it, and (as master.py does for a rejected result) does not call task_done
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
class SimWorker:
    rank: int
    inbox: deque = field(default_factory=deque)  # master -> worker, in transit (FIFO)
    local: deque = field(default_factory=deque)  # the worker's own prefetch FIFO
    running: tuple | None = None  # (tid, attempt)
    outbox: deque = field(default_factory=deque)  # worker -> master, in transit (FIFO)
    joined: bool = False
    lost: bool = False
    got_stop: bool = False
    said_bye: bool = False


class Cluster:
    """The master loop and the workers around a Scheduler, one event at a time.

    Workers behave like ``worker.py``: they read messages at any time (a helper thread does,
    also while a task runs), run their local FIFO in order, drop revoked tasks that have not
    started, flush results before a REVOKED acknowledgement, and say goodbye once their queue is
    empty after a stop. Messages between a worker and the master keep their order. Worker 1 is
    never lost, so that the run can always finish.

    The bugs these runs once found are pinned by the regression tests above.
    """

    def __init__(self, n_tasks: int, n_workers: int, *, prefetch: int, retries: int, timeout: float | None,
                 timeouts: list[float | None], batch_window: float = 0.02, max_batch: int = 16,
                 late_joiners: int = 0) -> None:
        self.tids = [f"t{i}" for i in range(n_tasks)]
        self.source = Source((tid, {"timeout": timeouts[i % len(timeouts)] if timeouts else None})
                             for i, tid in enumerate(self.tids))
        self.retries = retries
        self.default_timeout = timeout
        self.stream_tick: dict[int, float] = {}  # rank -> last tick that saw a transfer from it
        self.payloads = {tid: p for tid, p in self.source.items}
        self.s = Scheduler(self.source, expect=range(1, n_workers + 1), prefetch=prefetch, retries=retries,
                           timeout=timeout, timeout_of=lambda p: p["timeout"], batch_window=batch_window,
                           max_batch=max_batch)
        self.now = 0.0
        self.w = {r: SimWorker(r) for r in range(1, n_workers + 1)}
        self.protected = 1  # never lost, so that the run can always finish
        self.ended: dict[Any, Ended] = {}
        self.last_attempt: dict[Any, int] = {}
        self.troubled: set[Any] = set()  # tasks that failed, expired or lost a holder
        self.errors: dict[Any, set[str]] = {}
        self.stops: Counter = Counter()
        self.drained = False
        self.pulled_at_drain: int | None = None
        self.sent_after_drain: set[Any] = set()
        self.dispatched_before_drain: set[Any] = set()
        self.delivered_done: list[tuple[int, Any, int]] = []
        self.steps = 0
        self.notices: list[Notice] = []
        for r in range(1, n_workers + 1 - late_joiners):
            self.join(r)

    # -- the master side ------------------------------------------------------------------

    def route(self, decisions: list) -> None:
        s = self.s
        for d in decisions:
            if isinstance(d, Send):
                w = self.w[d.rank]
                assert not w.lost and s.workers()[d.rank].state == "ok", d
                assert self.stops[d.rank] == 0, f"task sent after Stop: {d}"
                tids = [t[0] for t in d.tasks]
                assert len(set(tids)) == len(tids), f"task twice in one Send: {d}"
                for tid, attempt, payload in d.tasks:
                    assert payload == self.payloads[tid]
                    assert tid not in self.ended, f"ended task sent again: {d}"
                    assert attempt > self.last_attempt.get(tid, 0), f"attempt number not increasing: {d}"
                    self.last_attempt[tid] = attempt
                    if self.drained:
                        self.sent_after_drain.add(tid)
                    else:
                        self.dispatched_before_drain.add(tid)
                w.inbox.append(d)
            elif isinstance(d, (Revoke, Stop)):
                if isinstance(d, Stop):
                    self.stops[d.rank] += 1
                    assert self.stops[d.rank] == 1, f"second Stop to {d.rank}"
                    assert s.finished and not self.w[d.rank].lost
                if not self.w[d.rank].lost:
                    self.w[d.rank].inbox.append(d)
            elif isinstance(d, Ended):
                assert d.tid not in self.ended, f"task ended twice: {d} and {self.ended[d.tid]}"
                self.ended[d.tid] = d
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

    def deliver(self, rank: int) -> None:
        """The master receives the next message from ``rank``."""
        s, w = self.s, self.w[rank]
        msg = w.outbox.popleft()
        kind = msg[0]
        out: list = []
        if kind == "failed":
            _, tid, attempt, err = msg
            self.troubled.add(tid)
            self.errors.setdefault(tid, set()).add(err)
            n_failed = s.n_failed
            out = s.task_failed(rank, tid, attempt, err, self.now)
            assert s.n_failed - n_failed == len(of(out, Ended))
        if kind == "begin":
            _, tid, attempt, dur = msg
            if s.result_begin(rank, tid, attempt, self.now):
                w.outbox.appendleft(("end", tid, attempt, dur))  # the chunks follow
            else:
                # a rejected late result; the scheduler's contract is that task_done discards it
                # (the master-side variant is test_rejected_late_result_clears_suspicion)
                kind = "end"
        if kind in ("done", "end"):
            _, tid, attempt, dur = msg
            was_ended = tid in self.ended
            n_done = s.n_done
            out = s.task_done(rank, tid, attempt, self.now, dur)
            if was_ended:
                assert out == [] and s.n_done == n_done, "late result after the end was not discarded"
            elif self.drained and not out:
                assert s.n_done == n_done  # a task that drain() forgot, not done: left for --resume
            else:
                assert s.n_done == n_done + 1 and out[0] == Ended(tid, attempt, rank, True, None)
            self.delivered_done.append((rank, tid, attempt))
        elif kind == "revoked":
            s.revoked(rank, msg[1], self.now)
        elif kind == "bye":
            s.worker_stopped(rank)
        self.after_event(out)

    def deliver_duplicate(self, i: int) -> None:
        """A result delivered a second time, for a task that has ended."""
        rank, tid, attempt = self.delivered_done[i % len(self.delivered_done)]
        if self.w[rank].lost or self.w[rank].said_bye or tid not in self.ended:
            return  # (nothing comes from a worker after its goodbye)
        n_done = self.s.n_done
        assert self.s.task_done(rank, tid, attempt, self.now, 0.01) == []
        assert self.s.n_done == n_done
        self.after_event([])

    def lease_of(self, tid: Any) -> float | None:
        t = self.payloads[tid]["timeout"]
        return t if t is not None else self.default_timeout

    def advance(self, dt: float) -> None:
        """Time passes; the master ticks. Checks which leases expired and which did not."""
        s = self.s
        before = {r: (next(iter(w.queue)), w.head_since, w.streaming) for r, w in s.workers().items()
                  if w.state == "ok" and w.queue}
        self.now += dt
        for r, w in s.workers().items():
            if w.streaming is not None:
                self.stream_tick[r] = self.now
        out = s.tick(self.now)
        for e in of(out, Expired):
            # only the head of a worker's FIFO expires, timed from when it started running
            head, since, streaming = before[e.rank]
            assert e.tid == head and streaming is None, (e, before[e.rank])
            assert self.now >= since + self.lease_of(head), (e, since, self.now)
        for r, w in s.workers().items():
            if w.state == "ok" and w.queue and w.streaming is None:
                head = next(iter(w.queue))
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
        held = list(self.s.workers()[rank].queue)
        if held:
            self.troubled.add(held[0])
        w.lost = True
        w.inbox.clear(), w.outbox.clear(), w.local.clear()
        w.running = None
        self.after_event(self.s.worker_lost(rank, self.now))

    def drain(self) -> None:
        if self.drained:
            return
        self.drained = True
        self.pulled_at_drain = self.source.pulled
        self.after_event(self.s.drain())

    # -- the worker side ------------------------------------------------------------------

    def recv(self, rank: int) -> None:
        """The worker, between two tasks, handles the next message that reached it."""
        w = self.w[rank]
        d = w.inbox.popleft()
        if isinstance(d, Send):
            w.local.extend((tid, att) for tid, att, _ in d.tasks)
        elif isinstance(d, Revoke):
            drop = set(d.tids)
            dropped = [t for t, _ in w.local if t in drop]
            w.local = deque(x for x in w.local if x[0] not in drop)
            if d.expect_ack:
                w.outbox.append(("revoked", dropped))
        elif isinstance(d, Stop):
            w.got_stop = True

    def start(self, rank: int) -> None:
        w = self.w[rank]
        w.running = w.local.popleft()

    def finish(self, rank: int, outcome: str, dur: float = 0.01) -> None:
        w = self.w[rank]
        tid, attempt = w.running
        w.running = None
        if outcome == "fail":
            w.outbox.append(("failed", tid, attempt, f"error {tid} attempt {attempt} on {rank}"))
        elif outcome == "stream":
            w.outbox.append(("begin", tid, attempt, dur))
        else:
            w.outbox.append(("done", tid, attempt, dur))

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
            if w.outbox:
                acts.append(("deliver", r))
            if w.got_stop and not w.said_bye and w.running is None and not w.local and not w.inbox:
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
            outcome = "fail" if chaos and x < p_fail else ("stream" if x > 0.7 else "done")
            self.finish(a[1], outcome, rng.choice([0.0005, 0.001, 0.05, 1.0]))
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

    def settle(self, rng: random.Random, max_steps: int = 20000) -> None:
        """No more failures, losses or passing time: let every message and task through."""
        for _ in range(max_steps):
            if self.step(rng, chaos=False, p_fail=0.0, timeout=1.0):
                continue
            return
        raise AssertionError(f"the cluster did not settle in {max_steps} steps")

    # -- checks ---------------------------------------------------------------------------

    def check(self) -> None:
        s = self.s
        ws = s.workers()
        seen: set = set()
        held = 0
        for r, wr in ws.items():
            q = list(wr.queue)
            held += len(q)
            if wr.state != "ok":
                assert not q, f"worker {r} in state {wr.state} holds {q}"
            for tid in q:
                assert tid not in seen, f"task {tid} leased to two workers"
                assert tid not in self.ended, f"ended task {tid} still held by worker {r}"
                seen.add(tid)
        assert s.in_flight() == held
        ok = sum(1 for e in self.ended.values() if e.ok)
        assert (s.n_done, s.n_failed) == (ok, len(self.ended) - ok)
        assert s.target_outstanding() >= s.prefetch
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
        for tid, e in self.ended.items():
            if not e.ok and gave_up and "no healthy worker" in (e.error or ""):
                continue  # every worker was stuck or lost for longer than the patience
            if not e.ok:
                assert tid in self.troubled, f"{tid} failed but never failed, expired or lost its worker"
                assert e.error in self.errors.get(tid, set()) or "timed out" in e.error or "lost" in e.error
        for r, w in self.w.items():
            st_ = s.workers().get(r)
            if w.lost or st_ is None:
                continue
            assert st_.state != "suspect", f"worker {r} is still suspect at the end (stuck in {st_.stuck!r})"
            assert st_.state == "stopped" and self.stops[r] == 1 and w.got_stop, (r, st_.state)
            assert not w.local and w.running is None
        assert s.over, "every worker is stopped, lost or stuck, yet the run is not over"


def run_cluster(seed: int, n_tasks: int, n_workers: int, prefetch: int, retries: int, timeout: float,
                per_task: list, chaos_steps: int, p_fail: float, late_joiners: int, drain_at: int | None):
    rng = random.Random(seed)
    c = Cluster(n_tasks, n_workers, prefetch=prefetch, retries=retries, timeout=timeout, timeouts=per_task,
                late_joiners=late_joiners)
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
    n_tasks=st.integers(0, 40),
    n_workers=st.integers(1, 5),
    prefetch=st.integers(1, 4),
    retries=st.integers(0, 3),
    timeout=st.sampled_from([1.0, 5.0, 20.0]),
    per_task=st.lists(st.sampled_from([None, 0.5, 3.0, 50.0]), max_size=3),
    chaos_steps=st.integers(0, 400),
    p_fail=st.sampled_from([0.0, 0.1, 0.3, 0.6]),
    late_joiners=st.integers(0, 2),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**cluster_params)
def test_random_cluster_every_task_ends_exactly_once(seed, n_tasks, n_workers, prefetch, retries, timeout,
                                                      per_task, chaos_steps, p_fail, late_joiners):
    late_joiners = min(late_joiners, n_workers - 1)
    run_cluster(seed, n_tasks, n_workers, prefetch, retries, timeout, per_task, chaos_steps, p_fail,
                late_joiners, drain_at=None)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**cluster_params, drain_frac=st.floats(0.0, 1.0))
def test_random_cluster_with_drain(seed, n_tasks, n_workers, prefetch, retries, timeout, per_task,
                                   chaos_steps, p_fail, late_joiners, drain_frac):
    late_joiners = min(late_joiners, n_workers - 1)
    c = run_cluster(seed, n_tasks, n_workers, prefetch, retries, timeout, per_task, chaos_steps, p_fail,
                    late_joiners, drain_at=int(drain_frac * chaos_steps))
    assert c.s.draining and c.drained
    assert set(c.ended) <= c.dispatched_before_drain


def test_random_cluster_smoke_many_seeds():
    """A quick deterministic sweep, so that a plain run covers many orders even without hypothesis."""
    for seed in range(40):
        rng = random.Random(seed)
        run_cluster(seed, n_tasks=rng.randint(0, 30), n_workers=rng.randint(1, 4), prefetch=rng.randint(1, 3),
                    retries=rng.randint(0, 2), timeout=5.0, per_task=[None, 2.0], chaos_steps=300, p_fail=0.2,
                    late_joiners=0, drain_at=None)


# -- stateful test: hypothesis picks every event ------------------------------------------------


class SchedulerMachine(RuleBasedStateMachine):
    """Hypothesis chooses each event; the teardown lets the cluster settle and checks the end."""

    @initialize(
        n_tasks=st.integers(0, 12),
        n_workers=st.integers(1, 4),
        prefetch=st.integers(1, 3),
        retries=st.integers(0, 2),
        timeout=st.sampled_from([2.0, 10.0]),
        per_task=st.lists(st.sampled_from([None, 1.0, 30.0]), max_size=2),
    )
    def setup(self, n_tasks, n_workers, prefetch, retries, timeout, per_task):
        self.c = Cluster(n_tasks, n_workers, prefetch=prefetch, retries=retries, timeout=timeout,
                         timeouts=per_task)
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


SchedulerMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None,
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
            s = Scheduler([], expect=(1,))
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
    s = Scheduler([(0, None)], expect=(1, 2, 3), hello_patience=10.0)
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
    s = Scheduler([(0, None)], expect=(1, 2, 3), prefetch=1)
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
    s = Scheduler([(0, None)], expect=(1, 2), prefetch=1, timeout=5.0, retries=1)
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
