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

        WATCH = {HEAVY + MASTER_ONLY!r}

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
