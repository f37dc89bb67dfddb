"""One writer per output, an honest status, and outputs that fail under a run: under mpiexec,
with timeouts. Two runs on one output in every combination of --resume/--overwrite/neither;
status after a normal end, an MPI_Abort, a SIGKILL and while live; status --wait; a one-rank
launch that the launcher meant as several; a full disk (a real tmpfs) and a removed output,
each followed by a resume that completes the run bit for bit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from compare import check_all
from faultfuncs import expected
from helpers import communicate_or_fail, done_ids, env, gather, kill_group, mpiexec_path, show

import mpigather

pytestmark = pytest.mark.mpi


def start(tmp_path: Path, ranks: int, func: str, out: Path, *extra: str) -> subprocess.Popen[str]:
    cmd = [mpiexec_path(), "-n", str(ranks), sys.executable, "-m", "mpigather", "run", func, "--out", str(out),
           "--progress", "off", *extra]
    e = env()
    e["MPIGATHER_TEST_DIR"] = str(tmp_path)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e,
                            start_new_session=True)


def wait_for(cond, timeout: float = 30.0, what: str = "") -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def finish(p: subprocess.Popen[str], timeout: float = 90) -> tuple[int, str, str]:
    out, err = communicate_or_fail(p, timeout, f"run did not end in {timeout} s")
    return p.returncode, out, err


def status(out: Path, *extra: str, timeout: float = 60) -> tuple[int, dict]:
    p = subprocess.run([sys.executable, "-m", "mpigather", "status", str(out), "--json", *extra],
                       capture_output=True, text=True, timeout=timeout, env=env())
    assert p.stdout.strip(), p.stderr
    return p.returncode, json.loads(p.stdout)


def adds_up(info: dict) -> bool:
    return (info["done"] + info["failed"] + info["running"] + info["queued"] + info["pending"]) == info["total"]


def executions(tmp_path: Path) -> Counter:
    log = tmp_path / "executions.log"
    return Counter(int(line.split()[0]) for line in log.read_text().splitlines()) if log.exists() else Counter()


# -- one writer -----------------------------------------------------------------------------


@pytest.mark.parametrize("second", [(), ("--resume",), ("--overwrite",)], ids=["plain", "resume", "overwrite"])
@pytest.mark.parametrize("ranks", [1, 3])
def test_a_second_run_on_a_live_output_is_refused_and_the_first_is_exact(tmp_path, second, ranks):
    out = tmp_path / "same.h5"
    n = 1000  # far longer than the test: the first run is stopped in order once the second was refused
    first = start(tmp_path, 3, "faultfuncs:slow", out, "--range", str(n), "--grace", "10")
    wait_for(lambda: len(done_ids(out)) >= 2, what="the first run to finish some tasks")
    t0 = time.monotonic()
    p = gather(ranks, "faultfuncs:slow", out, "--range", str(n), *second, timeout=60,
               extra_env={"MPIGATHER_TEST_DIR": str(tmp_path / "second")})
    took = time.monotonic() - t0
    assert first.poll() is None, "the first run ended before the second one started: the test proves nothing"
    assert p.returncode == 2, show(p)
    text = p.stdout + p.stderr
    assert text.count("mpigather: error:") == 1, show(p)
    assert "is being written by pid" in text and "wait for it or stop it" in text, show(p)
    assert took < 20, f"refused only after {took:.1f} s"
    assert not (tmp_path / "second" / "executions.log").exists(), "the refused run ran tasks"
    os.killpg(first.pid, signal.SIGUSR1)  # stop the first run in order
    rc, so, se = finish(first)
    assert rc == 75, f"{so}\n{se}"
    ids = done_ids(out)
    assert len(ids) == len(set(ids)) > 0, "each task recorded done exactly once"
    assert all(c == 1 for c in executions(tmp_path).values())
    with mpigather.load(str(out) + ".partial") as res:
        assert check_all(res, expected, sorted(ids)) == []
    assert [p.name for p in tmp_path.glob("same.h5.partial*")] == ["same.h5.partial"], "a file was set aside"


# -- an honest status --------------------------------------------------------------------------


def test_status_while_live_after_the_end_and_with_wait(tmp_path):
    out = tmp_path / "o.h5"
    n = 150  # about 8 s: several status calls (a second each on a loaded machine) fit in it
    p = start(tmp_path, 3, "faultfuncs:slow", out, "--range", str(n))
    wait_for(lambda: len(done_ids(out)) >= 2, what="some tasks done")
    seen: list = []  # the status that showed running tasks: a second call could come after the end

    def running() -> bool:
        seen[:] = status(out)
        return seen[1].get("running", 0) > 0

    wait_for(running, what="a heartbeat with running tasks")
    rc, live = seen
    assert rc == 0 and live["state"] == "running" and live["live"] and adds_up(live), live
    assert live["running"] <= 2 and live["holder"]["pid"] > 0
    t0 = time.monotonic()
    rc, final = status(out, "--wait", timeout=120)
    noticed = time.monotonic() - t0
    assert rc == 0 and final["state"] == "finished" and final["done"] == n and adds_up(final), final
    assert finish(p)[0] == 0
    print(f"\nstatus --wait returned {noticed:.2f} s after it was called (the run had {n} tasks)")


def test_status_wait_exits_with_the_runs_status(tmp_path):
    out = tmp_path / "o.h5"
    p = start(tmp_path, 3, "faultfuncs:always_raise", out, "--range", "12")
    wait_for(lambda: Path(str(out) + ".journal").exists(), what="the journal")
    rc, info = status(out, "--wait", timeout=120)
    assert rc == 1 and info["state"] == "finished" and info["failed"] == 1 and adds_up(info), info
    assert finish(p)[0] == 1


def test_status_after_an_mpi_abort_and_after_a_sigkill(tmp_path):
    out = tmp_path / "o.h5"
    p = start(tmp_path, 3, "faultfuncs:abort_at_5", out, "--range", "40")
    rc, _, _ = finish(p)
    assert rc != 0
    rc, info = status(out)
    assert info["state"] == "dead" and not info["live"] and "resumable" in info["detail"], info
    assert adds_up(info) and info["running"] == 0, info
    rc, info = status(out, "--wait", timeout=30)
    assert rc == 75, info  # killed: resumable

    out2 = tmp_path / "k.h5"
    p = start(tmp_path, 3, "faultfuncs:slow", out2, "--range", "40")
    wait_for(lambda: len(done_ids(out2)) >= 3, what="some tasks done")
    kill_group(p.pid)
    finish(p)
    rc, info = status(out2)
    assert info["state"] == "dead" and adds_up(info) and info["pending"] == 40 - info["done"], info
    assert "no heartbeat for" in info["detail"], info


def test_a_one_rank_process_the_launcher_started_as_three_is_refused():
    p = subprocess.run([sys.executable, "-m", "mpigather", "run", "faultfuncs:ok", "--range", "3", "--out",
                        "/tmp/never-written.h5"], capture_output=True, text=True, timeout=60,
                       env={**env(), "SLURM_NTASKS": "3", "SLURM_STEP_ID": "0", "SLURM_PROCID": "0"})
    assert p.returncode == 2, show(p)
    assert "launcher started 3" in p.stderr and "srun --mpi=pmi2" in p.stderr, show(p)
    assert not Path("/tmp/never-written.h5.journal").exists()


def test_a_one_rank_run_honours_sigterm(tmp_path):
    out = tmp_path / "o.h5"
    p = start(tmp_path, 1, "faultfuncs:slow", out, "--range", "60", "--grace", "5")
    wait_for(lambda: len(done_ids(out)) >= 3, what="some tasks done")
    os.killpg(p.pid, signal.SIGTERM)
    rc, so, se = finish(p)
    assert rc == 75, f"{so}\n{se}"
    p = gather(1, "faultfuncs:slow", out, "--range", "60", "--resume", timeout=60,
               extra_env={"MPIGATHER_TEST_DIR": str(tmp_path)})
    assert p.returncode == 0, show(p)
    assert sorted(done_ids(out)) == list(range(60))


# -- a full disk, and an output that goes away ---------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path):
    """A small real file system that can be filled up, then grown."""
    d = tmp_path / "disk"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(d)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}): the full-disk test needs root")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def grow(d: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(d)], check=True)


@pytest.mark.parametrize("sink", ["h5", "dir"])
def test_a_full_disk_fails_clearly_then_resume_completes(tmpfs, tmp_path, sink):
    out = tmpfs / ("o.h5" if sink == "h5" else "odir")
    n = 30  # every third task 2.4 MB: about 25 MB in all, more than the 16 MB disk holds
    p = gather(3, "faultfuncs:ok", out, "--range", str(n), timeout=90,
               extra_env={"MPIGATHER_TEST_DIR": str(tmp_path)})
    assert p.returncode == 3, show(p)
    assert "No space left on device" in p.stderr and "--resume continues the run" in p.stderr, show(p)
    rc, info = status(out)
    assert not info["live"] and adds_up(info), info
    grow(tmpfs, "200m")
    p = gather(3, "faultfuncs:ok", out, "--range", str(n), "--resume", timeout=90,
               extra_env={"MPIGATHER_TEST_DIR": str(tmp_path)})
    assert p.returncode == 0, show(p)
    with mpigather.load(out) as res:
        assert check_all(res, expected, range(n)) == []
    assert mpigather.verify(out) == (n, [], [])


def test_a_disk_filled_by_someone_else_mid_run_then_resume(tmpfs, tmp_path):
    out = tmpfs / "o.h5"
    n = 40
    p = start(tmp_path, 3, "faultfuncs:slow", out, "--range", str(n))
    wait_for(lambda: len(done_ids(out)) >= 3, what="some tasks done")
    hog = tmpfs / "hog"
    subprocess.run(["dd", "if=/dev/zero", f"of={hog}", "bs=1M", "count=64"], capture_output=True)
    rc, so, se = finish(p)
    assert rc == 3 and "No space left on device" in se, f"{so}\n{se}"
    hog.unlink()
    grow(tmpfs, "200m")  # the whole run needs about 32 MB
    p = gather(3, "faultfuncs:slow", out, "--range", str(n), "--resume", timeout=90,
               extra_env={"MPIGATHER_TEST_DIR": str(tmp_path)})
    assert p.returncode == 0, show(p)
    with mpigather.load(out) as res:
        assert check_all(res, expected, range(n)) == []


def test_an_output_directory_removed_mid_run_then_resume(tmp_path):
    out = tmp_path / "outdir"
    p = gather(3, "faultfuncs:sabotage_output", out, "--range", "20", timeout=60,
               extra_env={"MPIGATHER_TEST_DIR": str(tmp_path), "MPIGATHER_TEST_OUT": str(out)})
    assert p.returncode == 3, show(p)
    assert p.stderr.count("mpigather: error: the master failed (FileNotFoundError") == 1, show(p)
    p = gather(3, "faultfuncs:ok", out, "--range", "20", "--resume", timeout=60,
               extra_env={"MPIGATHER_TEST_DIR": str(tmp_path)})
    assert p.returncode == 0, show(p)
    with mpigather.load(out) as res:
        assert check_all(res, expected, range(20)) == []
