"""A fake Slurm on one machine, for testing the batch templates: sbatch queues, a controller runs.

- ``sbatch [OPTIONS] SCRIPT``: copies SCRIPT and the caller's environment (Slurm's default
  ``--export=ALL``, plus ``--export=ALL,K=V`` pairs) into ``$FAKE_SLURM_DIR/jobs/<id>.json``,
  queues the job, and prints "Submitted batch job <id>" (or "<id>" with ``--parsable``).
- ``scontrol requeue ID``: queues job ID again, its restart count one higher.
- ``srun [OPTIONS] CMD...``: runs CMD under ``mpiexec -n $SLURM_NTASKS`` (see the ``srun`` shim).
- ``qsub [-v K=V,...] [-W depend=...] SCRIPT`` and ``qstat -f ID`` (its Resource_List.walltime):
  the same for the PBS template; such a job gets PBS_JOBID, PBS_O_WORKDIR, PBS_NODEFILE.
- ``Controller.start_next()`` plays slurmctld + slurmd: it takes the oldest queued job and runs
  its script with bash, as an allocation would, with SLURM_JOB_ID, SLURM_NTASKS (from
  ``#SBATCH --ntasks``), SLURM_SUBMIT_DIR, SLURM_RESTART_COUNT set.

Jobs run one at a time, in submission order, so a dependency ``afterany:<id>`` on a job that
was running when the new one was queued is met by construction; it is recorded, not enforced.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


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
        job = {"id": jid, "kind": kind, "script": str(copy), "env": env, "cwd": os.getcwd(), "options": opts,
               "restart_count": 0,
               "submitted_from": os.environ.get("SLURM_JOB_ID") or os.environ.get("PBS_JOBID")}
        (d / "jobs" / f"{jid}.json").write_text(json.dumps(job))
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
        jid = argv[1].split(".")[0]
        path = d / "jobs" / f"{jid}.json"
        if not path.exists():
            print(f"qstat: Unknown Job Id {argv[1]}", file=sys.stderr)
            return 1
        job = json.loads(path.read_text())
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


def scontrol(argv: list[str]) -> int:
    d = state_dir()
    if len(argv) >= 2 and argv[0] == "requeue":
        jid = int(argv[1])
        path = d / "jobs" / f"{jid}.json"
        if not path.exists():
            print(f"scontrol: error: Invalid job id specified for job {jid}", file=sys.stderr)
            return 1
        with _locked(d):
            job = json.loads(path.read_text())
            job["restart_count"] += 1
            path.write_text(json.dumps(job))
            _write_queue(d, [*_read_queue(d), jid])
        return 0
    print(f"fake scontrol: unsupported: {' '.join(argv)}", file=sys.stderr)
    return 1


class Controller:
    """Runs queued jobs one at a time, each as its own 'allocation' (a bash process)."""

    def __init__(self, d: Path) -> None:
        self.dir = d
        (d / "jobs").mkdir(parents=True, exist_ok=True)

    def queued(self) -> list[int]:
        return _read_queue(self.dir)

    def job(self, jid: int) -> dict[str, Any]:
        return json.loads((self.dir / "jobs" / f"{jid}.json").read_text())

    def start_next(self, log: Path) -> tuple[dict[str, Any], subprocess.Popen[bytes]] | None:
        with _locked(self.dir):
            q = _read_queue(self.dir)
            if not q:
                return None
            jid, rest = q[0], q[1:]
            _write_queue(self.dir, rest)
        job = self.job(jid)
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
                "SLURM_SUBMIT_DIR": job["cwd"], "SLURM_JOB_NAME": directives.get("job-name", "fake"),
            })
            if job["restart_count"]:
                env["SLURM_RESTART_COUNT"] = str(job["restart_count"])  # set only after a requeue
        out = open(log, "ab")
        try:
            proc = subprocess.Popen(["bash", job["script"]], cwd=job["cwd"], env=env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            out.close()
        return job, proc


if __name__ == "__main__":  # python fakeslurm.py sbatch|scontrol|qsub|qstat ARGS
    cmd, args = sys.argv[1], sys.argv[2:]
    sys.exit({"sbatch": submit, "scontrol": scontrol, "qsub": qsub, "qstat": qstat}[cmd](args))
