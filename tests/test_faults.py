"""Fault injection under mpiexec: exceptions, retries, hangs past the lease, killed workers,
SIGTERM, and SIGKILL of the whole job followed by --resume. Every run has a timeout."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from compare import check_all
from faultfuncs import expected
from helpers import done_ids, env, gather, kill_group, mpi_cmd, show, stack

import mpigather

pytestmark = [pytest.mark.mpi, pytest.mark.matrix]


def fenv(tmp_path: Path) -> dict[str, str]:
    return {"MPIGATHER_TEST_DIR": str(tmp_path)}


def executions(tmp_path: Path) -> Counter:
    log = tmp_path / "executions.log"
    if not log.exists():
        return Counter()
    return Counter(int(line.split()[0]) for line in log.read_text().splitlines())


def journal(out: Path) -> list[dict]:
    return [json.loads(line) for line in Path(str(out) + ".journal").read_text().splitlines() if line.strip()]


def run_timed(tmp_path, ranks, func, out, *args, timeout=120):
    t0 = time.monotonic()
    p = gather(ranks, func, out, *args, timeout=timeout, extra_env=fenv(tmp_path))
    return p, time.monotonic() - t0


def test_success(tmp_path):
    out = tmp_path / "o.h5"
    p, dt = run_timed(tmp_path, 3, "faultfuncs:ok", out, "--range", "12")
    assert p.returncode == 0, show(p)
    with mpigather.load(out) as res:
        assert check_all(res, expected, range(12)) == []
    assert set(executions(tmp_path).values()) == {1}
    print(f"\nFAULT success: exit {p.returncode} in {dt:.1f} s")


def test_exception_is_reported_and_the_run_goes_on(tmp_path):
    out = tmp_path / "o.h5"
    p, dt = run_timed(tmp_path, 3, "faultfuncs:always_raise", out, "--range", "8")
    assert p.returncode == 1, show(p)
    assert "FAILED 2" in p.stdout and "RuntimeError: task 2 always fails" in p.stdout, show(p)
    with mpigather.load(out) as res:
        assert sorted(res, key=int) == [str(i) for i in range(8) if i != 2]
        assert check_all(res, expected, [i for i in range(8) if i != 2]) == []
    recs = journal(out)
    (error,) = [r for r in recs if r["ev"] == "error"]  # the error once, with its first traceback
    assert "Traceback" in error["error"] and "host" in error["error"] and "rank" in error["error"]
    failed = [r for r in recs if r["ev"] == "failed"]
    assert failed == [{"ev": "failed", "err": error["k"], "final": True, "pos": [[2, 1]]}], failed
    print(f"\nFAULT exception: exit {p.returncode} in {dt:.1f} s")


def test_exception_then_success_on_retry_elsewhere(tmp_path):
    out = tmp_path / "o.h5"
    p, dt = run_timed(tmp_path, 3, "faultfuncs:raise_once", out, "--range", "8", "--retries", "1")
    assert p.returncode == 0, show(p)
    with mpigather.load(out) as res:
        assert check_all(res, expected, range(8)) == []
        assert res.attrs("2")["attempt"] == 2
        done_rank = res.attrs("2")["rank"]
    fail = [r for r in journal(out) if r["ev"] == "failed"]
    assert len(fail) == 1 and not fail[0]["final"] and fail[0]["pos"] == [[2, 1]]  # an attempt, retried
    assert executions(tmp_path)[2] == 2
    pids = [line.split()[1] for line in (tmp_path / "executions.log").read_text().splitlines()
            if line.split()[0] == "2"]
    assert len(set(pids)) == 2 and done_rank is not None  # retried on the other worker
    print(f"\nFAULT exception then retry: exit {p.returncode} in {dt:.1f} s")


def test_exhausted_retries_fail_with_last_traceback(tmp_path):
    out = tmp_path / "o"
    p, dt = run_timed(tmp_path, 3, "faultfuncs:always_raise", out, "--range", "5", "--retries", "2")
    assert p.returncode == 1, show(p)
    assert executions(tmp_path)[2] == 3
    fails = [r for r in journal(out) if r["ev"] == "failed"]
    assert all(r["pos"] == [[2, 1]] for r in fails) and [r["final"] for r in fails][-1] is True, fails
    assert [r["final"] for r in fails].count(True) == 1 and len(fails) >= 2  # the retried attempts, then the end


@pytest.mark.parametrize("ranks", [3, 4])
def test_hang_past_the_deadline(tmp_path, ranks):
    """Task 3 hangs forever in C holding the GIL; it completes elsewhere and the job still ends."""
    out = tmp_path / "o.h5"
    p, dt = run_timed(tmp_path, ranks, "faultfuncs:hang_once", out, "--range", "12", "--timeout", "2",
                      timeout=90)
    assert p.returncode == 0, show(p)
    assert dt < 30, f"took {dt:.1f} s"
    assert "is stuck in task 3" in p.stdout, show(p)
    with mpigather.load(out) as res:
        assert check_all(res, expected, range(12)) == []
        assert res.attrs("3")["attempt"] == 2
    ex = executions(tmp_path)
    assert ex[3] == 2 and all(ex[i] == 1 for i in range(12) if i != 3)
    print(f"\nFAULT hang past deadline ({ranks} ranks): exit {p.returncode} in {dt:.1f} s")


def test_single_worker_hang_fails_the_task_and_ends(tmp_path):
    """With one worker, a hung task cannot run elsewhere: the run must still end, reporting it."""
    out = tmp_path / "o.h5"
    p, dt = run_timed(tmp_path, 2, "faultfuncs:hang_once", out, "--range", "6", "--timeout", "1.5",
                      timeout=90)
    assert p.returncode == 1, show(p)
    assert dt < 60, f"took {dt:.1f} s"
    assert "no healthy worker" in p.stdout + p.stderr, show(p)


def test_killed_worker_ends_the_job_promptly_and_resume_completes(tmp_path):
    """A worker SIGKILLed mid-run. Neither launcher keeps a job with a lost process (MPICH's
    hydra ends every rank, exit 9; Open MPI's mpiexec sends SIGTERM then SIGKILL to the others,
    exit 137): the job must end at once, and --resume must complete it."""
    out = tmp_path / "o.h5"
    p, dt = run_timed(tmp_path, 3, "faultfuncs:die_once", out, "--range", "12", timeout=90)
    assert p.returncode != 0, show(p)
    assert dt < 30, f"took {dt:.1f} s"
    s = stack()
    if s.is_mpich:
        assert p.returncode == 9 and "BAD TERMINATION" in p.stdout + p.stderr, show(p)
    else:
        assert p.returncode == 137 and "exited on signal 9" in " ".join(p.stderr.split()), show(p)
    before = set(done_ids(out))
    p2, dt2 = run_timed(tmp_path, 3, "faultfuncs:die_once", out, "--range", "12", "--resume")
    assert p2.returncode == 0, show(p2)
    with mpigather.load(out) as res:
        assert check_all(res, expected, range(12)) == []
    ex = executions(tmp_path)
    assert all(ex[i] == 1 for i in before), (before, ex)
    print(f"\nFAULT worker killed ({s.name}): job ended (exit {p.returncode}) in {dt:.1f} s; "
          f"resume exit {p2.returncode} in {dt2:.1f} s; {len(before)} done before, not rerun")


def _start(tmp_path, func, out, n, *extra):
    cmd = mpi_cmd(3, ["-m", "mpigather", "run", func, "--range", str(n), "--out", str(out), "--progress", "off",
                      *extra])
    e = env()
    e.update(fenv(tmp_path))
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e,
                            start_new_session=True)


def _done_count(out: Path) -> int:
    return len(done_ids(out))


@pytest.mark.parametrize("sig", ["TERM", "USR1"])
def test_stop_signal_exits_resumable_then_resume_completes(tmp_path, sig):
    """The stop signal sent to mpiexec, as a batch script forwards it. SIGUSR1 reaches every rank
    under both launchers: exit 75, in order. SIGTERM does too under MPICH's hydra, but Open MPI's
    mpiexec answers it by ending the job (SIGTERM to every rank, SIGKILL about 0.25 s later), so
    there it must end promptly and stay resumable (why the batch templates forward SIGUSR1)."""
    out = tmp_path / "o.h5"
    n, grace = 60, 5
    proc = _start(tmp_path, "faultfuncs:slow", out, n, "--grace", str(grace))
    t_end = time.monotonic() + 60
    while _done_count(out) < 10 and time.monotonic() < t_end and proc.poll() is None:
        time.sleep(0.02)
    t0 = time.monotonic()
    proc.send_signal(getattr(signal, f"SIG{sig}"))
    try:
        stdout, stderr = proc.communicate(timeout=grace + 20)
    finally:
        if proc.poll() is None:
            kill_group(proc.pid)
    dt = time.monotonic() - t0
    clean = sig == "USR1" or stack().is_mpich
    if clean:
        assert proc.returncode == mpigather.INTERRUPTED, f"{stdout}\n{stderr}"
        assert dt < grace + 5, f"took {dt:.1f} s to stop"
    else:
        assert proc.returncode != 0, f"{stdout}\n{stderr}"
        assert dt < 5, f"took {dt:.1f} s to end"
    done_before = set(done_ids(out))
    assert 10 <= len(done_before) < n
    p2 = gather(3, "faultfuncs:slow", out, "--range", str(n), "--resume", extra_env=fenv(tmp_path))
    assert p2.returncode == 0, show(p2)
    with mpigather.load(out) as res:
        assert check_all(res, expected, range(n)) == []
    ex = executions(tmp_path)
    assert all(ex[i] == 1 for i in done_before)
    print(f"\nFAULT SIG{sig} ({stack().name}): exit {proc.returncode} {dt:.1f} s after the signal; "
          f"{len(done_before)} done before, executions {sum(ex.values())} for {n} tasks")


def test_a_task_begun_before_the_stop_signal_reached_the_master_is_stored(tmp_path):
    """Tasks 6, 16 and 26 each signal the master and return at once, so their worker may begin
    the next task it holds before the master's revoke reaches it. That task runs to its end
    within the grace period and is stored: after each of the three stops every task that ran
    is done, and the resumes run none of them again. (The master once cut the lease at the
    task it knew of and dropped the result of the one begun meanwhile, in about half of the
    stops here; the resume ran it a second time.)"""
    out = tmp_path / "o.h5"
    n, func = 40, "faultfuncs:stops_at_6_16_26"
    for stop in range(3):
        proc = _start(tmp_path, func, out, n, "--grace", "60", *(["--resume"] if stop else []))
        try:
            stdout, stderr = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                kill_group(proc.pid)
        assert proc.returncode == mpigather.INTERRUPTED, f"stop {stop}: {stdout}\n{stderr}"
        ran, done = executions(tmp_path), set(done_ids(out))
        assert set(ran) == done and len(done) < n, (stop, sorted(ran), sorted(done))
    p = gather(3, func, out, "--range", str(n), "--resume", extra_env=fenv(tmp_path))
    assert p.returncode == 0, show(p)
    with mpigather.load(out) as res:
        assert check_all(res, expected, range(n)) == []
    assert executions(tmp_path) == dict.fromkeys(range(n), 1)


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the whole job at one instant: mpiexec, its proxy and every rank."""
    kill_group(proc.pid)
    proc.communicate(timeout=30)  # reaps it and closes the pipes


@pytest.mark.parametrize("point", ["early", "mid-stream", "near-end"])
def test_sigkill_anywhere_then_resume_is_exact(tmp_path, point):
    """kill -9 of the whole job, then --resume: the same results as an uninterrupted run,
    and no task that the journal called done runs again."""
    out = tmp_path / "o.h5"
    n = 24
    proc = _start(tmp_path, "faultfuncs:slow_big", out, n, "--chunk-size", "64KiB")
    partial = Path(str(out) + ".partial")
    t_end = time.monotonic() + 90
    last_done, size_at_done = -1, 0
    try:
        while time.monotonic() < t_end and proc.poll() is None:
            done = _done_count(out)
            size = partial.stat().st_size if partial.exists() else 0
            if done != last_done:
                last_done, size_at_done = done, size
            if point == "early" and done >= 1:
                break
            if point == "mid-stream" and done >= 2 and size - size_at_done > (32 << 20):
                break  # the file grew by 32 MiB since the last completion: a result is streaming in
            if point == "near-end" and done >= n - 3:
                break
            time.sleep(0.005)
    finally:
        _kill_tree(proc)
    assert proc.returncode != 0, "the job finished before it could be killed"
    done_before = set(done_ids(out))
    runs_before = sum(executions(tmp_path).values())
    p2 = gather(3, "faultfuncs:slow_big", out, "--range", str(n), "--resume", "--chunk-size", "64KiB",
                extra_env=fenv(tmp_path), timeout=120)
    assert p2.returncode == 0, show(p2)
    with mpigather.load(out) as res:
        assert len(res) == n
        assert check_all(res, lambda i: expected(i, "slow_big"), range(n)) == []
    assert mpigather.verify(out)[1:] == ([], [])
    ex = executions(tmp_path)
    rerun = {i for i in done_before if ex[i] > 1}
    assert not rerun, f"tasks done before the kill ran again: {rerun}"
    runs_after = sum(ex.values()) - runs_before
    assert runs_after <= n - len(done_before) + 2  # at most the tasks in flight are redone
    print(f"\nKILL-9 {point}: {len(done_before)} done before the kill ({runs_before} executions);"
          f" resume ran {runs_after} executions for the {n - len(done_before)} not done")
