"""The batch templates (mpigather/templates/: slurm.sbatch, pbs.sh) on a fake Slurm/PBS (tests/fake_slurm).

Each template is copied and edited the way a user would (only its EDIT lines), submitted with the
fake sbatch/qsub, and run allocation by allocation by fakeslurm.Controller, which also plays
scancel, the time limit and KillWait. The test plays the wall-time warning: it sends the signal of
the template's ``#SBATCH --signal`` line once the journal shows finished tasks. Then the script
must stop mpigather in order (exit 75), and the follow-up job (or the requeued one) must resume
and finish, with exactly the results of an uninterrupted run, each task run once. A plain scancel
ends the chain; a wall-time kill does not. tests/test_slurm_real.py runs the same on a real Slurm.

No test assumes a quiet machine: a chain is followed to its end, however many allocations a loaded
machine makes it take (``Cluster.to_the_end``), and then its outcome is checked.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import PBS_TEMPLATE, SLURM_TEMPLATE, check_batch_results, done_ids, edit, env, executions, mpiexec_path

sys.path.insert(0, str(Path(__file__).parent / "fake_slurm"))
from fakeslurm import Controller  # noqa: E402

pytestmark = pytest.mark.mpi

N = 16  # tasks of 0.3 s on 2 workers: about 2.5 s of work
SLURM = SLURM_TEMPLATE  # what `mpigather template slurm` prints
PBS = PBS_TEMPLATE


class Cluster:
    def __init__(self, tmp: Path, kill_wait: float = 10) -> None:
        """``kill_wait``: Slurm's KillWait (SIGTERM, then SIGKILL this much later). 10 s, as on the real
        Slurm of test_slurm_real.py, is far more than an in-order stop takes (tasks of 0.3 s) even when
        other jobs take both cores; the wall-time tests, which wait for the SIGKILL, pass 3."""
        self.bin = tmp / "fake_bin"
        shutil.copytree(Path(__file__).parent / "fake_slurm", self.bin)
        for p in self.bin.iterdir():  # keep working when a checkout lost the exec bits
            if p.suffix != ".py" and p.is_file():
                p.chmod(p.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        self.state = tmp / "slurm_state"
        self.work = tmp / "work"
        self.work.mkdir()
        self.log = tmp / "batch.log"
        self.ctl = Controller(self.state, kill_wait=kill_wait)
        self.env = env()
        mpi_bin = str(Path(mpiexec_path()).parent)
        self.env.update({
            "PATH": os.pathsep.join([str(self.bin), mpi_bin, str(Path(sys.executable).parent),
                                     self.env.get("PATH", "")]),
            "FAKE_SLURM_DIR": str(self.state), "FAKE_SLURM_PYTHON": sys.executable,
            "FAKE_MPIEXEC": mpiexec_path(), "MPIGATHER_TEST_DIR": str(self.work),
        })
        self.env.pop("MPIGATHER_PROGRESS", None)

    def submit(self, name: str, text: str, cmd: str = "sbatch") -> str:
        script = self.work / name
        script.write_text(text)
        p = subprocess.run([cmd, name], cwd=self.work, env=self.env, capture_output=True, text=True, timeout=20)
        assert p.returncode == 0, p.stderr
        return p.stdout.strip()

    def command(self, *args: str) -> subprocess.CompletedProcess[str]:
        """A Slurm command run by the user (the test), e.g. ``scancel JOB``."""
        return subprocess.run(list(args), cwd=self.work, env=self.env, capture_output=True, text=True, timeout=20)

    def allocation(self, stop_when: Callable[[], bool] | None = None, timeout: float = 45,
                   then: Callable[[dict[str, Any]], None] | None = None,
                   ) -> tuple[dict[str, Any], int, float | None]:
        """Run the next queued job to its end, the controller playing slurmctld and slurmd.

        Once ``stop_when()`` is true, ``then(job)`` runs (by default: the warning of the template's
        #SBATCH --signal line). Returns (the job's final record, exit status, when ``then`` ran)."""
        started = self.ctl.start_next(self.log)
        assert started is not None, "no job queued"
        job, proc = started
        t0 = time.monotonic()
        sent = None
        try:
            while proc.poll() is None:
                if time.monotonic() - t0 > timeout:
                    pytest.fail(f"allocation of job {job['id']} still running after {timeout} s\n{self.text()}")
                if stop_when is not None and sent is None and stop_when():
                    if then is None:
                        self.ctl.warn(job, proc)
                    else:
                        then(job)
                    sent = time.monotonic() - t0
                self.ctl.tick(job, proc)
                time.sleep(0.05)
        finally:
            final = self.ctl.finish(job, proc)
        return final, proc.returncode, sent

    def to_the_end(self, most: int) -> list[tuple[dict[str, Any], int]]:
        """Run the queued allocations until the chain ends: [(the job's final record, exit status)].
        How many it takes depends on the machine's load; more than ``most`` fails the test."""
        ran: list[tuple[dict[str, Any], int]] = []
        while self.ctl.queued():
            seen = [(j["state"], rc) for j, rc in ran]
            assert len(ran) < most, f"more than {most} allocations: {seen}\n{self.text()}"
            job, rc, _ = self.allocation()
            ran.append((job, rc))
        return ran

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def journal(out: Path) -> list[dict[str, Any]]:
    jp = out.with_name(out.name + ".journal")
    if not jp.exists():
        return []
    return [json.loads(line) for line in jp.read_text().splitlines() if line.endswith("}")]


def n_done(out: Path) -> int:
    return len(done_ids(out))


def runs(out: Path) -> list[list[dict[str, Any]]]:
    """The journal's records cut at each 'start'."""
    out_runs: list[list[dict[str, Any]]] = []
    for r in journal(out):
        if r.get("ev") == "start":
            out_runs.append([])
        out_runs[-1].append(r)
    return out_runs


def check_results(out: Path, n: int = N) -> None:
    check_batch_results(out, n)


def slurm_script(out: str = "out.h5", max_resubmits: int = 3, resubmit: str = "sbatch",
                 func: str = "batchfuncs:slow", time_limit: str = "04:00:00", grace: int = 20) -> str:
    directives = {"#SBATCH --ntasks=64 ": "#SBATCH --ntasks=3 ", "#SBATCH --nodes=2 ": "#SBATCH --nodes=1 ",
                  "#SBATCH --time=04:00:00 ": f"#SBATCH --time={time_limit} "}
    if resubmit == "requeue":
        directives["#SBATCH --no-requeue "] = "#SBATCH --requeue "
    return edit(SLURM, {
        "FUNC": func, "TASKS": f"(--range {N})", "OUT": out,
        "OPTIONS": f"(--grace {grace} --prefetch 1 --progress log)", "MAX_RESUBMITS": str(max_resubmits),
        "RESUBMIT": resubmit, "MPIGATHER": f"({sys.executable} -m mpigather)",
    }, directives)


def test_fake_srun_starts_one_mpi_job_only_with_mpi(tmp_path):
    """Slurm's default MpiDefault=none: without --mpi, each task starts alone as a one-rank MPI job."""
    c = Cluster(tmp_path)
    c.env.update(SLURM_JOB_ID="1", SLURM_NTASKS="3")
    code = ("import os; from mpi4py import MPI; c = MPI.COMM_WORLD; e = os.environ; "
            "line = f\"{e.get('SLURM_PROCID', c.rank)} {c.size} {e['SLURM_STEP_NUM_TASKS']}\\n\"; "
            "os.write(1, line.encode())")  # one write(2) a line: the ranks' lines never interleave
    alone = c.command("srun", sys.executable, "-c", code)
    assert alone.returncode == 0, alone.stderr
    assert sorted(alone.stdout.split("\n")[:3]) == ["0 1 3", "1 1 3", "2 1 3"], alone.stdout
    together = c.command("srun", "--mpi=pmi2", sys.executable, "-c", code)
    assert together.returncode == 0, together.stderr
    assert sorted(together.stdout.split("\n")[:3]) == ["0 3 3", "1 3 3", "2 3 3"], together.stdout


@pytest.mark.parametrize("resubmit", ["sbatch", "requeue"])
def test_slurm_warning_stops_resubmits_and_two_allocations_finish_the_run(tmp_path, resubmit):
    c = Cluster(tmp_path)
    out = c.work / "out.h5"
    first = c.submit("job.sbatch", slurm_script(resubmit=resubmit))
    assert first.startswith("Submitted batch job ")

    job1, rc1, sent = c.allocation(stop_when=lambda: n_done(out) >= 4)
    log = c.text()
    assert sent is not None, "the run ended before the test could send the warning\n" + log
    assert rc1 == 75, f"first allocation exited {rc1}, not 75\n{log}"
    assert "got SIGUSR1" in log and "mpigather exited with status 75" in log
    assert 4 <= n_done(out) < N, log

    queued = c.ctl.queued()
    assert len(queued) == 1, f"expected one follow-up, queue {queued}\n{log}"
    job2 = c.ctl.job(queued[0])
    if resubmit == "sbatch":
        assert job1["state"] == "FAILED" and job1["exit_code"] == 75  # what sacct shows: FAILED 75:0
        assert job2["id"] != job1["id"]
        assert job2["options"].get("dependency") == f"afterany:{job1['id']}"
        assert job2["env"].get("MPIGATHER_CHAIN") == "1" and job2["env"].get("MPIGATHER_PREV") == str(job1["id"])
    else:
        assert job2["id"] == job1["id"] and job2["restart_count"] == 1 and job2["state"] == "PENDING"

    job2, rc2, _ = c.allocation()
    log = c.text()
    assert rc2 == 0 and job2["state"] == "COMPLETED", f"second allocation exited {rc2}\n{log}"
    assert c.ctl.queued() == [], "a finished run must not continue\n" + log
    if resubmit == "sbatch":  # the follow-up queued at the start of the second job was cancelled
        assert c.ctl.job(job2["id"] + 1)["state"] == "CANCELLED", log

    check_results(out)
    r1, r2 = runs(out)
    assert "--resume" not in r1[0]["argv"] and "--resume" in r2[0]["argv"]
    end1 = next(r for r in r1 if r["ev"] == "end")
    end2 = next(r for r in r2 if r["ev"] == "end")
    assert end1["interrupted"] and end1["exit"] == 75 and end2["exit"] == 0
    done1 = done_ids(out, r1)
    done2 = done_ids(out, r2)
    # each task ran to completion once: the first allocation finished what was running (grace)
    assert sorted(done1 + done2) == list(range(N)), (done1, done2)
    assert r2[0]["already_done"] == len(done1)
    assert executions(c.work) == dict.fromkeys(range(N), 1)


def test_slurm_finished_run_and_bad_input_do_not_resubmit(tmp_path):
    c = Cluster(tmp_path)
    c.env["MPIGATHER_TEST_TASK_S"] = "0"
    c.submit("job.sbatch", slurm_script())
    job, rc, _ = c.allocation()
    assert rc == 0, c.text()
    assert c.ctl.queued() == [] and c.ctl.job(job["id"] + 1)["state"] == "CANCELLED", c.text()
    check_results(c.work / "out.h5")  # also the reference: an uninterrupted run has these results

    c.submit("bad.sbatch", slurm_script(out="bad.h5", func="batchfuncs:no_such_function"))
    _job, rc, _ = c.allocation()
    assert rc == 2, c.text()
    assert c.ctl.queued() == []
    assert "no attribute 'no_such_function'" in c.text()


def test_slurm_resubmit_limit_and_stop_file(tmp_path):
    c = Cluster(tmp_path)
    out = c.work / "out.h5"
    c.submit("job.sbatch", slurm_script(max_resubmits=0))
    _job, rc, sent = c.allocation(stop_when=lambda: n_done(out) >= 2)
    assert sent is not None and rc == 75, c.text()
    assert c.ctl.queued() == [] and "MAX_RESUBMITS=0" in c.text()

    (c.work / "out.h5.stop").touch()  # the user ends the chain
    c.submit("job.sbatch", slurm_script(max_resubmits=3))
    before = n_done(out)
    _job, rc, sent = c.allocation(stop_when=lambda: n_done(out) >= before + 2)
    assert sent is not None and rc == 75, c.text()
    assert c.ctl.queued() == [] and "out.h5.stop exists" in c.text()


@pytest.mark.parametrize("resubmit", ["sbatch", "requeue"])
def test_slurm_scancel_stops_in_order_and_ends_the_chain(tmp_path, resubmit):
    c = Cluster(tmp_path)
    out = c.work / "out.h5"
    c.submit("job.sbatch", slurm_script(resubmit=resubmit))
    job, rc, sent = c.allocation(stop_when=lambda: n_done(out) >= 4,
                                 then=lambda job: c.command("scancel", str(job["id"])))
    log = c.text()
    assert sent is not None, log
    assert job["state"] == "CANCELLED" and "got SIGTERM (scancel)" in log, log
    assert rc == 75, f"tasks of 0.3 s fit in KillWait: mpigather should have stopped in order\n{log}"
    assert c.ctl.queued() == [], f"a cancelled job must end the chain\n{log}"
    if resubmit == "sbatch":
        assert c.ctl.job(job["id"] + 1)["state"] == "CANCELLED", log
    assert job["restart_count"] == 0, "a cancelled job must not be requeued\n" + log
    assert max(executions(c.work).values()) == 1

    c.submit("job.sbatch", slurm_script(resubmit=resubmit))  # the user continues the run later
    _job, rc, _ = c.allocation()
    assert rc == 0, c.text()
    check_results(out)
    assert executions(c.work) == dict.fromkeys(range(N), 1)


def test_slurm_scancel_usr1_stops_in_order_and_the_chain_continues(tmp_path):
    c = Cluster(tmp_path)
    out = c.work / "out.h5"
    c.submit("job.sbatch", slurm_script())
    job, rc, sent = c.allocation(stop_when=lambda: n_done(out) >= 4,
                                 then=lambda job: c.command("scancel", "--signal=USR1", str(job["id"])))
    assert sent is not None and rc == 75 and job["state"] == "FAILED", c.text()
    assert len(c.ctl.queued()) == 1, c.text()
    _job, rc, _ = c.allocation()
    assert rc == 0, c.text()
    assert c.ctl.queued() == []
    check_results(out)
    assert executions(c.work) == dict.fromkeys(range(N), 1)


@pytest.mark.parametrize("resubmit", ["sbatch", "requeue"])
def test_slurm_wall_time_kill_continues_the_chain(tmp_path, resubmit):
    """Tasks 0 and 1 hang on their first execution, longer than the grace: the warning cannot stop
    the run in order, and Slurm kills the job at its time limit (SIGTERM, SIGKILL after KillWait).
    The follow-up queued at the start (or the requeue from the SIGTERM trap) still finishes the run.
    Every allocation has the same 6 s limit: on a loaded machine the second may be killed too before
    the last 14 tasks are done, and a third goes on (see check_wall_time_chain)."""
    c = Cluster(tmp_path, kill_wait=3)
    c.env.update(MPIGATHER_TEST_STUCK="0,1", MPIGATHER_TEST_STUCK_S="300")
    out = c.work / "out.h5"
    c.submit("job.sbatch", slurm_script(resubmit=resubmit, time_limit="0:06", grace=300, max_resubmits=8))
    job, rc, sent = c.allocation(stop_when=lambda: (c.work / "stuck.1").exists())
    log = c.text()
    assert sent is not None, log
    assert job["state"] == ("TIMEOUT" if resubmit == "sbatch" else "PENDING"), log
    assert "got SIGTERM at the wall time" in log, log
    assert len(c.ctl.queued()) == 1, f"the chain must continue after a wall-time kill\n{log}"
    if resubmit == "requeue":
        assert c.ctl.job(job["id"])["restart_count"] == 1
    check_wall_time_chain(c, out, c.to_the_end(8), killed_state="TIMEOUT" if resubmit == "sbatch" else "PENDING")


def check_wall_time_chain(c: Cluster, out: Path, rest: list[tuple[dict[str, Any], int]], killed_state: str) -> None:
    """After a first allocation killed at its wall time: the allocations that followed (``rest``)
    ended the chain with the run finished, every task done exactly once, bit for bit, and a task run
    more than once only where an allocation was killed while it ran (the two hung tasks, always).
    ``killed_state``: what a job killed at its wall time becomes (TIMEOUT, or PENDING when requeued)."""
    log = c.text()
    states = ([(job["state"], code) for job, code in rest], log)
    last, rc = rest[-1]
    # the last one finished the run (exit 0): COMPLETED, or TIMEOUT where the kill met the run's end
    # and mpigather finished within KillWait (the script then cancels its follow-up)
    assert rc == 0 and last["state"] in ("COMPLETED", "TIMEOUT"), states
    # the others were stopped by a warning (FAILED, exit 75) or killed at the wall time, like the first
    # (a requeued job that finished the run as it was killed exits 0: its requeue finds it finished)
    assert all((job["state"] == "FAILED" and code not in (0, 1, 2)) or job["state"] == killed_state
               for job, code in rest[:-1]), states
    check_results(out)
    assert sorted(done_ids(out)) == list(range(N)), "each task recorded done exactly once"
    counts = executions(c.work)
    kills = log.count("got SIGTERM at the wall time")
    if kills == 1:  # the usual case: only the first allocation was killed
        assert counts[0] == counts[1] == 2 and {counts[i] for i in range(2, N)} == {1}, counts
    else:  # a later one was killed too, and what it was running ran again
        assert counts[0] >= 2 and counts[1] >= 2 and max(counts.values()) <= kills + 1, (kills, counts)


def test_slurm_warning_as_mpigather_leaves_a_finished_run_ends_the_chain(tmp_path):
    """A warning that meets the run's very end can kill ranks as they exit (status 138 from srun):
    the run is finished all the same, so the job exits 0 and cancels its follow-up."""
    c = Cluster(tmp_path)
    c.env["MPIGATHER_TEST_TASK_S"] = "0"
    late = f"(bash -c 'trap \"\" USR1; {sys.executable} -m mpigather \"$@\"; sleep 3; exit 138' mpigather)"  # dies late
    text = slurm_script().replace(f"MPIGATHER=({sys.executable} -m mpigather)", f"MPIGATHER={late}")
    c.submit("job.sbatch", text)
    job, rc, sent = c.allocation(stop_when=(c.work / "out.h5").exists)
    log = c.text()
    assert sent is not None and "leaving a finished run" in log, log  # (138, or what mpiexec makes of it)
    assert rc == 0 and job["state"] == "COMPLETED" and c.ctl.queued() == [], log
    check_results(c.work / "out.h5")


def test_slurm_follow_up_of_a_cancelled_job_ends_the_chain(tmp_path):
    """The cancelled job could not cancel its follow-up (here: scancel fails inside the job), so the
    follow-up starts: it sees that its predecessor was cancelled and exits at once."""
    c = Cluster(tmp_path)
    c.env["FAKE_SLURM_SCANCEL_FAILS"] = "1"  # the job's own scancel; the test's below does not fail
    out = c.work / "out.h5"
    c.submit("job.sbatch", slurm_script())
    del c.env["FAKE_SLURM_SCANCEL_FAILS"]
    job1, _rc, _ = c.allocation(stop_when=lambda: n_done(out) >= 4,
                                then=lambda job: c.command("scancel", str(job["id"])))
    assert job1["state"] == "CANCELLED" and len(c.ctl.queued()) == 1, c.text()
    ran = executions(c.work)
    _job2, rc, _ = c.allocation(timeout=30)  # a hang if it takes that long (it exits at once)
    assert rc == 0 and f"job {job1['id']} was cancelled" in c.text(), c.text()
    assert executions(c.work) == ran and c.ctl.queued() == []


def test_slurm_follow_up_of_a_finished_run_exits_at_once(tmp_path):
    c = Cluster(tmp_path)
    c.env.update(FAKE_SLURM_SCANCEL_FAILS="1", MPIGATHER_TEST_TASK_S="0")
    c.submit("job.sbatch", slurm_script())
    _job, rc, _ = c.allocation()
    assert rc == 0 and len(c.ctl.queued()) == 1, c.text()
    _job, rc, _ = c.allocation(timeout=30)  # a hang if it takes that long (it exits at once)
    assert rc == 0 and "out.h5 is finished already" in c.text(), c.text()
    assert c.ctl.queued() == []


def pbs_script(n: int = N, out: str = "out.h5", walltime: str = "04:00:00", warn_s: int = 120,
               grace: int = 20, max_resubmits: int = 3) -> str:
    return edit(PBS, {
        "FUNC": "batchfuncs:slow", "TASKS": f"(--range {n})", "OUT": out,
        "OPTIONS": f"(--grace {grace} --prefetch 1 --progress log)", "MAX_RESUBMITS": str(max_resubmits),
        "MPIGATHER": f"({sys.executable} -m mpigather)", "WARN_S": str(warn_s),
    }, {"#PBS -l select=2:ncpus=32:mpiprocs=32": "#PBS -l select=1:ncpus=3:mpiprocs=3",
        "#PBS -l walltime=04:00:00": f"#PBS -l walltime={walltime}"})


def test_pbs_timer_warning_resubmits_and_the_chain_finishes(tmp_path):
    """No test signal here: the script's own timer sends the warning WARN_S before the wall time."""
    c = Cluster(tmp_path)
    out = c.work / "out"  # a directory of .npy files this time
    n = 36  # 5.4 s of work: the warning, 5 s in, comes before the end
    text = pbs_script(n, out="out", walltime="00:02:05", max_resubmits=8)  # the warning comes 5 s in
    jid = c.submit("pbs.sh", text, cmd="qsub")
    assert jid.endswith(".fakepbs")

    _job, rc1, _ = c.allocation()
    log = c.text()
    assert rc1 == 75, f"first allocation exited {rc1}\n{log}"
    assert "the stop warning comes in 5 s" in log and "got SIGUSR1" in log
    queued = c.ctl.queued()
    assert len(queued) == 1, log
    job2 = c.ctl.job(queued[0])
    assert job2["env"].get("MPIGATHER_CHAIN") == "1"
    assert job2["options"].get("W") == [f"depend=afterany:{jid}"]

    # every allocation gets its warning 5 s in, so the rest may take one more allocation, or two
    # when a warning meets the run's very end (see the stop-signal-at-exit note in docs/cluster.md),
    # or more on a loaded machine, where less gets done in 5 s: the chain is followed to its end
    codes = [rc for _job, rc in c.to_the_end(8)]
    assert codes[-1] == 0 and all(x not in (0, 1, 2) for x in codes[:-1]), f"{codes}\n{c.text()}"
    check_results(out, n)
    done = done_ids(out)
    assert sorted(done) == list(range(n))
    assert all("--resume" in r[0]["argv"] for r in runs(out)[1:])


def test_pbs_qdel_ends_the_chain(tmp_path):
    c = Cluster(tmp_path)
    out = c.work / "out.h5"
    c.submit("pbs.sh", pbs_script(), cmd="qsub")
    job, rc, sent = c.allocation(stop_when=lambda: n_done(out) >= 4,
                                 then=lambda job: c.command("qdel", f"{job['id']}.fakepbs"))
    log = c.text()
    assert sent is not None and job["state"] == "CANCELLED" and "got SIGTERM (qdel)" in log, log
    assert rc == 75, f"tasks of 0.3 s fit in the kill delay: mpigather should have stopped in order\n{log}"
    assert c.ctl.queued() == [] and c.ctl.job(job["id"] + 1)["state"] == "CANCELLED", log


def test_pbs_wall_time_kill_continues_the_chain(tmp_path):
    """As the Slurm case, with the script's own timer: its warning comes 3 s in, and cannot stop the
    hung tasks 0 and 1, so PBS kills the first allocation at its 6 s wall time. Each follow-up gets
    its warning 3 s in as well: on a loaded machine the second allocation may not finish the 14 other
    tasks in that time (it then stops in order, exit 75) and a third goes on, so the chain is followed
    to its end."""
    c = Cluster(tmp_path, kill_wait=3)
    c.env.update(MPIGATHER_TEST_STUCK="0,1", MPIGATHER_TEST_STUCK_S="300")
    c.submit("pbs.sh", pbs_script(walltime="00:00:06", warn_s=3, grace=300, max_resubmits=8), cmd="qsub")
    job, _rc, _ = c.allocation()
    log = c.text()
    assert job["state"] == "TIMEOUT" and "got SIGTERM at the wall time" in log, log
    assert len(c.ctl.queued()) == 1, f"the chain must continue after a wall-time kill\n{log}"
    check_wall_time_chain(c, c.work / "out.h5", c.to_the_end(8), killed_state="TIMEOUT")
