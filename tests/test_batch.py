"""The batch templates (scripts/slurm.sbatch, scripts/pbs.sh) on a fake Slurm/PBS (tests/fake_slurm).

Each template is copied and edited the way a user would (only its EDIT lines), submitted with the
fake sbatch/qsub, and run allocation by allocation by fakeslurm.Controller. The test plays the
wall-time warning: it sends SIGTERM to the batch shell once the journal shows finished tasks.
Then the script must stop mpigather in order (exit 75), resubmit itself, and the next allocation
must resume and finish, with exactly the results of an uninterrupted run, each task run once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from batchfuncs import value
from compare import same
from helpers import ROOT, done_ids, env, mpiexec_path

import mpigather

sys.path.insert(0, str(Path(__file__).parent / "fake_slurm"))
from fakeslurm import Controller  # noqa: E402

pytestmark = pytest.mark.mpi

N = 16  # tasks of 0.3 s on 2 workers: about 2.5 s of work
SLURM = ROOT / "scripts" / "slurm.sbatch"
PBS = ROOT / "scripts" / "pbs.sh"


def edit(template: Path, values: dict[str, str], directives: dict[str, str]) -> str:
    """The template with its EDIT lines changed: ``NAME=...`` lines and ``#SBATCH/#PBS`` options."""
    text = template.read_text()
    for name, val in values.items():
        text, n = re.subn(rf"(?m)^{name}=.*$", lambda _m, name=name, val=val: f"{name}={val}  # edited by the test",
                          text)
        assert n == 1, f"{template.name} has no line {name}=..."
    for old, new in directives.items():
        assert old in text, f"{template.name} has no {old!r}"
        text = text.replace(old, new)
    return text


class Cluster:
    def __init__(self, tmp: Path) -> None:
        self.bin = tmp / "fake_bin"
        shutil.copytree(Path(__file__).parent / "fake_slurm", self.bin)
        for p in self.bin.iterdir():  # keep working when a checkout lost the exec bits
            if p.suffix != ".py" and p.is_file():
                p.chmod(p.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        self.state = tmp / "slurm_state"
        self.work = tmp / "work"
        self.work.mkdir()
        self.log = tmp / "batch.log"
        self.ctl = Controller(self.state)
        self.env = env()
        mpi_bin = str(Path(mpiexec_path()).parent)
        self.env.update({
            "PATH": os.pathsep.join([str(self.bin), mpi_bin, str(Path(sys.executable).parent),
                                     self.env.get("PATH", "")]),
            "FAKE_SLURM_DIR": str(self.state), "FAKE_SLURM_PYTHON": sys.executable,
            "FAKE_MPIEXEC": mpiexec_path(),
        })
        self.env.pop("MPIGATHER_PROGRESS", None)

    def submit(self, name: str, text: str, cmd: str = "sbatch") -> str:
        script = self.work / name
        script.write_text(text)
        p = subprocess.run([cmd, name], cwd=self.work, env=self.env, capture_output=True, text=True, timeout=20)
        assert p.returncode == 0, p.stderr
        return p.stdout.strip()

    def allocation(self, stop_when: Callable[[], bool] | None = None, timeout: float = 45,
                   ) -> tuple[dict[str, Any], int, float | None]:
        """Run the next queued job to its end. Returns (job, exit status, when SIGTERM was sent)."""
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
                    proc.send_signal(signal.SIGTERM)  # the wall-time warning (#SBATCH --signal=B:TERM@120)
                    sent = time.monotonic() - t0
                time.sleep(0.05)
        finally:
            _kill_tree(proc)
        return job, proc.returncode, sent

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """Whatever the batch shell left running (only after a failure): end it, children first."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            kids = psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            kids = []
        for k in kids:
            try:
                k.kill()
            except psutil.Error:
                pass
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


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


def check_results(out: Path) -> None:
    with mpigather.load(out) as res:
        assert sorted(res, key=int) == [str(i) for i in range(N)]
        bad = [i for i in range(N) if not same(res[str(i)], value(i))]
        assert bad == [], f"results differ from an uninterrupted run for tasks {bad}"
    assert mpigather.verify(out) == (N, [], [])


def slurm_script(out: str = "out.h5", max_resubmits: int = 3, resubmit: str = "sbatch",
                 func: str = "batchfuncs:slow") -> str:
    return edit(SLURM, {
        "FUNC": func, "TASKS": f"(--range {N})", "OUT": out,
        "OPTIONS": "(--grace 20 --prefetch 1 --progress log)", "MAX_RESUBMITS": str(max_resubmits),
        "RESUBMIT": resubmit, "MPIGATHER": f"({sys.executable} -m mpigather)",
    }, {"#SBATCH --ntasks=64 ": "#SBATCH --ntasks=3 ", "#SBATCH --nodes=2 ": "#SBATCH --nodes=1 "})


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
    assert "mpigather exited with status 75" in log
    assert 4 <= n_done(out) < N, log

    queued = c.ctl.queued()
    assert len(queued) == 1, f"expected one resubmission, queue {queued}\n{log}"
    job2 = c.ctl.job(queued[0])
    if resubmit == "sbatch":
        assert job2["id"] != job1["id"]
        assert job2["options"].get("dependency") == f"afterany:{job1['id']}"
        assert job2["env"].get("MPIGATHER_CHAIN") == "1"
    else:
        assert job2["id"] == job1["id"] and job2["restart_count"] == 1

    _job, rc2, _ = c.allocation()
    log = c.text()
    assert rc2 == 0, f"second allocation exited {rc2}\n{log}"
    assert c.ctl.queued() == [], "a finished run must not resubmit\n" + log

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


def test_slurm_finished_run_and_bad_input_do_not_resubmit(tmp_path):
    c = Cluster(tmp_path)
    c.env["MPIGATHER_TEST_TASK_S"] = "0"
    c.submit("job.sbatch", slurm_script())
    _job, rc, _ = c.allocation()
    assert rc == 0, c.text()
    assert c.ctl.queued() == []
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


def test_pbs_timer_warning_resubmits_and_the_chain_finishes(tmp_path):
    """No test signal here: the script's own timer sends the warning WARN_S before the wall time."""
    c = Cluster(tmp_path)
    out = c.work / "out"  # a directory of .npy files this time
    n = 36  # 5.4 s of work: the warning, 5 s in, comes before the end
    text = edit(PBS, {
        "FUNC": "batchfuncs:slow", "TASKS": f"(--range {n})", "OUT": "out",
        "OPTIONS": "(--grace 20 --prefetch 1 --progress log)", "MAX_RESUBMITS": "3",
        "MPIGATHER": f"({sys.executable} -m mpigather)", "WARN_S": "120",
    }, {"#PBS -l select=2:ncpus=32:mpiprocs=32": "#PBS -l select=1:ncpus=3:mpiprocs=3",
        "#PBS -l walltime=04:00:00": "#PBS -l walltime=00:02:05"})  # the warning comes 5 s in
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
    # when a warning meets the run's very end (see the stop-signal-at-exit note in docs/cluster.md)
    codes = []
    while c.ctl.queued():
        assert len(codes) < 3, f"more than 4 allocations: {codes}\n{c.text()}"
        codes.append(c.allocation()[1])
    assert codes[-1] == 0 and all(x not in (0, 1, 2) for x in codes[:-1]), f"{codes}\n{c.text()}"
    with mpigather.load(out) as res:
        assert sorted(res, key=int) == [str(i) for i in range(n)]
        assert [i for i in range(n) if not same(res[str(i)], value(i))] == []
    done = done_ids(out)
    assert sorted(done) == list(range(n))
    assert all("--resume" in r[0]["argv"] for r in runs(out)[1:])
