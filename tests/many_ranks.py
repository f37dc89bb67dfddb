"""Many ranks on few cores, under mpiexec: ``mpiexec -n N python tests/many_ranks.py SECONDS PER_WORKER``.

Each task sleeps (as a task waiting on I/O or a GPU does). Every rank measures the CPU it used
during the run; rank 0 checks every result and prints ``RESULT {json}``: the wall time, the
efficiency (ideal time over wall), how many tasks each worker ran, and the workers' CPU.
"""

from __future__ import annotations

import json
import resource
import sys
import time

from mpi4py import MPI

import mpigather
import mpigather.api  # noqa: F401  (imported before the clock, as a user's program has it)
import mpigather.worker  # noqa: F401  (and numpy with it: what is measured is how workers wait, not imports)

SECONDS = float(sys.argv[1])
PER_WORKER = int(sys.argv[2])


def nap(i: int) -> dict[str, object]:
    time.sleep(SECONDS)
    return {"x": float(i), "ok": True}


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


comm = MPI.COMM_WORLD
workers = comm.Get_size() - 1
n = workers * PER_WORKER
comm.Barrier()
c0, t0 = cpu(), time.perf_counter()
s = mpigather.run(nap, range(n), out=None)
wall = time.perf_counter() - t0
used = comm.gather(cpu() - c0, root=0)
if s is not None:
    assert used is not None
    assert s.done == n and not s.failed, s.text()
    assert all(s.results[i] == {"x": float(i), "ok": True} for i in range(n))
    tasks = sorted(w["tasks"] for w in s.workers.values())
    print("RESULT " + json.dumps({"workers": workers, "tasks": n, "wall": wall,
                                  "efficiency": n * SECONDS / workers / wall, "tasks_per_worker": tasks,
                                  "worker_cpu_max": max(used[1:]), "worker_cpu_sum": sum(used[1:])}), flush=True)
