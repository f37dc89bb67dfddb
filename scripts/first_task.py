"""How soon a sweep from a task file starts: seconds from the launch of ``mpiexec -n 3 python -m
mpigather run bench_sweeps:point --tasks FILE --out OUT.h5`` to the first result recorded in the
journal (its first ``rows`` record: the first task handed out, run, written and made durable),
and the whole command's seconds and the master's peak RSS.

    python scripts/first_task.py --points 1000000 --rounds 3
    python scripts/first_task.py --points 10000000 --rounds 1
    python scripts/first_task.py --points 10000000 --first-only   # stop the run at its first result

``--code DIR`` runs the mpigather found in DIR instead of this checkout's (to compare two versions
on the same file and machine). The task file is ``bench/raw/sweep-N.jsonl`` (written once, as
``scripts/bench_readback.py`` does).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import bench_sweeps  # noqa: E402


def first_record(journal: Path, kinds: tuple[str, ...]) -> float | None:
    """The time of the journal's first record of one of ``kinds``, or None."""
    try:
        text = journal.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.endswith("}"):
            rec = json.loads(line)
            if rec.get("ev") in kinds:
                return float(rec.get("time") or rec["t"])
    return None


def one_run(tasks: Path, code: Path, first_only: bool) -> dict[str, float | None]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "scripts"), str(code)])
    mpiexec = str(Path(sys.executable).parent / "mpiexec")
    with tempfile.TemporaryDirectory(prefix="first-task-") as td:
        out = Path(td) / "sweep.h5"
        journal = Path(str(out) + ".journal")
        cmd = [mpiexec, "-n", "3", sys.executable, "-m", "mpigather", "run", "bench_sweeps:point", "--tasks",
               str(tasks), "--out", str(out), "--progress", "off"]
        t0 = time.time()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                             cwd=str(code), start_new_session=True)  # (-m: the code in cwd comes first)
        first = None
        while first_only and p.poll() is None and first is None:
            time.sleep(0.05)
            first = first_record(journal, ("rows", "done"))
        if first_only:
            os.killpg(p.pid, signal.SIGKILL)
        so, se = p.communicate(timeout=7200)
        wall = time.time() - t0
        if not first_only and p.returncode != 0:
            raise SystemExit(f"the run failed ({p.returncode}): {se.strip()[-800:]}")
        first = first or first_record(journal, ("rows", "done"))
        start = first_record(journal, ("start",))
        rss = re.search(r"peak RSS (\d+) MiB", so + se)
        return {"first": None if first is None else first - t0, "start": None if start is None else start - t0,
                "wall": None if first_only else wall, "rss_mib": float(rss.group(1)) if rss else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--code", default=str(ROOT), help="the directory holding the mpigather package to run")
    ap.add_argument("--first-only", action="store_true", help="stop each run at its first result")
    a = ap.parse_args(argv)
    raw = ROOT / "bench" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    tasks = bench_sweeps.write_tasks(raw / f"sweep-{a.points}.jsonl", a.points)
    runs = []
    for r in range(a.rounds):
        runs.append(one_run(tasks, Path(a.code), a.first_only))
        print(f"round {r + 1}/{a.rounds}: " + ", ".join(f"{k} {v:.2f}" for k, v in runs[-1].items() if v is not None),
              flush=True)
    for key in ("first", "start", "wall", "rss_mib"):
        vals = [x[key] for x in runs if x[key] is not None]
        if vals:
            print(f"{key}: median {statistics.median(vals):.2f}, min {min(vals):.2f}, max {max(vals):.2f}"
                  f" ({len(vals)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
