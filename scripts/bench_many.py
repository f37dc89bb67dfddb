"""`make bench` (many workers): more ranks than cores, tasks that sleep (as I/O, a GPU call or an
external solver would), side by side with ``MPICommExecutor`` and a hand-written loop, in one launch.

    python scripts/bench_many.py                  # 32 x 50 ms, 64 x 0.5 s, 128 x 0.5 s, 32 x 3 s
    python scripts/bench_many.py --quick          # 8 and 32 workers
    python scripts/bench_many.py --cases 128:0.5 --rounds 3
    python scripts/bench_many.py --cases 2:0.2:20:python   # tasks that compute in Python instead

Each case is one ``mpiexec -n N+1`` command with a timeout. Inside it every variant runs once
per round, interleaved (mpigather, ``MPICommExecutor().map``, a hand-written ``recv(ANY_SOURCE)``
loop), so that the same background load hits them alike. Efficiency is the ideal time (tasks x
duration / workers) over the measured one. ``worker_cpu`` is the CPU the workers used in that
variant, summed over workers, per second of the variant's wall time: with sleeping tasks it is
the cost of waiting (``MPICommExecutor``'s workers block in MPICH, which yields when the node is
oversubscribed). Writes ``bench/MANY.md`` and ``bench/many.json`` (``--quick``: under
``bench/raw/quick/``).

A case ``WORKERS:SECONDS:TASKS_PER_WORKER:python`` runs tasks that compute in Python for about
that long (a loop calibrated before the launch) instead of sleeping: with one worker per core, it shows
what the worker's own threads take from a task that holds the GIL.

Under mpiexec, ``python scripts/bench_many.py case SECONDS TASKS_PER_WORKER ROUNDS [KIND]`` runs one
case and prints ``RESULT {json}`` on the root.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DURATION = 0.05
LOOPS = 0  # > 0: tasks compute in Python (this many turns of the loop) instead of sleeping


def work(i: int) -> dict[str, Any]:
    if LOOPS:
        return {"x": float(spin(LOOPS) + i), "ok": True}
    time.sleep(DURATION)
    return {"x": float(i), "ok": True}


def spin(n: int) -> int:
    acc = 0
    for k in range(n):
        acc = (acc + k * k) % 1000003
    return acc


def _calibrate(seconds: float) -> int:
    """Turns of ``spin`` that take about ``seconds`` on this core."""
    n = 10_000
    while True:
        t = time.perf_counter()
        spin(n)
        dt = time.perf_counter() - t
        if dt > 0.05:
            return max(1, round(n * seconds / dt))
        n *= 4


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _handwritten(comm: Any, n: int) -> None:
    """What a user writes by hand: send one task to each worker, then recv(ANY_SOURCE) and refill."""
    from mpi4py import MPI

    rank, size = comm.Get_rank(), comm.Get_size()
    if rank == 0:
        nxt, out = 0, {}
        for w in range(1, size):
            comm.send(nxt if nxt < n else None, dest=w)
            nxt += 1
        running = min(n, size - 1)
        st = MPI.Status()
        while running:
            i, r = comm.recv(source=MPI.ANY_SOURCE, status=st)
            out[i] = r
            w = st.Get_source()
            if nxt < n:
                comm.send(nxt, dest=w)
                nxt += 1
            else:
                comm.send(None, dest=w)
                running -= 1
        assert len(out) == n
    else:
        while (i := comm.recv(source=0)) is not None:
            comm.send((i, work(i)), dest=0)


def case(seconds: float, per_worker: int, rounds: int, kind: str = "sleep", loops: int = 0) -> None:
    global DURATION, LOOPS
    DURATION = seconds
    import numpy  # noqa: F401  (imported before the clock, as a user's program has it)
    from mpi4py import MPI
    from mpi4py.futures import MPICommExecutor

    import mpigather
    import mpigather.api  # noqa: F401  (its modules too: the clock times a run, not imports)
    import mpigather.worker  # noqa: F401  (a worker's: mpigather.api no longer imports them)

    world = MPI.COMM_WORLD
    rank, size = world.Get_rank(), world.Get_size()
    if kind == "python":
        LOOPS = loops or world.bcast(_calibrate(seconds) if rank == 0 else None, root=0)
    workers = size - 1
    n = per_worker * workers
    ideal = n * seconds / workers
    rows: dict[str, list[dict[str, float]]] = {}

    def measure(name: str, body: Any) -> None:
        world.Barrier()
        c0, t0 = _cpu(), time.perf_counter()
        body()
        t = time.perf_counter() - t0
        cpu = _cpu() - c0
        cpus = world.gather(cpu, root=0)
        world.Barrier()
        if rank == 0:
            assert cpus is not None
            rows.setdefault(name, []).append({
                "seconds": t, "efficiency": ideal / t,
                "master_cpu": cpus[0] / t, "worker_cpu": sum(cpus[1:]) / t,
                "worker_cpu_each": sum(cpus[1:]) / workers / t})

    def run_mpigather() -> None:
        s = mpigather.run(work, range(n), out=None)
        if s is not None:
            assert s.done == n, s

    def run_futures() -> None:
        with MPICommExecutor(world, root=0) as ex:
            if ex is not None:
                assert len(list(ex.map(work, range(n)))) == n

    for _ in range(rounds):
        measure("mpigather", run_mpigather)
        measure("MPICommExecutor", run_futures)
        measure("hand-written loop", lambda: _handwritten(world, n))
    if rank == 0:
        print("RESULT " + json.dumps({"workers": workers, "task_s": seconds, "tasks": n, "ideal_s": ideal,
                                      "kind": kind, "variants": rows}), flush=True)


def _launch(workers: int, seconds: float, per_worker: int, rounds: int, timeout: float,
            kind: str = "sleep") -> dict[str, Any]:
    mpiexec = str(Path(sys.executable).parent / "mpiexec")
    # the loop is calibrated here, alone on the machine (under mpiexec the other ranks' start-up
    # and waits share the cores with it, and it came out short)
    loops = _calibrate(seconds) if kind == "python" else 0
    cmd = [mpiexec, "-n", str(workers + 1), sys.executable, __file__, "case", str(seconds), str(per_worker),
           str(rounds), kind, str(loops)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as a user's install runs: compiled once
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")


def _spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} ({min(xs):.2f}-{max(xs):.2f}; first {xs[0]:.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cases", nargs="*", help="WORKERS:SECONDS[:TASKS_PER_WORKER[:python]]")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=900)
    a = ap.parse_args()
    if a.cases:
        cases = [tuple(c.split(":")) for c in a.cases]
    elif a.quick:
        cases = [("8", "0.05", "20"), ("32", "0.05", "20")]
    else:
        cases = [("32", "0.05", "40"), ("64", "0.5", "4"), ("128", "0.5", "4"), ("32", "3", "1"),
                 ("2", "0.2", "20", "python")]
    results = []
    for c in cases:
        workers, seconds = int(c[0]), float(c[1])
        per = int(c[2]) if len(c) > 2 else max(4, round(2.0 / seconds))
        kind = c[3] if len(c) > 3 else "sleep"
        r = _launch(workers, seconds, per, 1 if a.quick else a.rounds, a.timeout, kind)
        results.append(r)
        for name, runs in r["variants"].items():
            print(f"{workers:4d} workers x {seconds * 1e3:.0f} ms {kind}: {name:18s} efficiency "
                  f"{_spread([x['efficiency'] for x in runs])}  worker CPU each "
                  f"{_spread([100 * x['worker_cpu_each'] for x in runs])} % of a core", flush=True)
    out = ROOT / "bench" / ("raw/quick" if a.quick else "")
    out.mkdir(parents=True, exist_ok=True)
    (out / "many.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = ["# Many workers: more ranks than cores, sleeping tasks", "",
             "`python scripts/bench_many.py` on a 2-core machine. Efficiency = tasks x duration / workers over the"
             " measured time; median (fastest-slowest; first run of the launch). Worker CPU: per worker, % of a"
             " core, over the variant's wall time.", "",
             "Tasks sleep, or compute in Python (`python`: a loop calibrated to the duration before the launch).", "",
             "| workers | task | tasks | variant | efficiency | worker CPU each (%) | master CPU (%) |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        for name, runs in r["variants"].items():
            task = f"{r['task_s'] * 1e3:.0f} ms {r.get('kind', 'sleep')}"
            lines.append(f"| {r['workers']} | {task} | {r['tasks']} | {name} | "
                         f"{_spread([x['efficiency'] for x in runs])} | "
                         f"{_spread([100 * x['worker_cpu_each'] for x in runs])} | "
                         f"{_spread([100 * x['master_cpu'] for x in runs])} |")
    (out / "MANY.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'MANY.md'}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "case":
        case(float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] if len(sys.argv) > 5 else "sleep",
             int(sys.argv[6]) if len(sys.argv) > 6 else 0)
    else:
        main()
