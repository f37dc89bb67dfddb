"""A process pays at its start only for what its part of the run uses: h5py for an HDF5 output,
tqdm for a bar, pandas for ``to_pandas``, matplotlib for a plot; a worker never for the master's
code (scheduler, journal, output, lock). Which modules are loaded is checked, not how long it took."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from helpers import env, mpirun, show

# imported by none of the ways in at their start (importlib.metadata: the crc32c package's __init__)
HEAVY = ("h5py", "tqdm", "pandas", "matplotlib", "importlib.metadata")
MASTER_ONLY = ("mpigather.master", "mpigather.scheduler.core", "mpigather.journal", "mpigather.output",
               "mpigather.lock", "mpigather.tasks")
# nor by any process before its first result ("signal": the module that wraps _signal with enums)
NOT_AT_START = ("signal",)
# what an executor's root imports later if ever: outputs and their journal, task sources and their
# parameters, the workers' summaries, multi-step tasks, results in chunks, rows kept as a table, the
# worker's loop
ROOT_LATER = ("mpigather.journal", "mpigather.output", "mpigather.lock", "mpigather.tasks", "mpigather.workerstats",
              "mpigather.steps", "mpigather.recvmem", "mpigather.sinks.table_layout", "mpigather.sinks.table_store",
              "mpigather.worker")


def test_the_ways_in_import_nothing_heavy():
    code = textwrap.dedent(f"""
        import sys
        import mpigather
        mpigather.executor, mpigather.run, mpigather.GatherExecutor
        from mpigather.executor_factory import executor
        executor()  # (starts MPI: one rank)
        print([m for m in {HEAVY + MASTER_ONLY!r} if m in sys.modules])
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env())
    assert p.returncode == 0, show(p)  # type: ignore[arg-type]
    assert p.stdout.strip() == "[]", show(p)  # type: ignore[arg-type]


def test_the_crc32c_extension_is_the_package_s(tmp_path: Path):
    """The checksum loaded without the crc32c package's __init__ is its function, bit for bit."""
    code = textwrap.dedent("""
        import sys
        from mpigather.crc import crc32c
        assert "importlib.metadata" not in sys.modules and "crc32c" not in sys.modules
        import crc32c as packaged
        data = bytes(range(256)) * 41
        for chunk, start in [(b"", 0), (b"a", 0), (data, 0), (data, 12345), (memoryview(data)[7:], 99)]:
            assert crc32c(chunk, start) == packaged.crc32c(chunk, start), (chunk[:8], start)
        print("same")
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env())
    assert p.stdout.strip() == "same", show(p)  # type: ignore[arg-type]


def test_workers_of_an_in_memory_run_and_an_executor_import_only_their_part(tmp_path: Path):
    script = tmp_path / "lazy.py"
    script.write_text(textwrap.dedent(f"""
        import json, sys
        import mpigather
        from mpi4py import MPI

        WATCH = {HEAVY + MASTER_ONLY + NOT_AT_START!r}

        def loaded(_):
            return [m for m in WATCH if m in sys.modules]

        with mpigather.executor(progress="off") as ex:
            if ex is not None:
                by_executor = [x for r in ex.map(loaded, range(8)) for x in r]
        summary = mpigather.run(loaded, range(8), progress="off")
        if MPI.COMM_WORLD.rank == 0:
            by_run = [x for r in dict(summary.results).values() for x in r]
            ranks = {{w for w, s in summary.workers.items() if s.get("tasks")}}
            master = [m for m in {HEAVY!r} if m in sys.modules]
            print("RESULT " + json.dumps({{"executor": by_executor, "run": by_run, "master": master,
                                           "n": len(summary.results), "ranks": sorted(ranks)}}))
    """))
    p = mpirun(3, [str(script)], timeout=120)
    assert p.returncode == 0, show(p)
    [line] = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    got = json.loads(line[7:])
    assert got["n"] == 8 and got["ranks"], got  # the tasks ran on the workers
    assert got["executor"] == [] and got["run"] == [] and got["master"] == [], got


def test_an_executor_s_root_imports_only_what_its_first_result_needs(tmp_path: Path):
    """An executor with no output: at its first result the root has imported none of ROOT_LATER;
    each comes when it is needed, and then works (a result in chunks, a run's table, the summary's
    fleet)."""
    script = tmp_path / "lazy_root.py"
    script.write_text(textwrap.dedent(f"""
        import json, sys
        import numpy as np
        import mpigather
        from mpi4py import MPI

        LATER = {HEAVY + ROOT_LATER + NOT_AT_START!r}

        def big(n):
            return np.arange(n, dtype=np.float64)

        with mpigather.executor() as ex:
            if ex is not None:
                first = ex.submit(pow, 2, 3).result()
                at_first = [m for m in LATER if m in sys.modules]
                arr = ex.submit(big, 1 << 17).result()  # 1 MiB: in chunks, into fresh memory
                ok_big = bool(np.array_equal(arr, np.arange(1 << 17, dtype=np.float64)))
        summary = mpigather.run(abs, [-1, 2, -3], progress="off")  # rows kept as a table
        if MPI.COMM_WORLD.rank == 0:
            print("RESULT " + json.dumps({{"first": first, "at_first": at_first, "big": ok_big,
                                           "run": dict(summary.results),
                                           "fleet": sorted(summary.fleet.records)}}))
    """))
    p = mpirun(3, [str(script)], timeout=120)
    assert p.returncode == 0, show(p)
    [line] = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    got = json.loads(line[7:])
    assert got["first"] == 8 and got["at_first"] == [], got
    assert got["big"] and got["run"] == {"0": 1, "1": 2, "2": 3} and got["fleet"] == [1, 2], got


def test_the_code_before_a_first_result_is_imported_while_the_ranks_join(tmp_path: Path):
    """``startup.MASTER_CODE`` and ``EXECUTOR_WORKER_CODE`` cover what an executor's root and
    workers import before their first result: none of mpigather's modules is left to import
    once the join is made (the join completes while they import, not after)."""
    script = tmp_path / "warmed.py"
    script.write_text(textwrap.dedent("""
        import json, sys
        import mpigather
        import mpigather.executor_factory as F
        from mpi4py import MPI

        after: set = set()
        warming = F.warming

        def watched(modules):
            yield from warming(modules)
            after.update(sys.modules)

        F.warming = watched

        def late(_):
            return sorted(m for m in sys.modules if m.startswith("mpigather") and m not in after)

        with mpigather.executor() as ex:
            if ex is not None:
                worker_late = ex.submit(late, 0).result()
                root_late = late(0)
                print("RESULT " + json.dumps({"root": root_late, "worker": worker_late, "warmed": len(after)}))
    """))
    p = mpirun(3, [str(script)], timeout=120)
    assert p.returncode == 0, show(p)
    [line] = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    got = json.loads(line[7:])
    assert got["warmed"] and got["root"] == [] and got["worker"] == [], got
