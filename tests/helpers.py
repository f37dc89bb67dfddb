"""Test helpers. Every MPI run is a subprocess with a timeout, so a hang fails one test."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

HERE = Path(__file__).parent
ROOT = HERE.parent


def mpiexec_path() -> str:
    exe = Path(sys.executable).parent / "mpiexec"
    if exe.exists():
        return str(exe)
    found = shutil.which("mpiexec")
    if not found:
        pytest.skip("no mpiexec on PATH")
    return found


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT), e.get("PYTHONPATH", "")])
    e.pop("MPIGATHER_CHUNK_SIZE", None)
    return e


def mpirun(n: int, args: list[str], *, timeout: float = 120, cwd: Path | None = None,
           extra_env: dict[str, str] | None = None, mpi_args: list[str] | None = None,
           ) -> subprocess.CompletedProcess[str]:
    """``mpiexec -n N python ARGS`` with a timeout; returns the finished process (text output)."""
    cmd = [mpiexec_path(), *(mpi_args or []), "-n", str(n), sys.executable, *args]
    e = env()
    if extra_env:
        e.update(extra_env)
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=e)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr
        pytest.fail(f"mpiexec timed out after {timeout} s: {' '.join(cmd)}\nstdout:\n{out}\nstderr:\n{err}")


def gather(n: int, func: str, out: Path, *extra: str, timeout: float = 120,
           **kw: object) -> subprocess.CompletedProcess[str]:
    """Run ``python -m mpigather run tests.taskfuncs-style FUNC`` under mpiexec."""
    return mpirun(n, ["-m", "mpigather", "run", func, "--out", str(out), "--progress", "off", *extra],
                  timeout=timeout, **kw)  # type: ignore[arg-type]


def show(p: subprocess.CompletedProcess[str]) -> str:
    return f"exit {p.returncode}\n--- stdout\n{p.stdout}\n--- stderr\n{p.stderr}"


def edit(template: Path, values: dict[str, str], directives: dict[str, str]) -> str:
    """A batch template with its EDIT lines changed, as a user would: ``NAME=...`` lines, and
    ``#SBATCH``/``#PBS`` options (each ``old`` text must appear in the template)."""
    text = template.read_text()
    for name, val in values.items():
        text, n = re.subn(rf"(?m)^{name}=.*$", lambda _m, name=name, val=val: f"{name}={val}  # edited by the test",
                          text)
        assert n == 1, f"{template.name} has no line {name}=..."
    for old, new in directives.items():
        assert old in text, f"{template.name} has no {old!r}"
        text = text.replace(old, new)
    return text


def executions(test_dir: Path) -> Counter[int]:
    """How many times each task started, from the executions.log that tests/batchfuncs.py writes."""
    log = test_dir / "executions.log"
    return Counter(int(x) for x in log.read_text().split()) if log.exists() else Counter()


def check_batch_results(out: Path, n: int) -> None:
    """The output of a batch-template run of batchfuncs.slow over range(n): every result there,
    bit for bit what an uninterrupted run gives, and every checksum right."""
    from batchfuncs import value
    from compare import same

    import mpigather

    with mpigather.load(out) as res:
        assert sorted(res, key=int) == [str(i) for i in range(n)]
        bad = [i for i in range(n) if not same(res[str(i)], value(i))]
        assert bad == [], f"results differ from an uninterrupted run for tasks {bad}"
    assert mpigather.verify(out) == (n, [], [])
