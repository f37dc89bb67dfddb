"""A Ctrl-C ends the whole job at once, in the executor, in ``mpigather.run`` and on the command line.

A Ctrl-C in a terminal reaches ``mpiexec`` alone (MPICH's launcher starts each rank in a session
of its own), and ``mpiexec`` sends SIGINT to every rank: so do these tests, to a job running
``tests/ctrlc_jobs.py``. The job must end within ``LIMIT`` seconds with a non-zero status; a run
with an output keeps what was finished, its journal says where it stopped, and a resume
completes it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import HERE, communicate_or_fail, done_ids, env, journal_records, mpi_cmd, mpirun, show, stack

pytestmark = [pytest.mark.mpi,
              pytest.mark.skipif(not stack().is_mpich, reason="how MPICH's mpiexec forwards a Ctrl-C")]

LIMIT = 2.0  # seconds from the Ctrl-C until the job is gone (it takes about 0.1-0.6 s; a hang never ends)
N = 600  # tasks of 0.05 s: far more than run before the Ctrl-C
JOB = str(HERE / "ctrlc_jobs.py")


def ctrl_c(args: list[str], started, cwd: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    """Start ``mpiexec -n 3 python ARGS``, wait for ``started()``, send SIGINT to mpiexec as a
    terminal's Ctrl-C does; returns the finished job and the seconds it took to end."""
    cmd = mpi_cmd(3, args)
    e = env()
    e["PYTHONPATH"] = os.pathsep.join([str(HERE), e["PYTHONPATH"]])
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, env=e,
                          start_new_session=True) as proc:
        end = time.monotonic() + 120
        while not started():
            if proc.poll() is not None or time.monotonic() > end:
                out, err = communicate_or_fail(proc, 10, "the job did not get going")
                pytest.fail(f"the job ended or stalled before the Ctrl-C (exit {proc.returncode})\n{out}\n{err}")
            time.sleep(0.02)
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        out, err = communicate_or_fail(proc, 60, f"the job was still running 60 s after a Ctrl-C: {' '.join(cmd)}")
        took = time.monotonic() - t0
    print(f"{' '.join(args[:3])}: ended {took:.2f} s after the Ctrl-C, exit {proc.returncode}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), took


def started_on(out: Path):
    return lambda: len(done_ids(out)) >= 10


def check_stopped_run(out: Path, p: subprocess.CompletedProcess[str], took: float) -> list:
    """The job ended in time; its journal's end says interrupted (130), and counts what it calls done."""
    assert p.returncode != 0, show(p)
    assert took < LIMIT, f"the job took {took:.2f} s to end after the Ctrl-C\n{show(p)}"
    records = journal_records(out)
    ends = [r for r in records if r.get("ev") == "end"]
    assert ends and ends[-1].get("interrupted") and ends[-1].get("exit") == 130, \
        f"journal end: {json.dumps(ends[-1:])}\n{show(p)}"
    done = done_ids(out, records)
    assert len(done) == ends[-1]["done"] and 10 <= len(done) < N, (len(done), ends[-1])
    return done


def check_complete(out: Path, before: list) -> None:
    import mpigather

    with mpigather.load(out) as res:
        assert sorted(int(k) for k in res) == list(range(N))
        assert all(res[str(i)] == i * i for i in range(N))
    assert mpigather.verify(out) == (N, [], [])
    assert set(before) <= set(done_ids(out))


@pytest.mark.parametrize("maps", ["small", "large"])
def test_executor(tmp_path: Path, maps: str) -> None:
    """Maps of 16 tasks in a loop (a sampler), or one map of 100,000 tasks, most of them still waiting."""
    ready = tmp_path / "READY"
    p, took = ctrl_c([JOB, "executor", str(ready), maps], ready.exists, tmp_path)
    # non-zero: the ranks die of the SIGINT that Python raises again after a KeyboardInterrupt
    # (mpiexec reports 2, or 11 when it then kills a rank still tearing down: after MPI_Finalize)
    assert p.returncode != 0, show(p)
    assert took < LIMIT, f"the job took {took:.2f} s to end after the Ctrl-C\n{show(p)}"
    assert "KeyboardInterrupt" in p.stderr, show(p)


def test_library_run_keeps_what_is_done_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "out.h5"
    p, took = ctrl_c([JOB, "run", str(out), str(N)], started_on(out), tmp_path)
    assert "KeyboardInterrupt" in p.stderr, show(p)
    before = check_stopped_run(out, p, took)
    again = mpirun(3, [JOB, "run", str(out), str(N), "resume"], timeout=300, cwd=tmp_path)
    assert again.returncode == 0, show(again)
    check_complete(out, before)


def test_command_line_keeps_what_is_done_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "out.h5"
    args = ["-m", "mpigather", "run", "ctrlc_jobs:work", "--range", str(N), "--out", str(out), "--progress", "off"]
    p, took = ctrl_c(args, started_on(out), tmp_path)
    assert p.returncode == 130, show(p)
    assert "interrupted (Ctrl-C)" in p.stdout + p.stderr, show(p)
    before = check_stopped_run(out, p, took)
    status = subprocess.run([sys.executable, "-m", "mpigather", "status", str(out)], capture_output=True, text=True,
                            timeout=60, env=env())
    assert "interrupted" in status.stdout, status.stdout + status.stderr
    again = mpirun(3, [*args, "--resume"], timeout=300, cwd=tmp_path, extra_env={"PYTHONPATH": str(HERE)})
    assert again.returncode == 0, show(again)
    check_complete(out, before)
