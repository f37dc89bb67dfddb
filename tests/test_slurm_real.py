"""The Slurm template (mpigather/templates/slurm.sbatch: what `mpigather template slurm` prints) on a
real Slurm: a one-node cluster on localhost (tests/slurm_cluster.py).

The template is copied and edited only on its EDIT lines, submitted with the real sbatch, and left
to Slurm: the --signal warning, the time limit, the dependency of the follow-up job, requeue,
KillWait. The chains below run side by side (slurmctld checks time limits only every 30 s, so one
after another would take many minutes); each test then checks one chain: the job states Slurm
recorded (jobcomp/filetxt, since there is no slurmdbd for sacct), the exit codes, the results (bit
for bit those of an uninterrupted run), and how many times each task ran (executions.log).

Skipped, with the reason in the summary, where slurm-wlm and munge are not installed and cannot be
(root and apt-get); MPIGATHER_REAL_SLURM=require (set by .ci/run), or CI=true, makes that a failure
instead (slurm_cluster.required()).
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest
from helpers import ROOT, SLURM_TEMPLATE, check_batch_results, edit, env, executions
from slurm_cluster import CRED_EXPIRE, TABLE, SlurmCluster, Unavailable, required

pytestmark = [pytest.mark.mpi, pytest.mark.slow]

SLURM = SLURM_TEMPLATE
WARN = 15  # the warning margin the tests ask for (#SBATCH --signal=B:USR1@15) with --time=1: it comes
# 15-45 s before the wall time, so 15-45 s after the start, once mpigather has started
LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) slurm\.sbatch job (\d+)\] (.*)$", re.M)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    try:
        cluster = SlurmCluster.start(tmp_path_factory.mktemp("slurm"))
    except Unavailable as e:
        if why := required():
            pytest.fail(f"{why}, but no local Slurm: {e}")
        pytest.skip(f"no local Slurm: {e}")
    yield cluster
    cluster.stop()


def _done(out: Path) -> int:
    from mpigather.status import collect

    try:
        return collect(str(out))["done"]
    except (FileNotFoundError, OSError, ValueError, KeyError):
        return 0


@dataclass
class Chain:
    """One run of the template, from the first sbatch until no job of it is left."""

    name: str
    resubmit: str = "sbatch"
    n: int = 24
    task_s: float = 1.0
    time_limit: str = "5"
    warn: int = 120
    grace: int = 20
    stuck: str = ""  # tasks whose first execution hangs (batchfuncs.slow)
    act: tuple[str, ...] = ()  # a command the user runs on the running job once `act_after` tasks are done
    act_after: int = 6
    again: bool = False  # submit the template again once the chain has ended (the user continues the run)
    readme: bool = False  # the README's short Slurm example instead of the template
    # filled in by run()
    dir: Path = field(default=Path())
    seconds: float = 0.0
    acted_on: str = ""
    error: str = ""

    @property
    def out(self) -> Path:
        return self.dir / "out.h5"

    def script(self) -> str:
        if self.readme:
            return self.readme_script()
        directives = {"#SBATCH --job-name=mpigather ": f"#SBATCH --job-name={self.name} ",
                      "#SBATCH --ntasks=64 ": "#SBATCH --ntasks=3 ", "#SBATCH --nodes=2 ": "#SBATCH --nodes=1 ",
                      "#SBATCH --time=04:00:00 ": f"#SBATCH --time={self.time_limit} ",
                      "#SBATCH --signal=B:USR1@120 ": f"#SBATCH --signal=B:USR1@{self.warn} "}
        if self.resubmit == "requeue":
            directives["#SBATCH --no-requeue "] = "#SBATCH --requeue "
        return edit(SLURM, {
            "FUNC": "batchfuncs:slow", "TASKS": f"(--range {self.n})", "OUT": "out.h5",
            "OPTIONS": f"(--grace {self.grace} --prefetch 1 --progress log)", "MAX_RESUBMITS": "6",
            "RESUBMIT": self.resubmit, "MPIGATHER": f"({sys.executable} -m mpigather)",
        }, directives)

    def readme_script(self) -> str:
        """The README's Slurm example, with this test's function, tasks, size and times."""
        readme = (ROOT / "README.md").read_text()
        text = re.search(r"### 3\. A Slurm batch job\n\n(?:<!--.*?-->\n)?```sh\n(.*?)```", readme, re.S).group(1)
        for old, new in {"--ntasks=65 --time=12:00:00": f"--ntasks=3 --time={self.time_limit} -J {self.name}",
                         "B:USR1@120": f"B:USR1@{self.warn}", "srun --mpi=pmi2 mpigather":
                         f"srun --mpi=pmi2 {sys.executable} -m mpigather", "mysim:simulate": "batchfuncs:slow",
                         "--tasks tasks.jsonl": f"--range {self.n}", "results.h5": "out.h5"}.items():
            assert old in text, f"the README's Slurm example has no {old!r}"
            text = text.replace(old, new)
        return text.replace("#!/bin/bash\n", "#!/bin/bash\n#SBATCH --output=mpigather-%j.log\n", 1)

    def run(self, cluster: SlurmCluster, root: Path, timeout: float = 400) -> None:
        # (the longest chains take about 2 min on a quiet machine, mostly Slurm's own timers; the
        # deadline only bounds a hang, and stays under pytest's 600 s for the test that starts them)
        self.dir = root / self.name
        self.dir.mkdir()
        (self.dir / "job.sbatch").write_text(self.script())
        e = {**env(), "SLURM_CONF": cluster.env["SLURM_CONF"], "MPIGATHER_TEST_DIR": str(self.dir),
             "MPIGATHER_TEST_TASK_S": str(self.task_s), "MPIGATHER_TEST_STUCK": self.stuck}
        e["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), e.get("PATH", "")])
        e.pop("MPIGATHER_PROGRESS", None)
        t0 = time.monotonic()
        try:
            for _ in range(2 if self.again else 1):
                p = cluster.run("sbatch", "--parsable", "job.sbatch", cwd=self.dir, env=e)
                assert p.returncode == 0, f"sbatch failed: {p.stderr}"
                self._follow(cluster, t0 + timeout)
        except Exception as exc:  # reported by the chain's own test
            self.error = f"{type(exc).__name__}: {exc}"
            for j in cluster.active(self.name):
                cluster.run("scancel", j["id"])
        self.seconds = time.monotonic() - t0

    def _follow(self, cluster: SlurmCluster, deadline: float) -> None:
        time.sleep(1)
        while jobs := cluster.active(self.name):
            if time.monotonic() > deadline:
                raise TimeoutError(f"chain {self.name} still has jobs {jobs}")
            running = [j["id"] for j in jobs if j["state"] == "RUNNING"]
            if self.act and not self.acted_on and running and _done(self.out) >= self.act_after:
                p = cluster.run(*self.act, running[0])
                assert p.returncode == 0, p.stderr
                self.acted_on = running[0]
            time.sleep(1)

    # ---- what happened ----
    def records(self, cluster: SlurmCluster) -> list[dict[str, str]]:
        return cluster.completions(self.name)

    def states(self, cluster: SlurmCluster) -> list[tuple[str, str, str]]:
        """(job id, state, exit code) per jobcomp record (a requeue shows as PENDING)."""
        return [(r["JobId"], r["JobState"], r["ExitCode"]) for r in self.records(cluster)]

    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.dir.glob("mpigather-*.log")))

    def said(self, text: str) -> list[tuple[datetime, str]]:
        """(time, job id) of the template's log lines that contain ``text``."""
        return [(datetime.strptime(t, "%Y-%m-%d %H:%M:%S"), jid) for t, jid, msg in LINE.findall(self.log())
                if text in msg]

    def lead_times(self, cluster: SlurmCluster, text: str) -> list[float]:
        """Seconds from each ``text`` line of the log to the wall time (StartTime + TimeLimit) of the
        allocation it came from: positive before the wall time, negative after it."""
        spans = set()  # (a requeue's record repeats the times of the allocation it ended)
        for r in self.records(cluster):
            if r.get("StartTime", "")[:1].isdigit() and r.get("TimeLimit", "").isdigit():
                start = datetime.strptime(r["StartTime"], "%Y-%m-%dT%H:%M:%S").timestamp()
                spans.add((r["JobId"], start, start + 60 * int(r["TimeLimit"])))
        leads = []
        for when, jid in self.said(text):
            t = when.timestamp()
            mine = [(start, end) for j, start, end in spans if j == jid and start - 1 <= t]
            if mine:
                leads.append(max(mine)[1] - t)  # the allocation that started last before the line
        return leads

    def requeue_waits(self, cluster: SlurmCluster) -> list[float]:
        """For each requeue: seconds from the requeue (the record after it has it as SubmitTime) until
        the job may start again (its EligibleTime)."""
        recs = self.records(cluster)
        return [(datetime.fromisoformat(r["EligibleTime"]) - datetime.fromisoformat(r["SubmitTime"])).total_seconds()
                for prev, r in zip(recs, recs[1:]) if (prev["JobId"], prev["JobState"]) == (r["JobId"], "PENDING")]

    def ran(self, jid: str) -> bool:
        """Did job ``jid`` write anything to the log (did its script run)?"""
        return any(j == jid for _t, j, _m in LINE.findall(self.log()))

    def check_results(self) -> None:
        assert not self.error, f"{self.error}\n{self.log()}"
        assert self.out.exists(), f"the run did not finish\n{self.log()}"
        check_batch_results(self.out, self.n)


CHAINS = [
    # the warning (--time=1: 15-45 s in), 48 tasks of 2 s on 2 workers: more than one allocation
    Chain("warn-sbatch", n=48, task_s=2, time_limit="1", warn=WARN),
    Chain("warn-requeue", resubmit="requeue", n=48, task_s=2, time_limit="1", warn=WARN),
    Chain("readme", n=48, task_s=2, time_limit="1", warn=WARN, readme=True),
    # the user's scancel, then a new submission later
    Chain("cancel-sbatch", act=("scancel",), again=True),
    Chain("cancel-requeue", resubmit="requeue", act=("scancel",), again=True),
    Chain("usr1-sbatch", act=("scancel", "--signal=USR1")),
    # tasks 0 and 1 hang on their first execution: the warning cannot stop the run in order within
    # its margin (--grace 300), so Slurm kills the job at the wall time (SIGTERM, SIGKILL after KillWait)
    Chain("walltime-sbatch", n=12, time_limit="1", warn=WARN, grace=300, stuck="0,1"),
    Chain("walltime-requeue", resubmit="requeue", n=12, time_limit="1", warn=WARN, grace=300, stuck="0,1"),
]


@pytest.fixture(scope="module")
def chains(slurm, tmp_path_factory, pytestconfig) -> dict[str, Chain]:
    root = tmp_path_factory.mktemp("chains")
    threads = [threading.Thread(target=c.run, args=(slurm, root), name=c.name) for c in CHAINS]
    for t in threads:
        t.start()
        time.sleep(0.5)  # let each one's first job start before the next is queued
    for t in threads:
        t.join()
    pytestconfig.stash[TABLE] = _table(slurm)
    return {c.name: c for c in CHAINS}


def _table(cluster: SlurmCluster) -> list[str]:
    rows = ["| case | job states seen (jobcomp: id state exit) | mpigather exits | tasks executed | time | timing |",
            "|---|---|---|---|---|---|"]
    for c in CHAINS:
        if not c.dir.name:
            continue
        ex = executions(c.dir)
        codes = [m.group(1) for m in re.finditer(r"mpigather exited with status (\d+)", c.log())]
        notes = [f"warning {x:.0f} s before the wall time" for x in c.lead_times(cluster, "got SIGUSR1")]
        notes += [f"SIGTERM {-x:.0f} s after the wall time" for x in c.lead_times(cluster, "at the wall time")]
        notes += [f"requeued job eligible after {x:.0f} s" for x in c.requeue_waits(cluster)]
        rows.append(f"| {c.name} | {'; '.join(' '.join(st) for st in c.states(cluster))} | {' '.join(codes)} | "
                    f"{sum(ex.values())} for {c.n} tasks (max {max(ex.values(), default=0)}) | {c.seconds:.0f} s | "
                    f"{'; '.join(notes)} |")
    return rows


def test_srun_without_mpi_starts_each_rank_as_its_own_job(slurm, tmp_path):
    """Why SRUN_ARGS defaults to --mpi=pmi2: with Slurm's MpiDefault=none, srun gives the mpich wheel
    no PMI, and every rank is rank 0 of a one-rank job."""
    code = "from mpi4py import MPI; c = MPI.COMM_WORLD; print(f'{c.rank}/{c.size}', flush=True)"
    e = {**env(), "SLURM_CONF": slurm.env["SLURM_CONF"]}
    plain = slurm.run("srun", "-n", "3", "-J", "srun-plain", sys.executable, "-c", code, cwd=tmp_path, env=e)
    pmi2 = slurm.run("srun", "-n", "3", "-J", "srun-pmi2", "--mpi=pmi2", sys.executable, "-c", code,
                     cwd=tmp_path, env=e)
    assert plain.returncode == 0 and pmi2.returncode == 0, plain.stderr + pmi2.stderr
    assert sorted(plain.stdout.split()) == ["0/1", "0/1", "0/1"], plain.stdout
    assert sorted(pmi2.stdout.split()) == ["0/3", "1/3", "2/3"], pmi2.stdout


def _assert_once_each(c: Chain) -> None:
    ex = executions(c.dir)
    assert ex == dict.fromkeys(range(c.n), 1), f"executions {dict(ex)}\n{c.log()}"


def _warned_chain(c: Chain, slurm: SlurmCluster) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """The checks every chain stopped by the warning passes; returns (all its jobs' states, those that ran)."""
    c.check_results()
    _assert_once_each(c)
    states = c.states(slurm)
    ran = [s for s in states if s[1] != "CANCELLED"]
    assert len(ran) >= 2, f"the warning should have stopped the first job: {states}\n{c.log()}"
    assert all(s[1:] == ("FAILED", "75:0") for s in ran[:-1]), states  # every orderly stop: FAILED 75:0
    return states, ran


def test_warning_sbatch_chain_stops_in_order_and_finishes(slurm, chains):
    c = chains["warn-sbatch"]
    states, ran = _warned_chain(c, slurm)
    assert ran[-1][1:] == ("COMPLETED", "0:0"), states
    never_ran = [s for s in states if s[1] == "CANCELLED" and not c.ran(s[0])]
    assert len(never_ran) == 1, f"the last job cancels the follow-up it queued: {states}"
    # (the last allocation may get its warning too, as it finishes: the drain then ends the run)
    leads = c.lead_times(slurm, "got SIGUSR1")
    assert len(leads) in (len(ran) - 1, len(ran)) and all(WARN - 2 <= x <= WARN + 31 for x in leads), leads
    assert "CANCELLED AT" not in c.log(), "a stop in order leaves no CANCELLED line in the log"


def test_readme_example_continues_after_the_warning_and_cancels_its_last_follow_up(slurm, chains):
    c = chains["readme"]
    states, ran = _warned_chain(c, slurm)
    assert len(states) == len(ran) + 1, states  # and the follow-up the last one cancelled
    # COMPLETED; or, when the warning met the run's very end, the ranks it reached while they exited
    # died of it (srun: 138 = SIGUSR1), which the README's example takes for a failure: the run is done
    assert ran[-1][1:] == ("COMPLETED", "0:0") or (ran[-1][1], ran[-1][2]) == ("FAILED", "138:0"), states


def test_warning_requeue_chain_stops_in_order_and_finishes(slurm, chains):
    c = chains["warn-requeue"]
    c.check_results()
    _assert_once_each(c)
    recs = c.records(slurm)
    assert len({r["JobId"] for r in recs}) == 1, c.states(slurm)
    assert len(recs) >= 2 and recs[-1]["JobState"] == "COMPLETED", c.states(slurm)
    # each requeue is recorded as PENDING with exit code 0:0 (the 75 is not kept), and the job waits
    # cred_expire + 1 s before it may start again
    assert all((r["JobState"], r["ExitCode"]) == ("PENDING", "0:0") for r in recs[:-1]), c.states(slurm)
    waits = c.requeue_waits(slurm)
    assert len(waits) == len(recs) - 1 and all(CRED_EXPIRE <= x <= CRED_EXPIRE + 2 for x in waits), waits
    assert len(c.said("requeueing job")) == len(recs) - 1
    # (and slurmstepd may print "*** JOB ... CANCELLED AT ... DUE TO JOB REQUEUE ***": when the script is
    # still there to be ended; it mostly has left already)
    leads = c.lead_times(slurm, "got SIGUSR1")
    assert len(leads) in (len(recs) - 1, len(recs)) and all(WARN - 2 <= x <= WARN + 31 for x in leads), leads


@pytest.mark.parametrize("name", ["cancel-sbatch", "cancel-requeue"])
def test_scancel_ends_the_chain_and_a_new_submission_finishes(slurm, chains, name):
    c = chains[name]
    c.check_results()
    states = c.states(slurm)
    cancelled = [s for s in states if s[0] == c.acted_on]
    assert [s[1] for s in cancelled] == ["CANCELLED"], f"cancelled once, never requeued: {states}\n{c.log()}"
    assert "got SIGTERM (scancel)" in c.log() and re.search(r"\*\*\* JOB \d+ ON \S+ CANCELLED AT \S+ \*\*\*", c.log())
    if c.resubmit == "sbatch":  # its follow-up, queued at its start, was cancelled by it, or saw the cancel
        follow = [s for s in states if int(s[0]) > int(c.acted_on)][0]
        assert (follow[1] == "CANCELLED" and not c.ran(follow[0])) or (
            follow[1:] == ("COMPLETED", "0:0") and f"job {c.acted_on} was cancelled" in c.log()), states
    # the first mpigather stopped in order within KillWait (tasks of 1 s), so no task ran twice
    assert re.search(r"mpigather exited with status 75", c.log()), c.log()
    _assert_once_each(c)


def test_scancel_usr1_stops_in_order_and_the_chain_continues(slurm, chains):
    c = chains["usr1-sbatch"]
    c.check_results()
    _assert_once_each(c)
    states = c.states(slurm)
    assert states[0] == (c.acted_on, "FAILED", "75:0"), states
    assert [s[1:] for s in states if s[1] != "CANCELLED"][-1] == ("COMPLETED", "0:0"), states


@pytest.mark.parametrize("name", ["walltime-sbatch", "walltime-requeue"])
def test_wall_time_kill_still_finishes_the_run(slurm, chains, name):
    c = chains[name]
    c.check_results()
    states = c.states(slurm)
    assert states[0][1] == "TIMEOUT", states
    assert [s[1] for s in states if s[1] not in ("CANCELLED", "PENDING")][-1] == "COMPLETED", states
    if c.resubmit == "requeue":  # requeued from the SIGTERM trap, within KillWait
        assert len({s[0] for s in states}) == 1, states
        waits = c.requeue_waits(slurm)
        assert len(waits) == 1 and CRED_EXPIRE <= waits[0] <= CRED_EXPIRE + 2, waits
    assert "DUE TO TIME LIMIT" in c.log()
    kills = c.lead_times(slurm, "got SIGTERM at the wall time")
    assert len(kills) == 1 and -32 <= kills[0] <= 1, kills  # Slurm kills 0-30 s after the time limit
    ex = executions(c.dir)
    # the two hung tasks were killed and ran again; every other task ran once
    assert ex[0] == ex[1] == 2 and all(ex[i] == 1 for i in range(2, c.n)), dict(ex)

