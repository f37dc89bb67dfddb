"""Cold start: what a fresh process pays before its first result, side by side with mpi4py.

    python scripts/bench_coldstart.py                  # 3 ranks, 5 launches of each case
    python scripts/bench_coldstart.py --np 4 --repeat 9
    python scripts/bench_coldstart.py --keep-dont-write-bytecode

Every measurement is one fresh ``mpiexec -n N`` launch of this script (``--child CASE``), the
cases interleaved so that a busy machine slows them alike. Each child has numpy and
``mpi4py.MPI`` imported already (as a user's program has), waits on a barrier, then times:

- ``executor``: ``import mpigather; mpigather.executor`` (the import), then
  ``with mpigather.executor() as ex`` (to enter), then the first result of
  ``ex.submit(pow, 2, 3)``, then leaving the block (exit);
- ``MPICommExecutor``: the same with ``from mpi4py.futures import MPICommExecutor``;
- ``run``: ``mpigather.run(sq, range(4))`` (in memory) twice in the process, first and second;
- ``MPICommExecutor map``: ``with MPICommExecutor() as ex: list(ex.map(sq, range(4)))``, twice.

Prints one table: fastest / median / slowest over the launches, in ms. A user's installed
package runs with ``.pyc`` files, so the children run with ``PYTHONDONTWRITEBYTECODE`` unset
(``--keep-dont-write-bytecode`` keeps the caller's environment as it is).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = ("executor", "MPICommExecutor", "run", "MPICommExecutor map")


def sq(x: int) -> int:
    return x * x


# -- a child: one launch, one case ------------------------------------------------------------


def child(case: str) -> None:
    import numpy  # noqa: F401 - as a user's program has it
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    comm.Barrier()
    row: dict[str, float] = {}
    t0 = time.perf_counter()
    if case in ("executor", "MPICommExecutor"):
        if case == "executor":
            import mpigather

            make = mpigather.executor
        else:
            from mpi4py.futures import MPICommExecutor

            make = MPICommExecutor
        ti = time.perf_counter()
        with make() as ex:
            t1 = time.perf_counter()
            if ex is not None:
                ex.submit(pow, 2, 3).result()
                t2 = time.perf_counter()
                row = {"import": ti - t0, "enter": t1 - ti, "first result": t2 - t1}
        row["exit"] = time.perf_counter() - t0 - sum(row.values())
    else:
        times = []
        for _ in range(2):
            comm.Barrier()
            t = time.perf_counter()
            if case == "run":
                import mpigather

                mpigather.run(sq, range(4), progress="off")
            else:
                from mpi4py.futures import MPICommExecutor

                with MPICommExecutor() as ex:
                    if ex is not None:
                        assert list(ex.map(sq, range(4))) == [0, 1, 4, 9]
            times.append(time.perf_counter() - t)
        row = {"first": times[0], "second": times[1], "first - second": times[0] - times[1]}
    if comm.rank == 0:
        print("ROW " + json.dumps(row), flush=True)


# -- the driver -------------------------------------------------------------------------------


def mpiexec() -> str:
    exe = Path(sys.executable).parent / "mpiexec"
    found = str(exe) if exe.exists() else shutil.which("mpiexec")
    if not found:
        raise SystemExit("bench_coldstart: no mpiexec next to python or on PATH")
    return found


def launch(case: str, np: int, env: dict[str, str], timeout: float) -> dict[str, float]:
    cmd = [mpiexec(), "-n", str(np), sys.executable, str(Path(__file__).resolve()), "--child", case]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    rows = [line[4:] for line in proc.stdout.splitlines() if line.startswith("ROW ")]
    if proc.returncode != 0 or not rows:
        raise SystemExit(f"bench_coldstart: {case} failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    out: dict[str, float] = json.loads(rows[-1])
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    ap.add_argument("--np", type=int, default=3, help="ranks per launch (default 3)")
    ap.add_argument("--repeat", type=int, default=5, help="launches of each case (default 5)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds a launch may take")
    ap.add_argument("--keep-dont-write-bytecode", action="store_true",
                    help="leave PYTHONDONTWRITEBYTECODE as it is in this environment")
    args = ap.parse_args(argv)
    if args.child:
        child(args.child)
        return
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MPIGATHER_", "MPI4PY_FUTURES_"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT), env.get("PYTHONPATH", "")] if p)
    if not args.keep_dont_write_bytecode:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    results: dict[str, list[dict[str, float]]] = {c: [] for c in CASES}
    launch("executor", args.np, env, args.timeout)  # once unmeasured: the .pyc files exist after it
    for _ in range(args.repeat):
        for case in CASES:
            results[case].append(launch(case, args.np, env, args.timeout))
    print(f"cold start, {args.np} ranks, {args.repeat} launches per case, numpy and mpi4py.MPI imported,"
          f" PYTHONDONTWRITEBYTECODE {'set' if env.get('PYTHONDONTWRITEBYTECODE') else 'unset'}; ms:")
    print(f"{'case':<22}{'measure':<16}{'fastest':>9}{'median':>9}{'slowest':>9}")
    for case in CASES:
        for key in results[case][0]:
            values = sorted(1e3 * r[key] for r in results[case])
            print(f"{case:<22}{key:<16}{values[0]:>9.1f}{statistics.median(values):>9.1f}{values[-1]:>9.1f}")


if __name__ == "__main__":
    main()
