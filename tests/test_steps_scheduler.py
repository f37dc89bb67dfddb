"""The scheduler's multi-step tasks, without MPI: random event orders with failures, hangs past
a step's lease, lost workers, kinds of workers and late messages.

Invariants checked after every event:
- a task's accepted steps finish strictly in order (0, 1, 2, ...), each by the live lease;
- no two workers hold the lease of one task (so never of one step) at the same time;
- once a step's input is stored, no earlier step of that task is accepted again;
- every task ends exactly once, and ends done with the last step of its chain unless it failed.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpigather.scheduler import Done, Ended, Expired, Notice, Revoke, Scheduler, Send, Stop
from mpigather.steps import StepCall


@dataclass
class Sim:
    """Workers run the steps they are sent, in FIFO order; ``chain[tid]`` lists each step's kind."""

    chain: dict[int, list[str | None]]
    kinds: dict[int, set[str]]
    affinity: bool
    rng: random.Random
    s: Scheduler = field(init=False)
    now: float = 0.0
    local: dict[int, deque] = field(default_factory=dict)  # rank -> [(lease id, index, tid, attempt, step)]
    running: dict[int, tuple | None] = field(default_factory=dict)
    outbox: dict[int, deque] = field(default_factory=dict)
    hung: dict[int, bool] = field(default_factory=dict)
    lost: set[int] = field(default_factory=set)
    accepted: dict[int, list[int]] = field(default_factory=dict)  # tid -> steps accepted, in order
    stored: dict[int, int] = field(default_factory=dict)  # tid -> highest step whose input is stored
    pending_store: list[tuple[int, int]] = field(default_factory=list)
    ended: dict[int, Ended] = field(default_factory=dict)
    gave_up: bool = False  # every worker was stuck or lost for too long: the rest is never read

    def __post_init__(self) -> None:
        self.s = Scheduler([(t, {"t": t}) for t in self.chain], expect=self.kinds, prefetch=2, retries=2,
                           timeout=20.0, lost_patience=120.0, hello_patience=0.0, total=len(self.chain))
        if self.rng.random() < 0.5:
            self.s._observe(1e-4, 1)  # tiny tasks: blocks of many, each task with its own steps
        for r in self.kinds:
            self.local[r], self.running[r], self.outbox[r], self.hung[r] = deque(), None, deque(), False
            self.route(self.s.worker_ready(r, self.now, self.kinds[r]))
        self.route(self.s.dispatch(self.now))

    # -- the master ---------------------------------------------------------------------

    def route(self, decisions: list) -> None:
        for d in decisions:
            if isinstance(d, Send):
                for b in d.blocks:
                    for k, tid in enumerate(b.tids):
                        rec = b.rec(k)
                        step = rec.step if rec is not None else 0
                        need = self.chain[tid][step]
                        assert need is None or need in self.kinds[d.rank], f"step {step} of {tid} needs {need}"
                        if d.rank not in self.lost:
                            self.local[d.rank].append((b.bid, k, tid, b.attempt, step))
            elif isinstance(d, Revoke):
                cuts = dict(d.cuts)
                keep, dropped = deque(), {}
                for x in self.local[d.rank]:
                    if x[0] in cuts and x[1] >= cuts[x[0]]:
                        dropped.setdefault(x[0], x[1])
                    else:
                        keep.append(x)
                self.local[d.rank] = keep
                if d.expect_ack and d.rank not in self.lost:
                    self.outbox[d.rank].append(("revoked", [(bid, dropped.get(bid)) for bid in cuts]))
            elif isinstance(d, Done):
                for tid in d.tids:
                    assert tid not in self.ended, f"task {tid} ended twice"
                    self.ended[tid] = Ended(tid, d.attempt, d.rank, True, None)
            elif isinstance(d, Ended):
                assert d.tid not in self.ended, f"task {d.tid} ended twice"
                self.ended[d.tid] = d
            elif isinstance(d, Notice):
                self.gave_up = self.gave_up or "no healthy worker" in d.text
            elif not isinstance(d, (Stop, Expired)):
                raise AssertionError(d)

    def deliver(self, r: int) -> None:
        msg = self.outbox[r].popleft()
        s = self.s
        if msg[0] == "step":
            _, bid, i, tid, att, n, go_on = msg
            if s.step_begin(r, bid, i, tid, n, self.now):
                self.accept(tid, n)
                need = self.chain[tid][n + 1]
                self.route(s.step_done(r, bid, i, n, n + 1, need, None, go_on, self.now))
                self.pending_store.append((tid, n + 1))
            else:
                s.discarded(r, self.now)  # as the master does: the late worker reported in
        elif msg[0] == "done":
            _, bid, i, tid, att, n = msg
            ok = s.step_begin(r, bid, i, tid, n, self.now) if n else s.accept(r, bid, i, tid)
            if ok:
                self.accept(tid, n)
                self.route(s.task_done(r, bid, i, tid, self.now, None, att))
            else:
                s.discarded(r, self.now)
        elif msg[0] == "failed":
            _, bid, i, tid, att, n = msg
            self.route(s.task_failed(r, bid, i, tid, f"step {n} failed", self.now, att))
        elif msg[0] == "revoked":
            self.route(s.revoked(r, msg[1], self.now))
        self.route(s.dispatch(self.now))

    def accept(self, tid: int, n: int) -> None:
        seen = self.accepted.setdefault(tid, [])
        assert n >= self.stored.get(tid, 0), \
            f"task {tid}: step {n} accepted after step {self.stored[tid]}'s input was stored"
        if seen and n != seen[-1] + 1:
            # a re-run is allowed only from a stored input (or from the start): never a skip forward
            assert n <= seen[-1], f"task {tid}: step {n} accepted right after step {seen[-1]}"
        seen.append(n)

    def store(self) -> None:
        tid, n = self.pending_store.pop(self.rng.randrange(len(self.pending_store)))
        if self.s.task(tid) is not None:
            self.stored[tid] = max(self.stored.get(tid, 0), n)
            self.route(self.s.step_stored(tid, StepCall(n, "m:f", self.chain[tid][n])))
            self.route(self.s.dispatch(self.now))

    # -- the workers --------------------------------------------------------------------

    def start(self, r: int) -> None:
        self.running[r] = self.local[r].popleft()

    def finish(self, r: int, outcome: str) -> None:
        bid, i, tid, att, n = self.running[r]
        if outcome == "fail":
            self.outbox[r].append(("failed", bid, i, tid, att, n))
            self.running[r] = None
        elif n == len(self.chain[tid]) - 1:
            self.outbox[r].append(("done", bid, i, tid, att, n))
            self.running[r] = None
        else:
            need = self.chain[tid][n + 1]
            go_on = self.affinity and (need is None or need in self.kinds[r])
            self.outbox[r].append(("step", bid, i, tid, att, n, go_on))
            self.running[r] = (bid, i, tid, att, n + 1) if go_on else None

    def step(self, chaos: bool) -> bool:
        acts = []
        for r in self.kinds:
            if r in self.lost:
                continue
            if self.running[r] is None and self.local[r]:
                acts.append(("start", r))
            if self.running[r] is not None and not self.hung[r]:
                acts.append(("finish", r))
            if self.outbox[r]:
                acts.append(("deliver", r))
        if self.pending_store:
            acts.append(("store",))
        if chaos and (not acts or self.rng.random() < 0.15):  # now and then: time passes, a fault happens
            acts = [self.rng.choices([("tick",), ("hang",), ("unhang",), ("lose",)], [5, 1, 3, 0.3])[0]]
        if not acts:
            return False
        a = self.rng.choice(acts)
        if a[0] == "start":
            self.start(a[1])
        elif a[0] == "finish":
            self.finish(a[1], "fail" if chaos and self.rng.random() < 0.1 else "ok")
        elif a[0] == "deliver":
            self.deliver(a[1])
        elif a[0] == "store":
            self.store()
        elif a[0] == "tick":
            self.now += self.rng.choice([0.5, 3.0, 12.0])
            self.route(self.s.tick(self.now))
            self.route(self.s.dispatch(self.now))
        elif a[0] == "hang":
            r = self.rng.choice(list(self.kinds))
            if r not in self.lost and self.running[r] is not None and len(self.kinds) - len(self.lost) > 1:
                self.hung[r] = True
        elif a[0] == "unhang":  # the hang ends: the step's late output comes in and is dropped
            r = self.rng.choice(list(self.kinds))
            self.hung[r] = False
        elif a[0] == "lose":
            r = self.rng.choice(list(self.kinds))
            alive = [x for x in self.kinds if x not in self.lost]
            if r not in self.lost and len(alive) > len(self.kinds) // 2 and r != min(alive):
                self.lost.add(r)
                self.local[r].clear()
                self.outbox[r].clear()
                self.running[r] = None
                self.route(self.s.worker_lost(r, self.now))
                self.route(self.s.dispatch(self.now))
        self.check()
        return True

    def check(self) -> None:
        holders: dict[int, int] = {}
        for r, w in self.s.workers().items():
            for tid in (t for b in w.queue for t in b.tids[b.next:]):
                assert tid not in holders, f"task {tid} leased to workers {holders[tid]} and {r}"
                holders[tid] = r

    def settle(self) -> None:
        for r in self.kinds:
            self.hung[r] = False  # a hang ends one day; its late messages are then dropped
        for _ in range(100000):
            if not self.step(chaos=False):
                break
            if self.s.finished and not self.pending_store and all(not o for o in self.outbox.values()):
                break
        for _ in range(20):  # let leases of stuck workers run out and the last steps go through
            self.now += 30.0
            self.route(self.s.tick(self.now))
            self.route(self.s.dispatch(self.now))
            while self.step(chaos=False):
                pass


def run_sim(seed: int, n_tasks: int, n_workers: int, affinity: bool, chaos_steps: int) -> Sim:
    rng = random.Random(seed)
    kinds = {r: ({"gpu"} if r % 2 == 0 else set()) for r in range(1, n_workers + 1)}
    if not any(kinds.values()):
        kinds[1] = {"gpu"}
    chain = {t: [None] + [rng.choice([None, None, "gpu"]) for _ in range(rng.randint(0, 3))]
             for t in range(n_tasks)}
    sim = Sim(chain, kinds, affinity, rng)
    for _ in range(chaos_steps):
        sim.step(chaos=True)
    sim.settle()
    if not sim.gave_up:
        assert set(sim.ended) == set(chain), f"tasks never ended: {sorted(set(chain) - set(sim.ended))}"
    for tid, e in sim.ended.items():
        if e.ok:
            assert sim.accepted[tid][-1] == len(chain[tid]) - 1, (tid, sim.accepted[tid], chain[tid])
    return sim


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n_tasks=st.integers(1, 30), n_workers=st.integers(1, 5),
       affinity=st.booleans(), chaos_steps=st.integers(0, 300))
def test_random_multi_step_runs_keep_order_and_one_lease_per_step(seed, n_tasks, n_workers, affinity, chaos_steps):
    run_sim(seed, n_tasks, n_workers, affinity, chaos_steps)


def test_thousands_of_multi_step_tasks_with_crashes_and_hangs():
    for seed in range(6):
        sim = run_sim(seed, 1000, 6, affinity=seed % 2 == 0, chaos_steps=3000)
        assert len(sim.ended) == 1000
