"""A fake Slurm on one machine, for testing the batch templates: sbatch queues, a controller runs.

The commands (shims in this folder, run with $FAKE_SLURM_PYTHON) keep their state in $FAKE_SLURM_DIR:

- ``sbatch [OPTIONS] SCRIPT``: copies SCRIPT and the caller's environment (Slurm's default
  ``--export=ALL``, plus ``--export=ALL,K=V`` pairs) into ``jobs/<id>.json``, queues the job, and
  prints "Submitted batch job <id>" (or "<id>" with ``--parsable``).
- ``scancel [--signal=SIG] [--batch|--full] ID...``: a pending job is cancelled at once. For a running
  job the request is left to the controller, which plays slurmctld and slurmd: a plain scancel
  sends SIGTERM to every process of the job and SIGKILL after KillWait, a ``--signal`` goes to the
  job's steps (through their srun), ``--batch`` to the batch shell only, ``--full`` to all.
- ``scontrol requeue ID``: queues a finished job again (restart count + 1); a running job is
  killed first, as Slurm does; refused for a job submitted with ``--no-requeue``.
- ``scontrol show job [-o] ID``: one line with JobState, Reason, Requeue, Restarts, ExitCode.
- ``srun [OPTIONS] CMD...`` (see the ``srun`` shim): ``--mpi=X`` runs CMD under ``mpiexec -n N``;
  without ``--mpi`` (MpiDefault=none) each of the N tasks starts alone, as a one-rank MPI job.
- ``qsub [-v K=V,...] [-W depend=...] SCRIPT``, ``qstat -f ID`` (its Resource_List.walltime),
  ``qdel ID`` (as a plain scancel) and ``qsig -s SIG ID`` (to the batch shell): the same for the
  PBS template; such a job gets PBS_JOBID, PBS_O_WORKDIR, PBS_NODEFILE, and its time limit is
  ``#PBS -l walltime``.

``Controller`` runs the oldest queued job as an allocation (its script under bash, with
SLURM_JOB_ID, SLURM_NTASKS from ``#SBATCH --ntasks``, SLURM_SUBMIT_DIR, SLURM_RESTART_COUNT), and
``tick()`` plays what slurmctld and slurmd do while it runs: the requests of scancel and scontrol,
the time limit (``#SBATCH --time``, to the second), and KillWait. A job killed this way ends
CANCELLED or TIMEOUT (Reason=TimeLimit); otherwise COMPLETED or FAILED, by its exit status.
Jobs run one at a time, in submission order, so a dependency ``afterany:<id>`` on a job that was
running when the new one was queued is met by construction; it is recorded, not enforced.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
FINISHED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")


def state_dir() -> Path:
    d = os.environ.get("FAKE_SLURM_DIR")
    if not d:
        sys.exit("fake slurm: FAKE_SLURM_DIR is not set")
    p = Path(d)
    (p / "jobs").mkdir(parents=True, exist_ok=True)
    return p


@contextmanager
def _locked(d: Path) -> Iterator[None]:
    with open(d / "lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _read_queue(d: Path) -> list[int]:
    q = d / "queue"
    return [int(x) for x in q.read_text().split()] if q.exists() else []


def _write_queue(d: Path, ids: list[int]) -> None:
    (d / "queue").write_text("".join(f"{i}\n" for i in ids))


def _job_path(d: Path, jid: int | str) -> Path:
    return d / "jobs" / f"{int(str(jid).split('.')[0])}.json"


def _load(d: Path, jid: int | str) -> dict[str, Any] | None:
    p = _job_path(d, jid)
    return json.loads(p.read_text()) if p.exists() else None


def _save(d: Path, job: dict[str, Any]) -> None:
    p = _job_path(d, job["id"])
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(job))
    tmp.replace(p)


def _directives(script: str, pattern: str) -> list[re.Match[str]]:
    """Matches of ``pattern`` in the leading comment block of a script (up to its first command)."""
    found = []
    for line in script.splitlines()[1:]:
        s = line.strip()
        if not s:
            continue
        if not s.startswith("#"):
            break
        m = re.match(pattern, s)
        if m:
            found.append(m)
    return found


def sbatch_directives(script: str) -> dict[str, str]:
    """The ``#SBATCH --key=value`` options of a script."""
    return {m.group(1).lstrip("-"): m.group(2) or ""
            for m in _directives(script, r"#SBATCH\s+(--?[\w-]+)(?:[=\s]+([^\s#]+))?")}


def time_limit_s(spec: str | None) -> float | None:
    """Slurm's --time (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S) in seconds, to the second (Slurm rounds up
    to minutes; the fake does not, so tests can use short limits)."""
    if not spec or spec.upper() in ("INFINITE", "UNLIMITED"):
        return None
    days, _, rest = spec.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if days:
        h, m, s = (parts + [0, 0])[:3]
    elif len(parts) == 1:
        h, m, s = 0, parts[0], 0
    elif len(parts) == 2:
        h, (m, s) = 0, parts
    else:
        h, m, s = parts
    return ((int(days or 0) * 24 + h) * 60 + m) * 60 + s


def pbs_directives(script: str) -> dict[str, list[str]]:
    """The ``#PBS -X value`` options of a script."""
    opts: dict[str, list[str]] = {}
    for m in _directives(script, r"#PBS\s+-(\w)\s*(\S*)"):
        opts.setdefault(m.group(1), []).append(m.group(2))
    return opts


def pbs_resources(script: str) -> dict[str, str]:
    res: dict[str, str] = {}
    for spec in pbs_directives(script).get("l", []):
        for kv in spec.split(","):
            k, _, v = kv.partition("=")
            res[k] = v
    return res


def pbs_slots(res: dict[str, str]) -> int:
    """MPI slots of ``select=N:...:mpiprocs=M`` or ``nodes=N:ppn=M``."""
    for key, per in (("select", "mpiprocs"), ("nodes", "ppn")):
        if key in res:
            parts = res[key].split(":")
            n = int(parts[0]) if parts[0].isdigit() else 1
            m = next((int(p.split("=")[1]) for p in parts[1:] if p.startswith(per + "=")), 1)
            return n * m
    return 1


def _queue_job(d: Path, script: str, env: dict[str, str], opts: dict[str, Any], kind: str) -> int:
    with _locked(d):
        n_file = d / "next_id"
        jid = int(n_file.read_text()) if n_file.exists() else 1001
        n_file.write_text(str(jid + 1))
        copy = d / "jobs" / f"{jid}.sh"
        shutil.copyfile(script, copy)
        directives = sbatch_directives(copy.read_text()) if kind == "slurm" else {}
        merged = {**directives, **opts}  # the command line wins over #SBATCH lines
        if "requeue" in opts or "no-requeue" in opts:
            requeue = "requeue" in opts
        else:
            requeue = "no-requeue" not in directives  # JobRequeue=1: requeueable unless asked not to be
        job = {"id": jid, "kind": kind, "script": str(copy), "env": env, "cwd": os.getcwd(), "options": opts,
               "restart_count": 0, "state": "PENDING", "reason": "None", "requeue": requeue, "exit_code": None,
               "requests": [], "name": merged.get("job-name", merged.get("J", "fake")),
               "submitted_from": os.environ.get("SLURM_JOB_ID") or os.environ.get("PBS_JOBID")}
        _save(d, job)
        _write_queue(d, [*_read_queue(d), jid])
    return jid


def qsub(argv: list[str]) -> int:
    d = state_dir()
    opts: dict[str, Any] = {}
    env = dict(os.environ)
    script = None
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("-") and len(a) == 2 and a != "-V" and i + 1 < len(argv):
            val = argv[i + 1]
            opts.setdefault(a[1], []).append(val)
            if a == "-v":
                for kv in val.split(","):
                    k, _, v = kv.partition("=")
                    env[k] = v
            i += 2
            continue
        if a.startswith("-"):
            opts.setdefault(a.lstrip("-"), []).append("")
        else:
            script = a
            break
        i += 1
    if script is None or not Path(script).is_file():
        print(f"qsub: script file cannot be loaded - No such file or directory: {script}", file=sys.stderr)
        return 2
    jid = _queue_job(d, script, env, opts, "pbs")
    print(f"{jid}.fakepbs")
    return 0


def qstat(argv: list[str]) -> int:
    d = state_dir()
    if len(argv) >= 2 and argv[0] == "-f":
        job = _load(d, argv[1])
        if job is None:
            print(f"qstat: Unknown Job Id {argv[1]}", file=sys.stderr)
            return 1
        res = pbs_resources(Path(job["script"]).read_text())
        print(f"Job Id: {argv[1]}")
        for k, v in res.items():
            print(f"    Resource_List.{k} = {v}")
        return 0
    print(f"fake qstat: unsupported: {' '.join(argv)}", file=sys.stderr)
    return 1


def submit(argv: list[str]) -> int:
    d = state_dir()
    opts: dict[str, str] = {}
    exports: dict[str, str] = {}
    parsable = False
    script = None
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--parsable":
            parsable = True
        elif a.startswith("--") and "=" in a:
            k, v = a[2:].split("=", 1)
            opts[k] = v
        elif a in ("--requeue", "--no-requeue"):
            opts[a[2:]] = ""
        elif a.startswith("-") and script is None:
            opts[a.lstrip("-")] = argv[i + 1] if i + 1 < len(argv) else ""
            i += 1
        else:
            script = a
            break
        i += 1
    if script is None or not Path(script).is_file():
        print(f"sbatch: error: Unable to open file {script}", file=sys.stderr)
        return 1
    exp = opts.get("export", "ALL")
    env = dict(os.environ) if exp.split(",")[0] == "ALL" else {}
    for kv in exp.split(",")[1:]:
        if "=" in kv:
            k, v = kv.split("=", 1)
            exports[k] = v
    env.update(exports)
    jid = _queue_job(d, script, env, opts, "slurm")
    print(jid if parsable else f"Submitted batch job {jid}")
    return 0


def scancel(argv: list[str]) -> int:
    d = state_dir()
    if os.environ.get("FAKE_SLURM_SCANCEL_FAILS"):  # a test's way to lose a race with the scheduler
        print("scancel: error: Unable to contact slurm controller (connect failure)", file=sys.stderr)
        return 1
    sig, target, ids = None, "job", []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--signal="):
            sig = a.split("=", 1)[1]
        elif a in ("-s", "--signal"):
            i += 1
            sig = argv[i]
        elif a in ("-b", "--batch"):
            target = "batch"
        elif a in ("-f", "--full"):
            target = "full"
        else:
            ids.append(a)
        i += 1
    rc = 0
    for jid in ids:
        with _locked(d):
            job = _load(d, jid)
            if job is None or job["state"] in FINISHED:
                print(f"scancel: error: Kill job error on job id {jid}: Invalid job id specified", file=sys.stderr)
                rc = 1
                continue
            if job["state"] == "PENDING":
                if sig is None:
                    job["state"] = "CANCELLED"
                    _write_queue(d, [j for j in _read_queue(d) if j != job["id"]])
                    _save(d, job)
                continue  # a signal to a pending job does nothing
            if sig is None:
                job["requests"].append({"kill": "CANCELLED"})
            else:
                job["requests"].append({"signal": sig.upper().removeprefix("SIG"),
                                        "to": "steps" if target == "job" else target})
            _save(d, job)
    return rc


def qdel(argv: list[str]) -> int:
    """``qdel ID``: as a plain scancel (SIGTERM, SIGKILL after the kill delay)."""
    return scancel(argv)


def qsig(argv: list[str]) -> int:
    """``qsig [-s SIG] ID``: the signal goes to the job's session leader, the batch shell."""
    sig = argv[argv.index("-s") + 1] if "-s" in argv else "TERM"
    ids = [a for i, a in enumerate(argv) if a != "-s" and (i == 0 or argv[i - 1] != "-s")]
    return scancel(["--batch", f"--signal={sig}", *ids])


def scontrol(argv: list[str]) -> int:
    d = state_dir()
    if len(argv) >= 2 and argv[0] == "requeue":
        with _locked(d):
            job = _load(d, argv[1])
            if job is None:
                print(f"scontrol: error: Invalid job id specified for job {argv[1]}", file=sys.stderr)
                return 1
            if not job["requeue"]:
                print("Requested operation is presently disabled for job " + argv[1], file=sys.stderr)
                return 1
            if job["state"] == "PENDING":
                print(f"Job is pending execution for job {argv[1]}", file=sys.stderr)
                return 1
            job["restart_count"] += 1
            if job["state"] == "RUNNING":
                job["requests"].append({"kill": "REQUEUE"})  # the controller kills it, then it is queued
            else:
                job["state"] = "PENDING"
                _write_queue(d, [*_read_queue(d), job["id"]])
            _save(d, job)
        return 0
    if argv[:2] == ["show", "job"] or argv[:1] == ["show"]:
        rest = [a for a in argv[2:] if a not in ("-o", "--oneliner")]
        job = _load(d, rest[0]) if rest else None
        if job is None:
            print("slurm_load_jobs error: Invalid job id specified", file=sys.stderr)
            return 1
        code = job["exit_code"] if job["exit_code"] is not None else 0
        state = job["state"]
        if (d / "jobs" / f"{job['id']}.terminating").exists():
            state = "COMPLETING"  # Slurm shows this, not CANCELLED or TIMEOUT, until the job's processes are gone
        print(f"JobId={job['id']} JobName={job['name']} JobState={state} Reason={job['reason']} "
              f"Requeue={int(job['requeue'])} Restarts={job['restart_count']} ExitCode={code}:0")
        return 0
    print(f"fake scontrol: unsupported: {' '.join(argv)}", file=sys.stderr)
    return 1


def _tree(pid: int) -> list[Any]:
    """The process ``pid`` and all its descendants (psutil.Process objects), parents first."""
    import psutil

    try:
        p = psutil.Process(pid)
        return [p, *p.children(recursive=True)]
    except psutil.Error:
        return []


def _job_processes(pid: int) -> list[Any]:
    """The processes that slurmd would signal: the batch shell and its descendants, less the fake's
    own plumbing of a step (mpiexec and its proxies, which a real step does not have)."""
    import psutil

    procs = []
    for p in _tree(pid):
        try:
            if p.name().startswith(("mpiexec", "hydra_")):
                continue
        except psutil.Error:
            continue
        procs.append(p)
    return procs


def _send(procs: list[Any], sig: int) -> None:
    import psutil

    for p in procs:
        try:
            p.send_signal(sig)
        except psutil.Error:
            pass


class Controller:
    """Runs queued jobs one at a time, each as its own 'allocation' (a bash process), and plays
    slurmctld + slurmd for the running one: ``tick()`` while it runs, ``finish()`` after."""

    def __init__(self, d: Path, kill_wait: float = 3.0) -> None:
        self.dir = d
        self.kill_wait = kill_wait  # Slurm's KillWait: SIGTERM, then SIGKILL this much later
        (d / "jobs").mkdir(parents=True, exist_ok=True)
        self._started: dict[int, float] = {}
        self._term_at: dict[int, float] = {}

    def queued(self) -> list[int]:
        return _read_queue(self.dir)

    def job(self, jid: int) -> dict[str, Any]:
        job = _load(self.dir, jid)
        assert job is not None, f"no job {jid}"
        return job

    def start_next(self, log: Path) -> tuple[dict[str, Any], subprocess.Popen[bytes]] | None:
        with _locked(self.dir):
            q = _read_queue(self.dir)
            if not q:
                return None
            jid, rest = q[0], q[1:]
            _write_queue(self.dir, rest)
            job = self.job(jid)
            job.update(state="RUNNING", reason="None", requests=[], exit_code=None)
            _save(self.dir, job)
        (self.dir / "jobs" / f"{jid}.terminating").unlink(missing_ok=True)
        (self.dir / "jobs" / f"{jid}.sruns").unlink(missing_ok=True)
        script = Path(job["script"]).read_text()
        env = dict(job["env"])
        env["FAKE_SLURM_DIR"] = str(self.dir)
        env["PATH"] = f"{HERE}{os.pathsep}{env.get('PATH', os.environ.get('PATH', ''))}"
        if job.get("kind") == "pbs":
            res = pbs_resources(script)
            nodefile = self.dir / "jobs" / f"{jid}.nodes"
            nodefile.write_text("localhost\n" * pbs_slots(res))
            env.update({"PBS_JOBID": f"{jid}.fakepbs", "PBS_O_WORKDIR": job["cwd"], "PBS_NODEFILE": str(nodefile),
                        "PBS_JOBNAME": (pbs_directives(script).get("N") or ["fake"])[0]})
        else:
            directives = sbatch_directives(script)
            env.update({
                "SLURM_JOB_ID": str(jid), "SLURM_JOBID": str(jid),
                "SLURM_NTASKS": directives.get("ntasks", directives.get("n", "1")),
                "SLURM_SUBMIT_DIR": job["cwd"], "SLURM_JOB_NAME": job["name"],
            })
            if job["restart_count"]:
                env["SLURM_RESTART_COUNT"] = str(job["restart_count"])  # set only after a requeue
        out = open(log, "ab")
        try:
            proc = subprocess.Popen(["bash", job["script"]], cwd=job["cwd"], env=env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            out.close()
        self._started[jid] = time.monotonic()
        return job, proc

    def warn(self, job: dict[str, Any], proc: subprocess.Popen[bytes]) -> str:
        """Send the warning of ``#SBATCH --signal=[B:]SIG@T`` now (as slurmctld does T s before the
        time limit); returns the signal's name."""
        spec = sbatch_directives(Path(job["script"]).read_text()).get("signal", "B:USR1@120")
        batch, _, rest = spec.rpartition(":")
        name = rest.split("@")[0].upper().removeprefix("SIG")
        sig = signal.Signals[f"SIG{name}"]
        if batch:
            proc.send_signal(sig)
        else:
            self._signal_steps(job["id"], sig)
        return name

    def _signal_steps(self, jid: int, sig: int) -> None:
        """A signal to the job's steps: through each fake srun, which forwards it to its tasks."""
        sruns = self.dir / "jobs" / f"{jid}.sruns"
        pids = [int(x) for x in sruns.read_text().split()] if sruns.exists() else []
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def _terminate(self, job: dict[str, Any], proc: subprocess.Popen[bytes], state: str, reason: str) -> None:
        """What slurmd does to end a job: SIGTERM to every process of it (the fake srun then leaves its
        tasks to this), SIGKILL after KillWait (in tick)."""
        jid = job["id"]
        if jid in self._term_at:
            return
        with _locked(self.dir):
            job = self.job(jid)
            job.update(state=state, reason=reason)
            _save(self.dir, job)
        (self.dir / "jobs" / f"{jid}.terminating").touch()
        self._term_at[jid] = time.monotonic()
        _send(_job_processes(proc.pid), signal.SIGTERM)

    def tick(self, job: dict[str, Any], proc: subprocess.Popen[bytes]) -> None:
        """One pass of the controller over the running job: requests, time limit, KillWait."""
        jid = job["id"]
        with _locked(self.dir):
            current = self.job(jid)
            requests, current["requests"] = current["requests"], []
            if requests:
                _save(self.dir, current)
        for r in requests:
            if "kill" in r:
                self._terminate(job, proc, "CANCELLED" if r["kill"] == "CANCELLED" else "REQUEUE", "None")
                continue
            sig = signal.Signals[f"SIG{r['signal']}"]
            if r["to"] == "batch":
                proc.send_signal(sig)
            elif r["to"] == "full":
                _send(_job_processes(proc.pid), sig)
            else:
                self._signal_steps(jid, sig)
        script = Path(job["script"]).read_text()
        if job["kind"] == "pbs":
            limit = time_limit_s(pbs_resources(script).get("walltime"))
        else:
            limit = time_limit_s(sbatch_directives(script).get("time"))
        if limit is not None and time.monotonic() - self._started[jid] > limit:
            self._terminate(job, proc, "TIMEOUT", "TimeLimit")
        term = self._term_at.get(jid)
        if term is not None and time.monotonic() - term > self.kill_wait:
            _send(_tree(proc.pid), signal.SIGKILL)

    def finish(self, job: dict[str, Any], proc: subprocess.Popen[bytes]) -> dict[str, Any]:
        """Record the end of an allocation: kill what is left of the job, set its final state."""
        jid = job["id"]
        leftovers = _tree(proc.pid)[1:] if proc.poll() is None else []
        _send(leftovers, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
        rc = proc.wait(10)
        self._term_at.pop(jid, None)
        with _locked(self.dir):
            current = self.job(jid)
            current["exit_code"] = rc if rc >= 0 else 0
            for r in current["requests"]:  # a requeue or cancel that came as the script was leaving
                if "kill" in r and current["state"] == "RUNNING":
                    current["state"] = "CANCELLED" if r["kill"] == "CANCELLED" else "REQUEUE"
            current["requests"] = []
            if current["state"] == "REQUEUE":
                current.update(state="PENDING", reason="None")
                _write_queue(self.dir, [*_read_queue(self.dir), jid])
            elif current["state"] == "RUNNING":
                current["state"] = "COMPLETED" if rc == 0 else "FAILED"
            _save(self.dir, current)
        (self.dir / "jobs" / f"{jid}.terminating").unlink(missing_ok=True)
        return current


if __name__ == "__main__":  # python fakeslurm.py sbatch|scancel|scontrol|qsub|qstat|qdel|qsig ARGS
    cmd, args = sys.argv[1], sys.argv[2:]
    sys.exit({"sbatch": submit, "scancel": scancel, "scontrol": scontrol, "qsub": qsub, "qstat": qstat,
              "qdel": qdel, "qsig": qsig}[cmd](args))
