"""What a user's own MPI program does around mpigather.run, under mpiexec: one scenario per run.

    mpiexec -n N python tests/lib_scenarios.py SCENARIO [ARGS...]

Rank 0 prints ``RESULT OK ...`` when the scenario held; every rank prints ``RANK r left`` at
the end, so a test can tell that no rank stayed behind.
"""

from __future__ import annotations

import dataclasses
import os
import random
import sys
import time

import numpy as np

try:
    import mpi4py

    if len(sys.argv) > 1 and sys.argv[1] == "funneled":
        mpi4py.rc.thread_level = "funneled"
    from mpi4py import MPI
except ImportError:  # pragma: no cover
    raise SystemExit("mpi4py is needed") from None

import mpigather

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
what = sys.argv[1]
args = sys.argv[2:]


def say(*a: object) -> None:
    print(*a, flush=True)


# -- task functions (module level: every rank imports this file as __main__) --------------


def uneven(i: int) -> np.ndarray:
    time.sleep(random.Random(i).random() * 0.004)
    return np.full(8, i)


def talker(i: int) -> int:
    """Sends the user's own message on COMM_WORLD from inside a task, while the run goes on."""
    if i == 0:
        MPI.COMM_WORLD.send(("hello from a task", MPI.COMM_WORLD.Get_rank()), dest=0, tag=5)
    time.sleep(0.01)
    return i * i


@dataclasses.dataclass
class Point:
    x: float
    label: str


def _values(i: int) -> list:
    big = np.arange(300_000, dtype=np.float64) + i
    values = [
        1.5, 7, -(1 << 70), "text ü", True, None, [1, 2.5, "x"], (3, "a"), {"a": {"b": {"c": 1}}},
        {"field": big, "energy": 1.5, "name": "run", "n": 3, "ok": False, "none": None, "sub": {"a": big[:10]}},
        Point(1.0, "p"), [big, big * 2, big * 3], b"raw bytes", np.float32(2.5), np.int64(-3),
        {1: "int keys"}, bytearray(b"ba"), set([1, 2]), np.arange(6).reshape(2, 3), {"x": [1, 2]},
    ]
    try:
        import pandas as pd

        values.append(pd.DataFrame({"a": np.arange(1000) + i, "b": ["s"] * 1000}))
        values.append(pd.Series(np.linspace(0, 1, 50)))
    except ImportError:
        say("pandas is not installed: no DataFrame or Series in the type matrix")
    return values


def typed(i: int):
    values = _values(i)
    return values[i % len(values)]


N_TYPED = len(_values(0))


def equal(a, b) -> bool:
    if type(a) is not type(b):
        # numpy scalars come back as 0-d arrays from a .npy file
        if isinstance(b, np.generic) and isinstance(a, np.ndarray) and a.shape == ():
            return a.dtype == b.dtype and a[()] == b
        return False
    if isinstance(b, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    if isinstance(b, dict):
        return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in b)
    if isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b))
    if type(b).__module__.startswith("pandas"):
        return bool(a.equals(b))
    return bool(a == b)


def three_big(i: int):
    """A list of three arrays of 0.85 GiB each, computed fresh (2.55 GiB in all)."""
    n = (850 << 20) // 8
    return [np.full(n, float(k + i)) for k in range(3)]


def sleepy(i: float):
    time.sleep(float(i))
    return i


def stuck_once(i: int):
    """Task 0's first attempt sleeps 12 s (past the run's timeout); every other call is quick."""
    marker = os.path.join(args[0], "stuck.0")
    if i == 0 and not os.path.exists(marker):
        open(marker, "w").close()
        time.sleep(12.0)
    return i


def interrupting(i: int):
    if i == 2:
        raise KeyboardInterrupt("raised by the task")
    return i


# -- scenarios ------------------------------------------------------------------------------

if what == "back_to_back":
    n = int(args[0])
    for k in range(n):
        s = mpigather.run(uneven, range(3 + k % 5), out=None)
        if rank == 0:
            assert s.done == 3 + k % 5 and not s.failed, (k, s.text())
            assert all(np.array_equal(s.results[i], np.full(8, i)) for i in range(3 + k % 5)), k
    if rank == 0:
        say(f"RESULT OK {n} runs")

elif what == "p2p":
    s = mpigather.run(talker, range(6), out=None)
    if rank == 0:
        got = comm.recv(source=MPI.ANY_SOURCE, tag=5)  # the user's message, untouched by the run
        assert got[0] == "hello from a task" and got[1] != 0, got
        assert s.done == 6 and s.results[5] == 25, s.text()
        say("RESULT OK", got)

elif what == "split":
    half = comm.Split(rank % 2, rank)
    s = mpigather.run(uneven, range(10), out=None, comm=half)
    if half.Get_rank() == 0:
        assert s.done == 10, s.text()
        say(f"RESULT OK half {rank % 2} master rank {rank}")
    half.Free()

elif what == "types":
    out, mode = args[0], args[1]
    n = N_TYPED
    s = mpigather.run(typed, range(n), out=None if out == "memory" else out, mode=mode,
                      chunk_size="64KiB", overwrite=out != "memory")
    if rank == 0:
        assert s.done == n and not s.failed, s.text()
        if out == "memory":
            got = s.results
            assert list(got) == list(range(n)), list(got)  # task order
        else:
            with mpigather.load(out, allow_pickle=True) as res:
                assert list(res) == [str(i) for i in range(n)], list(res)
                got = {i: res[str(i)] for i in range(n)}
                assert res.attrs("9")["params"] == 9 and res.attrs("9")["kind"] == "dict"
            with mpigather.load(out) as res:  # plain values load without allow_pickle; objects do not
                assert res["0"] == 1.5 and res["9"]["energy"] == 1.5
                assert res["6"] == [1, 2.5, "x"]  # a pickle of plain values names no class: it loads
                try:
                    res["10"]
                except ValueError as e:
                    assert "allow_pickle=True" in str(e), e
                else:
                    raise AssertionError("a pickled object loaded without allow_pickle")
        bad = [i for i in range(n) if not equal(got[i], typed(i))]
        assert not bad, [(i, got[i], typed(i)) for i in bad][:3]
        say(f"RESULT OK {n} types into {out} ({mode})")

elif what == "big_list":
    out = args[0]
    s = mpigather.run(three_big, range(1), out=out, chunk_size="64MiB")
    if rank == 0:
        assert s.done == 1, s.text()
        with mpigather.load(out, allow_pickle=True) as res:
            got = res["0"]
            assert [float(a[0]) for a in got] == [0.0, 1.0, 2.0] and all(a.size == (850 << 20) // 8 for a in got)
        say(f"RESULT OK rss {s.master['peak_rss_mib']} MiB for {3 * 850} MiB")

elif what == "equal_tasks":
    n = size - 1
    # every rank is started and imported before the clock starts: on a loaded machine a late
    # worker's start-up would otherwise be timed as if the scheduler had kept it idle
    comm.Barrier()
    t0 = time.monotonic()
    s = mpigather.run(sleepy, [1.0] * n, out=None, prefetch=2)
    if rank == 0:
        dt = time.monotonic() - t0
        assert s.done == n, s.text()
        per_worker = sorted(w["tasks"] for w in s.workers.values())
        say(f"RESULT OK wall {dt:.2f} for {n} tasks of 1 s on {n} workers; tasks per worker {per_worker}")

elif what == "stuck":
    comm.Barrier()
    t0 = time.monotonic()
    s = mpigather.run(stuck_once, range(8), out=None, timeout=1.0)
    if rank == 0:
        dt = time.monotonic() - t0
        assert s.done == 8 and not s.failed and list(s.stuck.values()) == [0], s.text()
        # the master returns once the run is closed, without waiting for the stuck worker (it
        # waited in a last barrier before, until that task ended: 12 s)
        assert dt < 8.0, f"the master returned after {dt:.1f} s"
        say(f"RESULT OK after {dt:.1f} s: {s.stuck}")

elif what == "master_only":
    if rank == 0:
        mpigather.run(sleepy, [0.0], out=None, hello_patience=1.0, timeout=5)
    else:
        time.sleep(float(args[0]))  # never calls run: the master must say why it waits
        os._exit(0)

elif what == "funneled":
    s = mpigather.run(uneven, range(6), out=None)
    if rank == 0:
        assert s.done == 6, s.text()
    try:
        with mpigather.executor() as ex:
            pass
    except mpigather.MPIGatherError as e:
        if rank == 0:
            assert "MPI_THREAD_SERIALIZED" in str(e), e
            say("RESULT OK", MPI.Query_thread(), e)

elif what == "interrupt":
    s = mpigather.run(interrupting, range(5), out=None)
    if rank == 0:
        assert s.done == 4 and list(s.failed) == [2] and "KeyboardInterrupt" in s.failed[2], s.text()
        say("RESULT OK")

elif what == "worker_bug":
    from mpigather import worker as W

    if rank == 2:
        def broken(self, *a, **kw):
            raise RuntimeError("an injected bug in the worker")

        W.Worker._result = broken  # type: ignore[method-assign]
    t0 = time.monotonic()
    try:
        mpigather.run(sleepy, [0.05] * 20, out=None)
    except mpigather.MPIGatherError as e:
        if rank == 0:
            assert "injected bug" in str(e), e
            say(f"RESULT OK after {time.monotonic() - t0:.1f} s: {e}")
    except RuntimeError as e:
        assert rank == 2 and "injected bug" in str(e), (rank, e)
    except mpigather.MasterFailed:
        assert rank not in (0, 2), rank

elif what == "existing":
    out = args[0]
    mpigather.run(uneven, range(2), out=out)
    try:
        mpigather.run(uneven, range(2), out=out)
    except mpigather.UsageError as e:
        if rank == 0:
            assert "resume=True" in str(e) and "overwrite=True" in str(e) and "--" not in str(e), e
            say("RESULT OK", e)
    except mpigather.MasterFailed:
        pass

else:
    raise SystemExit(f"unknown scenario {what}")

say(f"RANK {rank} left")
