"""`make bench` (many simulated workers): the real master, its scheduler, sinks, journal and
status, against 10 to 100,000 simulated workers (``scripts/simulate.py``), one run each.

    python scripts/bench_simulate.py                 # 10, 100, 1,000 and 10,000 workers
    python scripts/bench_simulate.py --big           # and 100,000 (several minutes)
    python scripts/bench_simulate.py --quick         # 10, 100 and 1,000, fewer tasks

Every run offers the master more results than it can take (tasks of ``workers / 2000`` seconds,
one result a message), so the master's cost per result is its own, not its idle polling. Each
N also runs once with a Ctrl-C after a few seconds. Writes ``bench/SIMULATE.md`` and
``bench/simulate.jsonl`` (``--quick``: under ``bench/raw/quick/``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SIM = ROOT / "scripts" / "simulate.py"
COLUMNS = ("workers", "tasks", "master_cpu_us_per_result", "master_rss_mib", "start_s", "first_result_s", "end_s",
           "journal_bytes", "seconds", "status_s")


def run(workers: int, tasks: int, interrupt: float | None, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, str(SIM), "--workers", str(workers), "--tasks", str(tasks),
           "--task-seconds", str(workers / 2000), "--dist", "uniform", "--batch-window", "0.002",
           "--status-after", "2"]
    if interrupt is not None:
        cmd += ["--interrupt-after", str(interrupt)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    line = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else ""
    if not line.startswith("{"):
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    r: dict[str, Any] = json.loads(line)
    r["interrupted_after"] = interrupt
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--big", action="store_true", help="100,000 workers too")
    ap.add_argument("--timeout", type=float, default=1800)
    a = ap.parse_args()
    sizes = [10, 100, 1000] if a.quick else [10, 100, 1000, 10_000] + ([100_000] if a.big else [])
    rows = []
    for n in sizes:
        tasks = max(5_000 if a.quick else 20_000, 4 * n)
        for interrupt in (None, 5.0):
            r = run(n, tasks, interrupt, a.timeout)
            rows.append(r)
            print(json.dumps({k: r.get(k) for k in (*COLUMNS, "interrupted_after", "exit_code")}), flush=True)
    out = ROOT / "bench" / ("raw/quick" if a.quick else "")
    out.mkdir(parents=True, exist_ok=True)
    (out / "simulate.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = next((r for r in rows if r["workers"] == 100 and r["interrupted_after"] is None), None)
    lines = ["# The real master against many simulated workers", "",
             "`python scripts/bench_simulate.py`: one run each, the master of this commit behind a simulated `Link`"
             " (scripts/simulate.py), on this 2-core machine. CPU per result is the master's own (the simulator's"
             " bookkeeping is subtracted); `x100` is that cost over the 100-worker run's. Ctrl-C rows: a SIGINT"
             " after 5 s; `exit_s` is from it to the master's exit, `unreleased` the workers it did not see leave.",
             "",
             "| workers | tasks | master µs/result | x100 | peak RSS MiB | start_s | first result s | end_s | journal"
             " | seconds | status_s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["interrupted_after"] is not None:
            continue
        ratio = r["master_cpu_us_per_result"] / base["master_cpu_us_per_result"] if base else float("nan")
        lines.append(f"| {r['workers']:,} | {r['tasks']:,} | {r['master_cpu_us_per_result']:.0f} | {ratio:.2f} |"
                     f" {r['master_rss_mib']:.0f} | {r['start_s']:.2f} | {r['first_result_s']:.2f} |"
                     f" {r['end_s']:.2f} | {r['journal_bytes'] / 1e6:.2f} MB | {r['seconds']:.1f} |"
                     f" {r.get('status_s') or float('nan'):.2f} |")
    lines += ["", "| workers, Ctrl-C | exit_s | unreleased | exit code |", "|---|---|---|---|"]
    for r in rows:
        if r["interrupted_after"] is not None:
            lines.append(f"| {r['workers']:,} | {r.get('ctrlc_s') or float('nan'):.2f} |"
                         f" {r.get('unreleased', '?')} | {r.get('exit_code')} |")
    (out / "SIMULATE.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'SIMULATE.md'}")


if __name__ == "__main__":
    main()
