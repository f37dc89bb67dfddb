"""The MPI programs of the benchmark suite, one per case; ``scripts/bench.py`` drives them.

    mpiexec -n 3 python scripts/bench_cases.py comp  --method raw --sink mem --elems 33554432 --count 8
    mpiexec -n 3 python scripts/bench_cases.py comp  --method mpigather --sink h5 --elems 0 --count 20000 --dir /tmp/x
    mpiexec -n 3 python scripts/bench_cases.py steps --method steps --affinity 1 --checkpoint none --count 5000
    mpiexec -n 3 python scripts/bench_cases.py sweep --sink h5 --count 1000000 --tasks t.jsonl --dir /tmp/x
             python scripts/bench_cases.py resume --sink h5 --count 1000000 --tasks t.jsonl --dir /tmp/x
    mpiexec -n 2 python scripts/bench_cases.py mem   --method mpigather --size 67108864 --count 16
    mpiexec -n 2 python scripts/bench_cases.py file  --method h5_stream --size 268435456 --count 8 --dir /tmp/x
    mpiexec -n 3 python scripts/bench_cases.py rss   --method h5 --sizes 2415919104,268435456x7 --dir /tmp/x
    mpiexec -n 3 python scripts/bench_cases.py cpu   --method mpigather --count 6 --spin 1.0
             python scripts/bench_cases.py sched --workers 1000 --count 200000

Each program prints exactly one line ``BENCH {json}`` on rank 0 with its measurement
(``value`` in ``unit``, plus details). Workers print nothing. Each measurement is taken once
per launch; the driver repeats launches. Every module of mpigather is imported before MPI
starts, and timed regions start after a barrier. In ``comp``, ``steps`` and ``sweep`` the
workers compute every result afresh, as real tasks do; in ``mem``, ``file`` and ``rss`` they
return arrays built (and touched) before the barrier, so a task costs about nothing and what
is measured is the gathering itself (the transport limit).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

GiB = 1 << 30
MiB = 1 << 20

# -- task functions (module level, so mpi4py.futures can pickle them by name) ----------------

_CACHE: dict[int, np.ndarray] = {}


def make_array(size: int) -> np.ndarray:
    """A preallocated, fully touched uint8 array of ``size`` bytes, cached per size."""
    a = _CACHE.get(size)
    if a is None:
        a = np.empty(size, dtype=np.uint8)
        a.fill(7)
        _CACHE[size] = a
    return a


_SIZES: list[int] = []  # task i returns _CACHE[_SIZES[i]] (rss case)


def cached(i: int) -> np.ndarray:
    """Task ``i`` of a uniform gather: the cached array (the only size in the cache)."""
    return _CACHE[_SIZES[i] if _SIZES else next(iter(_CACHE))]


_N = [0]  # float64 elements of each computed result; 0: a numpy scalar (comp, --elems)


def fresh(i: int) -> Any:
    """A computing task: its result made afresh, ``np.full(n, i)`` (float64), or ``np.float64(i)``."""
    n = _N[0]
    if n == 0:
        return np.float64(i)
    return np.full(n, i, dtype=np.float64)


def spin(seconds: float) -> Any:
    """Burn one core for ``seconds`` (a CPU-bound task)."""
    end = time.perf_counter() + seconds
    x = 0
    while time.perf_counter() < end:
        for _ in range(1000):
            x += 1
    return np.int64(x)


# -- helpers ----------------------------------------------------------------------------------


def emit(rank: int, rec: dict[str, Any]) -> None:
    if rank == 0:
        rec.setdefault("peak_rss_mib_rank0", round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
        print("BENCH " + json.dumps(rec), flush=True)


def rss_mib() -> float:
    try:
        import psutil

        return round(psutil.Process().memory_info().rss / MiB, 1)
    except ImportError:  # pragma: no cover
        return float("nan")


def prewarm(nbytes: int) -> None:
    """Touch and free ``nbytes`` of memory, so that the receiver's fresh allocations that follow
    find guest pages the hypervisor has already backed. On this VM the first touch of memory the
    guest has not used recently runs at ~0.7 GiB/s, and warm fresh memory at ~3 GiB/s; without
    this step, whichever variant happens to get cold pages looks 4x slower."""
    if nbytes <= 0:
        return
    b = np.empty(nbytes, dtype=np.uint8)
    b.fill(1)
    del b


def preload() -> None:
    """Import every module of mpigather (and h5py) now. ``mpigather.run`` imports most of them on
    its first call, which costs ~0.15-0.3 s per process here: a one-time start-up cost that would
    otherwise land inside the timed region of mpigather's variants and not of the others."""
    import importlib
    import pkgutil

    import mpigather

    for m in pkgutil.walk_packages(mpigather.__path__, "mpigather."):
        if not m.name.endswith("__main__"):
            importlib.import_module(m.name)


def comm_world():
    from mpi4py import MPI

    return MPI, MPI.COMM_WORLD


def parse_sizes(text: str) -> list[int]:
    """'2415919104,268435456x7' -> [2415919104, 268435456, ... (7 times)]."""
    out: list[int] = []
    for item in text.split(","):
        if "x" in item:
            s, n = item.split("x")
            out += [int(s)] * int(n)
        else:
            out.append(int(item))
    return out


# -- case 1: gather bandwidth into memory ------------------------------------------------------


def case_mem(a: argparse.Namespace) -> None:
    MPI, comm = comm_world()
    rank = comm.Get_rank()
    size, count, method = a.size, a.count, a.method
    total = size * count
    if rank != 0:
        make_array(size)
    keep: list[Any] = []
    extra: dict[str, Any] = {}
    if a.prewarm:  # every rank: the receiver's results, and the pickles of the peers, are fresh memory
        prewarm(total)
    import mpi4py.futures  # noqa: F401 - imports stay out of the timed region

    import mpigather
    if a.runs > 1 and method in ("mpigather", "raw_fresh"):  # the same job again in this process (the spread)
        times = []
        for _run in range(a.runs):
            comm.Barrier()
            t0 = time.perf_counter()
            if method == "mpigather":
                s = mpigather.run(cached, range(count), out=None, progress="off",
                                  **({"chunk_size": a.chunk} if a.chunk else {}))
                if rank == 0:
                    assert s is not None and s.done == count and s.bytes == total
                    extra = {"summary_wall": s.wall, "master": s.master}
                del s
            elif rank == 0:
                bufs = []
                for _ in range(count):
                    buf = np.empty(size, dtype=np.uint8)  # fresh memory, kept like a memory sink keeps it
                    comm.Recv([buf, MPI.BYTE], source=1, tag=5)
                    bufs.append(buf)
                del bufs
            else:
                arr = make_array(size)
                for _ in range(count):
                    comm.Send([arr, MPI.BYTE], dest=0, tag=5)
            times.append(time.perf_counter() - t0)
        comm.Barrier()
        dt = statistics.median(times)
        emit(rank, {"case": "mem", "method": method, "size": size, "count": count, "bytes": total, "seconds": dt,
                    "value": total / dt / GiB, "unit": "GiB/s", "run_seconds": times,
                    "run_values": [total / t / GiB for t in times], **extra})
        return
    comm.Barrier()
    t0 = time.perf_counter()
    if method == "mpigather":
        s = mpigather.run(cached, range(count), out=None, progress="off",
                          **({"chunk_size": a.chunk} if a.chunk else {}))
        if rank == 0:
            assert s is not None and s.done == count and s.bytes == total
            keep.append(s.results)
            extra = {"summary_wall": s.wall, "master": s.master}
    elif method in ("raw_prealloc", "raw_fresh"):
        if rank == 0:
            if method == "raw_prealloc":
                buf = np.empty(size, dtype=np.uint8)
                buf.fill(0)  # touched: a reused, preallocated buffer
                comm.Barrier()
                t0 = time.perf_counter()
                for _ in range(count):
                    comm.Recv([buf, MPI.BYTE], source=1, tag=5)
            else:
                comm.Barrier()
                t0 = time.perf_counter()
                for _ in range(count):
                    buf = np.empty(size, dtype=np.uint8)  # fresh memory, kept like a memory sink keeps it
                    comm.Recv([buf, MPI.BYTE], source=1, tag=5)
                    keep.append(buf)
        else:
            arr = make_array(size)
            comm.Barrier()
            for _ in range(count):
                comm.Send([arr, MPI.BYTE], dest=0, tag=5)
    elif method in ("futures", "futures_pkl5"):
        ex: Any
        with mpi4py.futures.MPICommExecutor(comm, root=0, use_pkl5=(method == "futures_pkl5")) as ex:
            if ex is not None:
                res = list(ex.map(cached, range(count)))
                assert len(res) == count and all(r.nbytes == size for r in res)
                keep.append(res)
    elif method == "gather":
        for _ in range(count):
            got = comm.gather(None if rank == 0 else make_array(size), root=0)
            if rank == 0:
                keep.append(got[1])
    else:
        raise SystemExit(f"unknown method {method}")
    dt = time.perf_counter() - t0
    comm.Barrier()
    emit(rank, {"case": "mem", "method": method, "size": size, "count": count, "bytes": total, "seconds": dt,
                "value": total / dt / GiB, "unit": "GiB/s", **extra})


# -- case 2: gather bandwidth into files -------------------------------------------------------


def case_file(a: argparse.Namespace) -> None:
    MPI, comm = comm_world()
    rank = comm.Get_rank()
    size, count, method = a.size, a.count, a.method
    total = size * count
    base = Path(a.dir)
    extra: dict[str, Any] = {}
    import mpigather  # imports stay out of the timed region
    if method == "tofile":  # the limit: one process writes the same bytes, each result a file + fsync
        arr = make_array(size)
        d = base / "plain"
        if rank == 0:
            d.mkdir()
        comm.Barrier()
        t0 = time.perf_counter()
        if rank == 0:
            for i in range(count):
                with open(d / f"{i}.bin", "wb") as fh:
                    arr.tofile(fh)
                    fh.flush()
                    os.fsync(fh.fileno())
            fsync_path(d)
        dt = time.perf_counter() - t0
    else:
        sink, mode = method.split("_")
        out = base / ("out.h5" if sink == "h5" else "out.d")
        if rank != 0:
            make_array(size)
        comm.Barrier()
        t0 = time.perf_counter()
        s = mpigather.run(cached, range(count), out=str(out), mode=mode, progress="off",
                          **({"chunk_size": a.chunk} if a.chunk else {}))
        dt = time.perf_counter() - t0
        if rank == 0:
            assert s is not None and s.done == count and s.bytes == total
            extra = {"summary_wall": s.wall, "master": s.master}
    comm.Barrier()
    emit(rank, {"case": "file", "method": method, "size": size, "count": count, "bytes": total, "seconds": dt,
                "value": total / dt / GiB, "unit": "GiB/s", **extra})


# -- computing workers: every result made afresh -----------------------------------------------

TASK, RESULT = 11, 12  # tags of the hand-written loops


def fsync_path(path: Path) -> None:
    """fsync a file or a directory by name."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def hand_master(MPI: Any, comm: Any, count: int, pickled: bool, store: Any) -> None:
    """The loop a user writes by hand: one task in flight per worker, results from ANY_SOURCE.

    Raw: ``Probe``, then ``Recv`` into a fresh ``np.empty`` of the probed size. Pickled: ``recv``.
    The worker that sent a result gets its next task right away, before the result is stored.
    """
    st = MPI.Status()
    inflight: dict[int, int] = {}
    nxt = 0
    for w in range(1, comm.Get_size()):
        if nxt < count:
            comm.send(nxt, dest=w, tag=TASK)
            inflight[w] = nxt
            nxt += 1
        else:
            comm.send(None, dest=w, tag=TASK)
    for _ in range(count):
        if pickled:
            res = comm.recv(source=MPI.ANY_SOURCE, tag=RESULT, status=st)
            src = st.Get_source()
        else:
            comm.Probe(source=MPI.ANY_SOURCE, tag=RESULT, status=st)
            src = st.Get_source()
            res = np.empty(st.Get_count(MPI.BYTE) // 8, dtype=np.float64)
            comm.Recv([res, MPI.BYTE], source=src, tag=RESULT)
        tid = inflight.pop(src)
        if nxt < count:
            comm.send(nxt, dest=src, tag=TASK)
            inflight[src] = nxt
            nxt += 1
        else:
            comm.send(None, dest=src, tag=TASK)
        store(tid, res)


def hand_worker(MPI: Any, comm: Any, pickled: bool) -> None:
    while True:
        t = comm.recv(source=0, tag=TASK)
        if t is None:
            return
        r = fresh(t)
        if pickled:
            comm.send(r, dest=0, tag=RESULT)
        else:
            comm.Send([np.asarray(r), MPI.BYTE], dest=0, tag=RESULT)


def case_comp(a: argparse.Namespace) -> None:
    """Workers compute each result afresh (``fresh``); the master keeps it in memory or writes it.

    --method mpigather (--sink mem|h5|npy, --mode stream|direct), raw or pickled (the hand-written
    loop; --sink mem, h5 = h5py ``create_dataset`` per result, or file = one file per result,
    ``write`` + ``fsync``), futures (``MPICommExecutor.map``, --chunksize; memory only).
    """
    MPI, comm = comm_world()
    rank, nprocs = comm.Get_rank(), comm.Get_size()
    n, count, method, sink = a.elems, a.count, a.method, a.sink
    _N[0] = n
    size = 8 * n
    total = size * count
    base = Path(a.dir) if a.dir else None
    if a.prewarm and n:  # the master's kept results (or page cache); a worker's share of fresh arrays
        prewarm(total if rank == 0 else min(total, (count // max(1, nprocs - 1) + 1) * size))
    import mpi4py.futures  # noqa: F401 - imports stay out of the timed region

    import mpigather  # noqa: F401
    if method in ("raw", "pickled") and sink in ("h5",):
        import h5py  # noqa: F401
    runs = a.runs if sink == "mem" and method in ("mpigather", "raw") else 1
    times: list[float] = []
    keep: Any
    for _run in range(runs):  # runs > 1: the same job again in this process (the spread of make bench)
        dt, keep, extra = _comp_once(a, MPI, comm, rank, count, method, sink, base)
        times.append(dt)
        if rank == 0 and keep:  # every result is there and is its own
            assert len(keep) == count and all(float(np.asarray(keep[i]).flat[0]) == i
                                              for i in (0, count // 2, count - 1))
        del keep
        comm.Barrier()
    dt = statistics.median(times)
    rec = {"case": "comp", "method": method, "sink": sink, "mode": a.mode, "chunksize": a.chunksize, "size": size,
           "count": count, "bytes": total, "seconds": dt, "workers": nprocs - 1, "tasks_s": count / dt, **extra}
    if runs > 1:
        rec["run_seconds"] = times
        rec["run_values"] = [total / t / GiB for t in times] if n else [count / t for t in times]
    if n:
        rec.update(value=total / dt / GiB, unit="GiB/s")
    else:
        rec.update(value=count / dt, unit="tasks/s")
    emit(rank, rec)


def _comp_once(a: argparse.Namespace, MPI: Any, comm: Any, rank: int, count: int, method: str, sink: str,
               base: Path | None) -> tuple[float, dict[int, Any], dict[str, Any]]:
    """One timed run of case_comp: (seconds, the results kept in memory, details)."""
    import mpi4py.futures

    import mpigather
    if method in ("raw", "pickled") and sink in ("h5",):
        import h5py
    keep: dict[int, Any] = {}
    extra: dict[str, Any] = {}
    comm.Barrier()
    t0 = time.perf_counter()
    if method == "mpigather":
        out = None
        if sink != "mem":
            assert base is not None
            out = str(base / ("out.h5" if sink == "h5" else "out.d"))
        s = mpigather.run(fresh, range(count), out=out, mode=a.mode, progress="off",
                          **({"chunk_size": a.chunk} if a.chunk else {}))
        if rank == 0:
            assert s is not None and s.done == count, (s.done, count)
            if out is None:
                keep = s.results
            extra = {"summary_wall": s.wall, "master": s.master,
                     "worker_stats": {str(r): {k: w.get(k) for k in ("tasks", "compute", "send", "idle", "wall")}
                                      for r, w in s.workers.items()}}
    elif method in ("raw", "pickled"):
        pickled = method == "pickled"
        if rank == 0:
            if sink == "mem":
                hand_master(MPI, comm, count, pickled, keep.__setitem__)
            elif sink == "h5":
                assert base is not None
                path = base / "hand.h5"
                with h5py.File(path, "w") as f:
                    hand_master(MPI, comm, count, pickled, lambda tid, res: f.create_dataset(str(tid), data=res))
                fsync_path(path)
            elif sink == "file":
                assert base is not None
                d = base / "hand.d"
                d.mkdir()

                def write(tid: int, res: Any) -> None:
                    with open(d / f"{tid}.bin", "wb", buffering=0) as fh:
                        fh.write(memoryview(np.asarray(res)).cast("B"))
                        os.fsync(fh.fileno())

                hand_master(MPI, comm, count, pickled, write)
                fsync_path(d)
            else:
                raise SystemExit(f"unknown sink {sink} for {method}")
        else:
            hand_worker(MPI, comm, pickled)
    elif method == "futures":
        ex: Any
        with mpi4py.futures.MPICommExecutor(comm, root=0) as ex:
            if ex is not None:
                keep = dict(enumerate(ex.map(fresh, range(count), chunksize=a.chunksize)))
    else:
        raise SystemExit(f"unknown method {method}")
    return time.perf_counter() - t0, keep, extra


# -- multi-step tasks --------------------------------------------------------------------------


def step1(i: int) -> Any:
    """A three-step pipeline of tiny steps: step1 -> step2 -> step3 gives what ``fused`` gives."""
    from mpigather import next_step

    return next_step(step2, i + 1)


def step2(i: int) -> Any:
    from mpigather import next_step

    return next_step(step3, i * 2)


def step3(i: int) -> Any:
    return np.float64(i - 1)


def fused(i: int) -> Any:
    """The same work as one function."""
    return np.float64((i + 1) * 2 - 1)


def case_steps(a: argparse.Namespace) -> None:
    MPI, comm = comm_world()
    rank = comm.Get_rank()
    n = a.count
    import mpigather

    out = None if a.sink == "mem" else str(Path(a.dir) / "steps.h5")
    func = fused if a.method == "fused" else step1
    comm.Barrier()
    t0 = time.perf_counter()
    s = mpigather.run(func, range(n), out=out, progress="off", affinity=bool(a.affinity), checkpoint=a.checkpoint)
    dt = time.perf_counter() - t0
    rec: dict[str, Any] = {}
    if rank == 0:
        assert s is not None and s.done == n, (s.done if s else None, n)
        if out is None:
            assert all(float(s.results[i]) == (i + 1) * 2 - 1 for i in (0, n // 2, n - 1))
        rec = {"case": "steps", "method": a.method, "sink": a.sink, "affinity": bool(a.affinity),
               "checkpoint": a.checkpoint, "count": n, "seconds": dt, "workers": comm.Get_size() - 1,
               "tasks_s": n / dt, "value": 1e6 * dt / n, "unit": "us/task", "summary_wall": s.wall,
               "master": s.master}
    comm.Barrier()
    emit(rank, rec)


# -- sweeps of millions of tiny tasks from a JSONL file ----------------------------------------

_FIRST = [True]


def seed_task(task: dict[str, Any]) -> Any:
    """A sweep's task, ``{"id": "run-17", "seed": 17}`` -> ``np.float64(17)``.

    ``BENCH_FIRST_FILE``: the first call in a process writes the time to ``<that>.<pid>`` (when
    did work start). ``BENCH_STALL_AT``: tasks whose seed is at least that never end (a run
    that stops doing anything past that point, to be killed).
    """
    if _FIRST[0]:
        _FIRST[0] = False
        first = os.environ.get("BENCH_FIRST_FILE")
        if first:
            Path(f"{first}.{os.getpid()}").write_text(repr(time.time()))
    stall = os.environ.get("BENCH_STALL_AT")
    if stall and task["seed"] >= int(stall):
        time.sleep(1e6)
    return np.float64(task["seed"])


def write_tasks(path: Path, n: int) -> Path:
    """The JSONL file of a sweep of ``n`` tasks (made once, atomically, and reused)."""
    if not path.exists():
        tmp = path.with_name(path.name + f".tmp.{os.getpid()}")
        with open(tmp, "w") as f:
            step = 100_000
            for lo in range(0, n, step):
                f.writelines(f'{{"id": "run-{i}", "seed": {i}}}\n' for i in range(lo, min(n, lo + step)))
        os.replace(tmp, path)
    return path


class Sampler:
    """Samples this process's resident memory and open descriptors every ``every`` seconds."""

    def __init__(self, every: float = 0.05) -> None:
        import threading

        self.every, self.peak_rss, self.peak_fds, self.samples = every, 0, 0, 0
        self.series: list[tuple[float, int]] = []  # (time, peak RSS so far)
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")
        self.sample()
        self.base_rss, self.base_fds = self.peak_rss, self.peak_fds
        self._t = threading.Thread(target=self._run, name="bench-sampler", daemon=True)

    def sample(self) -> None:
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * self._page
        fds = len(os.listdir("/proc/self/fd"))
        self.peak_rss, self.peak_fds = max(self.peak_rss, rss), max(self.peak_fds, fds)
        self.samples += 1
        self.series.append((time.monotonic(), self.peak_rss))

    def late_growth(self) -> float:
        """Growth of the peak RSS over the second half of the run, per second (the first half
        includes caches and buffers that fill once; the second half is what more tasks add)."""
        (t0, _), (t1, r1) = self.series[0], self.series[-1]
        mid = t0 + (t1 - t0) / 2
        tm, rm = next((t, r) for t, r in self.series if t >= mid)
        return (r1 - rm) / max(t1 - tm, 1e-9)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.sample()

    def __enter__(self) -> Sampler:
        self._t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join()
        self.sample()


def case_sweep(a: argparse.Namespace) -> None:
    """A sweep of ``--count`` tasks from a JSONL file into HDF5 or a .npy directory (the command
    line, in this process) or memory (``mpigather.run`` over the file's lines)."""
    MPI, comm = comm_world()
    rank = comm.Get_rank()
    n = a.count
    tasks = Path(a.tasks)
    if rank == 0:
        write_tasks(tasks, n)
    comm.Barrier()
    import mpigather
    from mpigather.cli import main as cli_main
    from mpigather.tasks import scan_jsonl

    rec: dict[str, Any] = {}
    out = None if a.sink == "mem" else Path(a.dir) / ("sweep.h5" if a.sink == "h5" else "sweep.d")
    if rank == 0:  # the command line's up-front pass over the file, on its own (it also warms the page cache)
        t = time.perf_counter()
        assert scan_jsonl(tasks) == n
        rec["jsonl_pass_s"] = time.perf_counter() - t
    comm.Barrier()
    sampler = Sampler() if rank == 0 else None
    t0 = time.perf_counter()
    if sampler is not None:
        sampler.__enter__()
    if out is None:
        with open(tasks, "rb") as f:
            s = mpigather.run(seed_task, (json.loads(line) for line in f), out=None, progress="off")
        if rank == 0:
            assert s is not None and s.done == n and float(s.results["run-7"]) == 7.0
            rec["summary_wall"] = s.wall
            del s
    else:
        code = cli_main(["run", f"{Path(__file__).resolve()}:seed_task", "--tasks", str(tasks), "--out", str(out),
                         "--progress", "off", "--quiet"])
        assert code == 0, code
    dt = time.perf_counter() - t0
    if sampler is not None:
        sampler.__exit__()
        ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        rec.update(case="sweep", sink=a.sink, count=n, seconds=dt, value=n / dt, unit="tasks/s",
                   workers=comm.Get_size() - 1, jsonl_pass_s_per_million=rec["jsonl_pass_s"] * 1e6 / n,
                   rss_base_mib=sampler.base_rss / MiB, rss_peak_mib=sampler.peak_rss / MiB,
                   maxrss_mib=ru / MiB, rss_bytes_per_task=(sampler.peak_rss - sampler.base_rss) / n,
                   rss_late_bytes_per_task=sampler.late_growth() * dt / n,
                   fds_base=sampler.base_fds, fds_peak=sampler.peak_fds, samples=sampler.samples)
        if out is not None:
            from mpigather.journal import journal_path

            jb = journal_path(out).stat().st_size
            du = sum(p.stat().st_size for p in out.rglob("*")) if out.is_dir() else out.stat().st_size
            rec.update(journal_bytes=jb, journal_bytes_per_task=jb / n, output_bytes=du, output_bytes_per_task=du / n)
    comm.Barrier()
    emit(rank, rec)


# -- resume of a sweep killed at 90% -------------------------------------------------------------


def _journal_done(path: Path, state: dict[str, Any]) -> int:
    """Tasks the journal calls done so far, reading only what was appended since the last call."""
    try:
        with open(path, "rb") as f:
            f.seek(state.get("pos", 0))
            data = state.get("rest", b"") + f.read()
    except FileNotFoundError:
        return 0
    state["pos"] = state.get("pos", 0) + len(data) - len(state.get("rest", b""))
    lines = data.split(b"\n")
    state["rest"] = lines.pop()
    for line in lines:
        if line.startswith(b'{"ev":"done"'):
            state["done"] = state.get("done", 0) + len(json.loads(line)["id"])
        elif line.startswith(b'{"ev":"rows"'):  # rows of the table: runs of positions
            state["done"] = state.get("done", 0) + sum(n for _, n in json.loads(line)["pos"])
    return int(state.get("done", 0))


def _first_call(prefix: Path) -> float | None:
    times = [float(p.read_text()) for p in prefix.parent.glob(prefix.name + ".*")]
    return min(times) if times else None


def case_resume(a: argparse.Namespace) -> None:
    """Not under mpiexec: starts the runs itself. A sweep of ``--count`` tasks into ``--sink`` is
    killed with SIGKILL once 90% of its tasks are done (tasks past that point stall), then resumed;
    measures the time from launch to the first task call of the fresh and of the resumed run,
    ``mpigather status`` on the dead run, and the resumed run's whole time."""
    import signal
    import subprocess

    n = a.count
    k = int(n * 0.9)
    tasks = write_tasks(Path(a.tasks), n)
    base = Path(a.dir)
    out = base / ("sweep.h5" if a.sink == "h5" else "sweep.d")
    from mpigather.journal import journal_path

    jp = journal_path(out)
    mpiexec = Path(sys.executable).parent / "mpiexec"
    cmd = [str(mpiexec), "-n", str(a.np), sys.executable, "-m", "mpigather", "run",
           f"{Path(__file__).resolve()}:seed_task", "--tasks", str(tasks), "--out", str(out), "--progress", "off",
           "--quiet"]
    env = dict(os.environ, BENCH_STALL_AT=str(k), BENCH_FIRST_FILE=str(base / "first-fresh"))
    t_launch = time.time()
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    state: dict[str, Any] = {}
    deadline = time.monotonic() + a.max_seconds
    while _journal_done(jp, state) < k:
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            err = proc.communicate()[1].decode(errors="replace")[-400:]
            raise SystemExit(f"the first run ended or stalled before {k} tasks were done ({state.get('done')}): {err}")
        time.sleep(0.2)
    t_partial = time.time() - t_launch
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    fresh_first = _first_call(base / "first-fresh")
    rec: dict[str, Any] = {"case": "resume", "sink": a.sink, "count": n, "done_before": k,
                           "partial_seconds": t_partial, "journal_bytes": jp.stat().st_size,
                           "fresh_start_s": None if fresh_first is None else fresh_first - t_launch}
    py = [sys.executable, "-m", "mpigather", "status", str(out)]
    for key, extra in (("status_s", []), ("status_json_s", ["--json"])):
        t = time.perf_counter()
        r = subprocess.run(py + extra, capture_output=True, text=True, timeout=600)
        rec[key] = time.perf_counter() - t
        rec[key.replace("_s", "_rc")] = r.returncode
        if extra:
            try:
                st = json.loads(r.stdout)
                rec["status_done"] = st.get("done")
                rec["status_state"] = st.get("state")
            except ValueError:
                rec["status_output"] = r.stdout[-300:]
    env = dict(os.environ, BENCH_FIRST_FILE=str(base / "first-resume"))
    env.pop("BENCH_STALL_AT", None)
    t_launch = time.time()
    r = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=a.max_seconds)
    rec["resume_seconds"] = time.time() - t_launch
    if r.returncode != 0:
        raise SystemExit(f"the resumed run failed ({r.returncode}): {r.stderr[-600:]}")
    first = _first_call(base / "first-resume")
    rec["resume_start_s"] = None if first is None else first - t_launch
    st = json.loads(subprocess.run(py + ["--json"], capture_output=True, text=True, timeout=600).stdout)
    assert st.get("done") == n, st.get("done")
    rec.update(value=rec["resume_start_s"], unit="s", journal_bytes_end=jp.stat().st_size,
               journal_bytes_per_task=jp.stat().st_size / n)
    emit(0, rec)


# -- case 4: master peak RSS -------------------------------------------------------------------


def case_rss(a: argparse.Namespace) -> None:
    MPI, comm = comm_world()
    rank = comm.Get_rank()
    import mpigather
    from mpigather.config import make_options

    sizes = parse_sizes(a.sizes)
    _SIZES[:] = sizes
    total = sum(sizes)
    if rank != 0:
        for n in sorted(set(sizes)):
            make_array(n)
    chunk = make_options(**({"chunk_size": a.chunk} if a.chunk else {})).chunk_size
    workers = comm.Get_size() - 1
    out = Path(a.dir) / ("rss.h5" if a.method == "h5" else "rss.d")
    base_rss = rss_mib()
    base_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    comm.Barrier()
    t0 = time.perf_counter()
    s = mpigather.run(cached, range(len(sizes)), out=str(out), progress="off",
                      **({"chunk_size": a.chunk} if a.chunk else {}))
    dt = time.perf_counter() - t0
    rec: dict[str, Any] = {}
    if rank == 0:
        assert s is not None and s.done == len(sizes) and s.bytes == total
        peak = float(s.master["peak_rss_mib"])
        ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        limit = 2 * chunk * workers / MiB + 200
        rec = {"case": "rss", "method": a.method, "bytes": total, "seconds": dt, "gib_s": total / dt / GiB,
               "chunk_mib": chunk / MiB, "workers": workers, "value": peak, "unit": "MiB",
               "peak_rss_getrusage_mib": round(ru, 1), "rss_before_mib": base_rss,
               "maxrss_before_mib": round(base_max, 1), "limit_mib": limit,
               "ratio_to_chunk_x_workers": peak / (chunk * workers / MiB), "master": s.master}
    comm.Barrier()
    emit(rank, rec)


# -- case 5: CPU of a waiting master -----------------------------------------------------------


def case_cpu(a: argparse.Namespace) -> None:
    MPI, comm = comm_world()
    rank, nprocs = comm.Get_rank(), comm.Get_size()
    n, secs = a.count, a.spin
    import mpigather

    comm.Barrier()
    t0, c0 = time.perf_counter(), time.process_time()
    if a.method == "mpigather":
        s = mpigather.run(spin, [secs] * n, out=None, progress="off")
        if rank == 0:
            assert s is not None and s.done == n
    elif a.method == "plain_recv":  # the textbook master: blocking recv(ANY_SOURCE), hand out the next task
        if rank == 0:
            st = MPI.Status()
            nxt = 0
            for w in range(1, nprocs):
                comm.send(secs if nxt < n else None, dest=w, tag=1)
                nxt += 1 if nxt < n else 0
            got = 0
            while got < n:
                comm.recv(source=MPI.ANY_SOURCE, tag=2, status=st)
                got += 1
                w = st.Get_source()
                if nxt < n:
                    comm.send(secs, dest=w, tag=1)
                    nxt += 1
                else:
                    comm.send(None, dest=w, tag=1)
        else:
            while True:
                task = comm.recv(source=0, tag=1)
                if task is None:
                    break
                comm.send(spin(task), dest=0, tag=2)
    else:
        raise SystemExit(f"unknown method {a.method}")
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    comm.Barrier()
    workers = nprocs - 1
    ideal = -(-n // workers) * secs
    emit(rank, {"case": "cpu", "method": a.method, "count": n, "spin": secs, "workers": workers, "seconds": dt,
                "cpu_seconds": cpu, "value": 100.0 * cpu / dt, "unit": "% of a core",
                "ideal_seconds": ideal, "slowdown": dt / ideal})


# -- case 6: scheduler cost per event, no MPI --------------------------------------------------


def case_sched(a: argparse.Namespace) -> None:
    """Drive the Scheduler the way Master._loop does, with simulated workers that finish at once.

    Messages (hello, results, revoke acks) wait in an inbox; the loop handles one at a time and
    runs housekeeping (tick + dispatch + the master's health check, ``healthy_workers()``) only
    when the inbox is empty or ``house`` seconds (Master: 5 ms) have passed since the last pass.
    ``--policy master`` times that interval from the *start* of the previous pass, as
    ``Master._loop`` does (``last_house = now`` taken before the pass), so a pass that itself
    takes longer than ``house`` makes the next message trigger another pass; ``--policy after``
    times it from the *end* of the previous pass (the one-line change that keeps a burst of
    messages between two passes). Every task dispatched becomes a result message; a steal
    (Revoke with ack) drops the victim's result and sends an ack, like a worker that had not
    started it. Events: worker_ready, one per task dispatched, one per result
    (result_begin + task_done), one per revoke ack. The run stops after ``--max-seconds``;
    the cost per event is over the events handled until then.
    """
    from collections import deque

    from mpigather.scheduler import Revoke, Scheduler, Send, Stop

    W, T, dur, house = a.workers, a.count, a.duration, a.house
    after = a.policy == "after"
    sched = Scheduler(((i, i) for i in range(T)), prefetch=2, batch_window=0.02)
    inbox: deque[tuple] = deque(("ready", r, None, None) for r in range(1, W + 1))
    dropped: set[Any] = set()
    n_ready = n_disp = n_done = n_acks = n_stop = n_house = 0
    t_disp = t_tick = t_health = 0.0
    max_pass = 0.0
    per = time.perf_counter
    t0 = per()
    deadline = t0 + a.max_seconds
    last_house = t0
    finished = False
    while True:
        now = per()
        if inbox:
            kind, rank, tid, att = inbox.popleft()
            if kind == "done":
                if tid in dropped:
                    dropped.discard(tid)
                    continue  # the worker dropped it unstarted: no message
                if sched.result_begin(rank, tid, att, now):
                    sched.task_done(rank, tid, att, now, dur)
                n_done += 1
            elif kind == "revoked":
                sched.revoked(rank, tid, now)
                n_acks += 1
            else:
                sched.worker_ready(rank, now)
                n_ready += 1
            if now - last_house < house:
                continue
            if now > deadline:
                break
        last_house = now
        n_house += 1
        t1 = per()
        sched.tick(now)
        t2 = per()
        ds = sched.dispatch(now)
        t3 = per()
        t_tick += t2 - t1
        t_disp += t3 - t2
        for d in ds:
            if isinstance(d, Send):
                for tid, att, _ in d.tasks:
                    inbox.append(("done", d.rank, tid, att))
                n_disp += len(d.tasks)
            elif isinstance(d, Revoke) and d.expect_ack:
                dropped.update(d.tids)
                inbox.append(("revoked", d.rank, list(d.tids), None))
            elif isinstance(d, Stop):
                n_stop += 1
        t4 = per()
        ws = sched.workers()  # Master._check_workers, every housekeeping pass
        _ = sched.finished or not ws or sched.healthy_workers()
        t5 = per()
        t_health += t5 - t4
        max_pass = max(max_pass, t5 - t1)
        if after:
            last_house = t5
        if sched.finished and n_stop == W and not inbox:
            finished = True
            break
    wall = per() - t0
    n_events = n_ready + n_disp + n_done + n_acks
    if finished:
        assert n_done == T and sched.n_done == T, (n_done, sched.n_done)
    emit(0, {"case": "sched", "policy": a.policy, "workers": W, "tasks": T, "duration": dur, "finished": finished,
             "tasks_done": n_done, "workers_ready": n_ready, "events": n_events, "seconds": wall,
             "value": 1e6 * wall / max(n_events, 1), "unit": "us/event", "housekeeping_passes": n_house,
             "events_per_pass": n_events / max(n_house, 1), "dispatch_seconds": t_disp,
             "max_pass_ms": 1e3 * max_pass, "tick_seconds": t_tick, "health_seconds": t_health,
             "us_per_event_outside_housekeeping": 1e6 * (wall - t_disp - t_tick - t_health) / max(n_events, 1)})


CASES = {"mem": case_mem, "file": case_file, "comp": case_comp, "steps": case_steps, "sweep": case_sweep,
         "resume": case_resume, "rss": case_rss, "cpu": case_cpu, "sched": case_sched}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("case", choices=sorted(CASES))
    p.add_argument("--method", default="mpigather")
    p.add_argument("--size", type=int, default=MiB)
    p.add_argument("--sizes", default="")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--chunk", type=int, default=0, help="mpigather chunk_size in bytes (0: its default)")
    p.add_argument("--chunksize", type=int, default=1, help="map chunksize for mpi4py.futures")
    p.add_argument("--dir", default="", help="scratch directory for file outputs")
    p.add_argument("--elems", type=int, default=0, help="comp: float64 elements per result (0: a numpy scalar)")
    p.add_argument("--sink", default="mem", help="comp: mem, h5, npy (mpigather); mem, h5, file (by hand)")
    p.add_argument("--mode", default="stream", help="comp: mpigather's mode, stream or direct")
    p.add_argument("--tasks", default="", help="sweep, resume: the JSONL task file (written if missing)")
    p.add_argument("--np", type=int, default=3, help="resume: ranks of the runs it starts")
    p.add_argument("--affinity", type=int, default=1, help="steps: mpigather's affinity option (1 or 0)")
    p.add_argument("--checkpoint", default="every", help="steps: mpigather's checkpoint option (every or none)")
    p.add_argument("--runs", type=int, default=1, help="comp (memory) and mem: timed runs in this one process;"
                   " the record keeps each (run_values), its value is their median")
    p.add_argument("--prewarm", type=int, default=1, help="mem: touch and free the total on rank 0 first (0: off)")
    p.add_argument("--spin", type=float, default=1.0)
    p.add_argument("--workers", type=int, default=1000)
    p.add_argument("--duration", type=float, default=1.0, help="sched: task duration reported to the scheduler")
    p.add_argument("--house", type=float, default=0.005, help="sched: housekeeping interval (Master: 5 ms)")
    p.add_argument("--policy", choices=("master", "after"), default="master",
                   help="sched: interval from the start (as Master._loop) or the end of the last pass")
    p.add_argument("--max-seconds", type=float, default=20.0,
                   help="sched: stop the simulation after this long; resume: the longest one run may take")
    a = p.parse_args(argv)
    for k in list(os.environ):
        if k.startswith("MPIGATHER_"):
            del os.environ[k]
    if a.case not in ("sched", "resume"):
        preload()  # before MPI starts, as the command line does (mpigather.transport sets Open MPI options)
    CASES[a.case](a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
