"""Every run of a process, not only the median: 12 runs of 8 x 256 MiB into memory, side by side
with the hand-written loop, in one process.

    mpiexec -n 3 python scripts/large_spread.py --kind cached   --runs 12
    mpiexec -n 2 python scripts/large_spread.py --kind computed --runs 12 --json out.json
    MPIGATHER_TRACE=/tmp/tr mpiexec -n 2 python scripts/large_spread.py --runs 3   # per-chunk trace

Each round runs mpigather, then the loop (``--order loop-first`` swaps them), each between two
barriers; the first run of the process is mpigather's unless swapped. ``--kind cached``: a
worker returns the same touched array each time; ``computed``: a fresh ``np.full`` (float64).
The master keeps one run's results (2 GiB) until the run ends, like a user would, then drops
them. Rank 0 prints one line per run and a summary (fastest, median, slowest, first, and each
against the loop's median). ``--trace PATH`` is ``MPIGATHER_TRACE=PATH``, for mpigather's runs only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_cases as B  # noqa: E402

GiB = 1 << 30


def summary(times: list[float]) -> dict[str, float]:
    return {"first": times[0], "fastest": min(times), "median": statistics.median(times), "slowest": max(times)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", choices=("cached", "computed"), default="cached")
    p.add_argument("--runs", type=int, default=12)
    p.add_argument("--count", type=int, default=8)
    p.add_argument("--size", type=int, default=256 << 20, help="bytes per result (default 256 MiB)")
    p.add_argument("--order", choices=("mpigather-first", "loop-first"), default="mpigather-first")
    p.add_argument("--methods", default="mpigather,loop",
                   help="comma-separated; a variant of mpigather adds options with +, e.g."
                   " mpigather+checksum=sender or mpigather+prefault=off (prefault: switched off in-process)")
    p.add_argument("--option", action="append", default=[], help="NAME=VALUE, an option of mpigather.run")
    p.add_argument("--trace", help="MPIGATHER_TRACE for mpigather's runs")
    p.add_argument("--json", help="write the per-run times here (rank 0)")
    a = p.parse_args(argv)
    from mpi4py import MPI

    B.preload()
    import mpigather

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    n = a.size // 8
    B._N[0] = n
    func = B.cached if a.kind == "cached" else B.fresh
    if rank != 0 and a.kind == "cached":
        B.make_array(a.size)
    worker_fn = B.cached if a.kind == "cached" else B.fresh
    options: dict[str, Any] = {}
    for item in a.option:
        k, v = item.split("=", 1)
        options[k] = v
    methods = a.methods.split(",")
    methods.sort(key=lambda m: (m == "loop") == (a.order == "mpigather-first"))  # (stable: the rest as given)
    times: dict[str, list[float]] = {m: [] for m in methods}
    total = a.size * a.count
    for r in range(a.runs):
        for m in methods:
            name, *variant = m.split("+")
            opts = dict(options, **dict(v.split("=", 1) for v in variant))
            prefault_off = opts.pop("prefault", "on") == "off"
            try:
                from mpigather import prefault
            except ImportError:  # an older mpigather, measured for comparison
                prefault = None
            if prefault is not None:
                prefault._load()
                saved, prefault._ok = prefault._ok, (False if prefault_off else prefault._ok)
            if a.trace and name == "mpigather":
                os.environ["MPIGATHER_TRACE"] = a.trace
            keep: Any = None
            comm.Barrier()
            t0 = time.perf_counter()
            if name == "mpigather":
                s = mpigather.run(func, range(a.count), out=None, progress="off", **opts)
                if rank == 0:
                    assert s is not None and s.done == a.count and s.bytes == total, (s.done, s.bytes)
                    keep = s.results
                del s  # as a program would: only the results are kept
            elif name == "loop":
                if rank == 0:
                    got: dict[int, Any] = {}
                    B.hand_master(MPI, comm, a.count, False, got.__setitem__)
                    keep = got
                else:
                    hand_worker(MPI, comm, worker_fn)
            else:
                raise SystemExit(f"unknown method {m}")
            dt = time.perf_counter() - t0
            comm.Barrier()
            os.environ.pop("MPIGATHER_TRACE", None)
            if prefault is not None:
                prefault._ok = saved
            if rank == 0:
                assert len(keep) == a.count
                if a.kind == "computed":  # every result is there and is its own
                    assert all(float(np.asarray(keep[i]).flat[-1]) == i for i in (0, a.count - 1))
                times[m].append(dt)
                print(f"run {r:2d} {m:10s} {dt:7.3f} s  {total / dt / GiB:6.2f} GiB/s", flush=True)
            del keep
    if rank == 0:
        ref = statistics.median(times["loop"]) if "loop" in times else None
        print(f"\n{comm.Get_size()} ranks, {a.kind} arrays, {a.count} x {a.size >> 20} MiB, {a.runs} runs"
              f" ({a.order}); seconds, and the loop's median / this run (>= 1.0: as fast as the loop)")
        for m in methods:
            ts = times[m]
            line = " ".join(f"{t:5.2f}" for t in ts)
            sm = summary(ts)
            rel = "" if ref is None else "  vs loop: " + " ".join(f"{k} {ref / v:.2f}x" for k, v in sm.items())
            print(f"{m:10s} {line}")
            print(f"{'':10s} first {sm['first']:.3f} fastest {sm['fastest']:.3f} median {sm['median']:.3f}"
                  f" slowest {sm['slowest']:.3f} (slowest/fastest {sm['slowest'] / sm['fastest']:.2f}){rel}")
        if a.json:
            Path(a.json).write_text(json.dumps({"ranks": comm.Get_size(), "kind": a.kind, "count": a.count,
                                                "size": a.size, "order": a.order, "options": options,
                                                "times": times}, indent=1))
    return 0


def hand_worker(MPI: Any, comm: Any, func: Any) -> None:
    """The loop's worker: ``func(task)`` (cached or computed), one raw ``Send``."""
    while True:
        t = comm.recv(source=0, tag=B.TASK)
        if t is None:
            return
        r = func(t)
        comm.Send([np.asarray(r), MPI.BYTE], dest=0, tag=B.RESULT)


if __name__ == "__main__":
    sys.exit(main())
