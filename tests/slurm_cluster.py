"""A one-node Slurm on localhost for tests: Debian's slurm-wlm (munged, slurmctld, slurmd), started
from a configuration written into a temporary folder, on free ports, with its own munge socket and
key, so it shares nothing with a Slurm or munge the machine may already run.

``SlurmCluster.start(folder)`` returns a running cluster or raises ``Unavailable`` with the reason;
``stop()`` cancels what is left of its jobs and ends the three daemons by their pids.
``ensure_installed()`` installs slurm-wlm and munge with apt-get when they are missing and this is
root on Debian (tests and CI run as root). ``MPIGATHER_REAL_SLURM``: ``off`` skips all that,
``noinstall`` never runs apt-get, ``require`` makes the tests fail where they would skip, and so
does ``CI=true`` unless it is ``off`` or ``noinstall`` (``required()``).

The configuration is the one the batch template meets on most clusters (MpiDefault=none,
select/cons_tres, proctrack/linuxproc, JobRequeue=1), with short timers so that tests stay short:
KillWait, the requeue delay (AuthInfo cred_expire) and the scheduler's passes. There is no
slurmdbd, so no sacct: jobcomp/filetxt records every job's end (and each requeue) with its state
and exit code, which ``completions()`` reads.

Job ids start at a random number (FirstJobId): an MPI step that Slurm kills leaves shared-memory
files in /dev/shm named after its job and step id (MPICH), and a later step with the same ids, from
a later test session that numbered its jobs from 1 again, would hang in MPI_Init on them.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

DAEMONS = ("munged", "slurmctld", "slurmd")
CRED_EXPIRE = 10  # AuthInfo=cred_expire (Slurm's minimum is 5, its default 120): a requeued job waits this + 1 s
KILL_WAIT = 10  # seconds between SIGTERM and SIGKILL when Slurm ends a job (Slurm's default: 30)
CPUS = 32  # declared, more than the machine has (SlurmdParameters=config_overrides): room for parallel chains


TABLE = pytest.StashKey[list]()  # rows of the table that conftest.py prints in the terminal summary


class Unavailable(Exception):
    """This machine cannot run the local Slurm; the message says why."""


def required() -> str:
    """Why a real-Slurm test that cannot run must fail rather than skip ('' when it may skip):
    MPIGATHER_REAL_SLURM=require, or CI=true where Slurm was not ruled out (.ci/run sets noinstall
    when it could not install slurm-wlm and munge, and says so)."""
    mode = os.environ.get("MPIGATHER_REAL_SLURM", "auto")
    if mode == "require":
        return "MPIGATHER_REAL_SLURM=require"
    if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes") and mode not in ("off", "noinstall"):
        return f"CI=true (MPIGATHER_REAL_SLURM={mode})"
    return ""


def _which(name: str) -> str | None:
    return shutil.which(name) or next((str(p) for d in ("/usr/sbin", "/usr/bin")
                                       if (p := Path(d) / name).exists()), None)


def missing() -> list[str]:
    return [d for d in (*DAEMONS, "sbatch", "scontrol", "scancel", "srun", "squeue") if _which(d) is None]


def ensure_installed() -> None:
    """Raise Unavailable unless slurm-wlm and munge are installed, installing them when we can."""
    mode = os.environ.get("MPIGATHER_REAL_SLURM", "auto")
    if mode == "off":
        raise Unavailable("MPIGATHER_REAL_SLURM=off")
    if not missing():
        return
    if mode == "noinstall" or os.geteuid() != 0 or _which("apt-get") is None:
        raise Unavailable(f"{', '.join(missing())} not installed (as root on Debian: apt-get install slurm-wlm munge)")
    print("\ninstalling slurm-wlm and munge with apt-get for the real-Slurm tests (MPIGATHER_REAL_SLURM=off skips)",
          flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge"]):
        try:
            p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            raise Unavailable(f"{' '.join(cmd)} timed out (no network?)") from None
        if p.returncode != 0 and cmd[1] == "install":
            tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or [""]
            raise Unavailable(f"apt-get install slurm-wlm munge failed: {tail[0]}")
    if missing():
        raise Unavailable(f"still missing after apt-get install: {', '.join(missing())}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmCluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self.jobcomp = root / "jobcomp.log"
        self.socket = root / "munge" / "munge.socket"
        self.node = socket.gethostname()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        # the daemons outlive the test that starts them: not tagged as that test's processes
        self.env = {k: v for k, v in os.environ.items() if k != "MPIGATHER_TEST_TAG"} | {"SLURM_CONF": str(self.conf)}
        for var in [k for k in self.env if k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))]:
            if var != "SLURM_CONF":
                del self.env[var]  # a test run inside a Slurm job must not leak that job's settings

    @classmethod
    def start(cls, root: Path, timeout: float = 60) -> SlurmCluster:
        ensure_installed()
        if os.geteuid() != 0:
            raise Unavailable("needs root (slurmd starts each job as its user)")
        c = cls(root)
        try:
            c._configure()
            c._start_daemons(timeout)
        except Exception:
            c.stop()
            raise
        return c

    def _configure(self) -> None:
        for sub in ("munge", "state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)  # munged wants its socket's folders searchable by everyone
        (self.root / "munge").chmod(0o755)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        r = self.root
        self.conf.write_text(f"""\
# written by tests/slurm_cluster.py
ClusterName=mpigtest
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.socket},cred_expire={CRED_EXPIRE}
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={self.jobcomp}
JobRequeue=1
FirstJobId={random.randint(1_000_000, 60_000_000)}
KillWait={KILL_WAIT}
MinJobAge=300
InactiveLimit=0
ReturnToService=2
SchedulerParameters=bf_interval=5,sched_interval=5
MailProg=/bin/true
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={CPUS} State=UNKNOWN
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")
        try:
            self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                                start_new_session=True)
        finally:
            log.close()

    def _wait(self, what: str, ready, timeout: float) -> None:
        t0 = time.monotonic()
        while not ready():
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead or time.monotonic() - t0 > timeout:
                why = f"{dead[0]} exited" if dead else f"not ready after {timeout:.0f} s"
                raise Unavailable(f"local Slurm: {what}: {why}\n{self.logs()}")
            time.sleep(0.3)

    def _start_daemons(self, timeout: float) -> None:
        m = self.root / "munge"
        self._spawn("munged", [_which("munged") or "munged", "--foreground", "--force", f"--socket={self.socket}",
                               f"--key-file={m / 'munge.key'}", f"--pid-file={m / 'munged.pid'}",
                               f"--log-file={self.root / 'log' / 'munged.log'}", f"--seed-file={m / 'munged.seed'}"])
        self._wait("munged", self.socket.exists, timeout)
        self._spawn("slurmctld", [_which("slurmctld") or "slurmctld", "-D", "-i", "-f", str(self.conf)])
        self._wait("slurmctld", lambda: self.run("scontrol", "ping").stdout.count("UP") > 0, timeout)
        self._spawn("slurmd", [_which("slurmd") or "slurmd", "-D", "-f", str(self.conf)])
        self._wait("slurmd", lambda: self.run("sinfo", "-h", "-o", "%t").stdout.strip() == "idle", timeout)

    def run(self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """A Slurm command against this cluster (its output as text; never raises on failure)."""
        try:
            return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, cwd=cwd,
                                  env={**(env or self.env), "SLURM_CONF": str(self.conf)})
        except (subprocess.TimeoutExpired, OSError) as e:
            return subprocess.CompletedProcess(list(args), 124, "", str(e))

    def job(self, jid: str | int) -> dict[str, str]:
        """``scontrol show job``'s fields, while slurmctld still knows the job ({} after)."""
        p = self.run("scontrol", "show", "job", "-o", str(jid))
        return dict(f.split("=", 1) for f in p.stdout.split() if "=" in f) if p.returncode == 0 else {}

    def active(self, name: str) -> list[dict[str, str]]:
        """The jobs called ``name`` that are pending, running or completing."""
        p = self.run("squeue", "-h", "-n", name, "-t", "PD,R,CG,S", "-o", "%i %T")
        return [dict(zip(("id", "state"), line.split())) for line in p.stdout.splitlines() if line.strip()]

    def completions(self, name: str | None = None) -> list[dict[str, str]]:
        """The jobcomp records (one each time a job ended or was requeued), in order."""
        if not self.jobcomp.exists():
            return []
        recs = [dict(f.split("=", 1) for f in line.split() if "=" in f)
                for line in self.jobcomp.read_text().splitlines()]
        return [r for r in recs if name is None or r.get("Name") == name]

    def logs(self, lines: int = 15) -> str:
        out = []
        for f in sorted((self.root / "log").glob("*")):
            tail = f.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {f.name}\n" + "\n".join(tail))
        return "\n".join(out)

    def stop(self) -> None:
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            ids = self.run("squeue", "-h", "-o", "%i").stdout.split()
            if ids:
                self.run("scancel", *ids)
                t0 = time.monotonic()
                while self.run("squeue", "-h", "-o", "%i").stdout.strip() and time.monotonic() - t0 < KILL_WAIT + 20:
                    time.sleep(0.5)
        for name in reversed(DAEMONS):
            p = self.procs.get(name)
            if p is None or p.poll() is not None:
                continue
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
