"""What was made quick must behave as before: ``mpigather.tuples.NamedTuple`` as
``typing.NamedTuple``, the hand-written decisions as frozen dataclasses, and the worker's loop for
runs of tiny row results (``Worker._run_rows``) as the general way, task for task. No MPI."""

from __future__ import annotations

import copy
import pickle
import time
from collections import deque
from typing import Any

import pytest

import mpigather.messages as M
from mpigather.config import make_options
from mpigather.scheduler.decisions import Ended, Revoke, Send, Stop
from mpigather.scheduler.types import Block, TaskRec
from mpigather.tuples import NamedTuple
from mpigather.worker import Worker, WorkerInfo


class Point(NamedTuple):
    """A record with a default."""

    x: int
    y: Any
    z: str = "z"

    def total(self) -> int:
        return self.x + len(self.z)


def test_named_tuples_are_built_like_typings():
    p = Point(1, [2])
    assert p == (1, [2], "z") and isinstance(p, tuple) and not hasattr(p, "__dict__")
    assert (p.x, p.y, p.z, p.total()) == (1, [2], "z", 2)
    assert Point(1, 2, "w") == Point(x=1, y=2, z="w") == Point(1, z="w", y=2)
    assert Point._fields == ("x", "y", "z") and Point.__match_args__ == Point._fields
    assert Point._field_defaults == {"z": "z"}
    assert repr(p) == "Point(x=1, y=[2], z='z')"
    assert p._replace(z="q") == Point(1, [2], "q") and p._asdict() == {"x": 1, "y": [2], "z": "z"}
    assert Point._make([4, 5, "6"]) == Point(4, 5, "6")
    for again in (pickle.loads(pickle.dumps(p, protocol=5)), copy.deepcopy(p), copy.copy(p)):
        assert again == p and type(again) is Point
    match p:
        case Point(x, y, z="z"):
            assert (x, y) == (1, [2])
        case _:
            raise AssertionError("no match")
    with pytest.raises(AttributeError):
        p.x = 3  # type: ignore[misc]


@pytest.mark.parametrize("args, kwargs, message", [
    ((), {}, "missing required argument: 'x'"),
    ((1,), {}, "missing required argument: 'y'"),
    ((1, 2, 3, 4), {}, "takes 3 positional arguments but 4 were given"),
    ((1, 2), {"x": 1}, "multiple values for argument 'x'"),
    ((1, 2), {"w": 1}, "unexpected keyword argument 'w'"),
])
def test_named_tuples_refuse_bad_arguments(args: tuple[Any, ...], kwargs: dict[str, Any], message: str):
    with pytest.raises(TypeError, match=message):
        Point(*args, **kwargs)
    with pytest.raises(ValueError, match="unexpected field names"):
        Point(1, 2)._replace(w=3)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="expected 3 arguments"):
        Point._make([1])


def test_named_tuple_definitions_are_checked():
    with pytest.raises(TypeError, match="follows one with a default"):
        class Bad(NamedTuple):
            a: int = 0
            b: int  # type: ignore[misc]
    with pytest.raises(ValueError, match="underscore"):
        class Worse(NamedTuple):
            _a: int


def test_decisions_compare_hash_and_stay_as_frozen_dataclasses_did():
    assert Ended(1, 0, 2, True, None, seq=5) == Ended(1, 0, 2, True)  # seq is not compared
    assert hash(Ended(1, 0, 2, True, seq=5)) == hash(Ended(1, 0, 2, True))
    assert Stop(1) != Send(1, []) and Stop(1) == Stop(rank=1) and Stop(1) != Stop(2)
    assert Revoke(1, [(2, 0)], expect_ack=False) in [Stop(1), Revoke(1, [(2, 0)], False)]
    assert repr(Ended(1, 0, 2, False, "boom")) == "Ended(tid=1, attempt=0, rank=2, ok=False, error='boom', seq=-1)"
    match Revoke(3, [], True):
        case Revoke(rank, cuts, ack):
            assert (rank, cuts, ack) == (3, [], True)
    with pytest.raises(AttributeError):
        Stop(1).rank = 2  # type: ignore[misc]
    rec = TaskRec(1, "p", 0)
    assert "block=Block(tids=[1]" in repr(Block.single(rec).recs[0]) and "recs={0: ...}" in repr(rec)  # (a cycle)
    info = WorkerInfo(1, 3, "h", 7, ("gpu",))
    assert info == pickle.loads(pickle.dumps(info)) and hash(info) == hash(WorkerInfo(1, 3, "h", 7, ("gpu",)))
    with pytest.raises(AttributeError):
        info.rank = 2  # type: ignore[misc]


# -- the worker's loop for tiny row results ---------------------------------------------------


class _Inc:
    tag = M.TASK
    source = 0

    def __init__(self, obj: Any) -> None:
        self._obj = obj

    def obj(self) -> Any:
        return self._obj


class _Link:
    """A master that hands out its blocks at once, then says stop, and keeps what comes back."""

    rank, size, host, threads_ok, in_process = 1, 2, "here", True, True

    def __init__(self, blocks: list[list[Any]]) -> None:
        self.inbox = deque(_Inc(M.Tasks([M.Block(b + 1, 0, tids, list(tids), None)])) for b, tids in enumerate(blocks))
        self.inbox.append(_Inc(M.Stop()))
        self.got: list[Any] = []

    def poll(self, source: Any = None) -> Any:
        return self.inbox.popleft() if self.inbox else None

    def send(self, obj: Any, dest: int, tag: int) -> None:
        self.got.append(obj)

    def post(self, obj: Any, dest: int, tag: int, limit: Any = None) -> None:
        self.got.append(obj)

    def progress(self) -> int:
        return 0

    def flush(self, timeout: float = 30.0) -> bool:
        return True


def mixed(x: int) -> Any:
    """Rows of one shape, with a failure, a result of another shape and a big one among them."""
    if x % 97 == 13:
        raise ValueError(f"bad {x}")
    if x % 89 == 7:
        return {"other": x}
    if x % 501 == 3:
        return "x" * 5000  # not a row: stored whole
    if x % 250 == 0:
        time.sleep(0.012)  # longer than the flush age: the rows gathered so far go at once
    return x * 0.5


def reported(link: _Link, blocks: list[list[Any]]) -> dict[Any, Any]:
    """Every task the worker reported, by id: its value (rows and whole results) or its error."""
    out: dict[Any, Any] = {}

    def put(tid: Any, what: Any) -> None:
        assert tid not in out, f"task {tid} reported twice"
        out[tid] = what

    for msg in link.got:
        if type(msg) is not M.Results:
            continue
        for item in msg.items:
            if type(item) is M.Rows:
                assert item.durations.shape == (item.n,)
                for k in range(item.n):
                    put(blocks[item.bid - 1][item.start + k], tuple(c[k] for c in item.cols))
            elif type(item) is M.Item:
                put(item.tid, ("whole", item.header.kind))
            elif type(item) is M.Failed:
                put(item.tid, ("failed", item.text.strip().splitlines()[-1]))
    return out


@pytest.mark.parametrize("keep_params", [True, False])
def test_a_worker_reports_every_task_of_mixed_blocks_once(keep_params: bool):
    blocks = [list(range(s, s + 700)) for s in range(0, 2100, 700)]
    link = _Link(blocks)
    w = Worker(link, mixed, make_options(progress="off"), None, keep_params=keep_params)
    general: list[int] = []  # tasks whose value went the general way
    returned = w._returned

    def counted(blk: Any, i: int, *a: Any) -> Any:
        general.append(i)
        return returned(blk, i, *a)

    w._returned = counted  # type: ignore[method-assign,assignment]
    w.run()
    assert 0 < len(general) < 200, len(general)  # the others went through the loop for rows
    got = reported(link, blocks)
    assert sorted(got) == list(range(2100))
    for x, what in got.items():
        if x % 97 == 13:
            assert what == ("failed", f"ValueError: bad {x}"), (x, what)
        elif x % 89 == 7:
            assert what == (x,), (x, what)  # a row of its own shape ({"other": x})
        elif x % 501 == 3:
            assert what[0] == "whole", (x, what)
        else:
            assert what == (x * 0.5,), (x, what)
    assert w.stats["tasks"] == 2100 - sum(1 for x in range(2100) if x % 97 == 13)
    spans = w._spans.export(0.0)
    assert len(spans["spans"]) == 2100 and spans["failed"] == sum(1 for x in range(2100) if x % 97 == 13)
    assert sorted(str(s[0]) for s in spans["spans"]) == sorted(str(x) for x in range(2100))


def test_a_revoke_cuts_a_block_between_two_tiny_tasks():
    """The master takes back the rest of a block while the worker runs it: the tasks after the
    cut are neither run nor reported, those before it are, once."""
    blocks = [list(range(3000))]
    link = _Link(blocks)
    w = Worker(link, lambda x: x + 1, make_options(progress="off"), None)
    answers: list[Any] = []

    def f(x: int) -> int:
        if x == 1000:
            answers.append(w._revoke([(1, 1500)]))
        return x + 1

    w.func = f
    w.run()
    got = reported(link, blocks)
    assert answers == [[(1, 1500)]]
    assert sorted(got) == list(range(1500)) and all(v == (x + 1,) for x, v in got.items())
