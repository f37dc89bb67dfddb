"""One summary over every pytest run of ``make test``: the whole suite, then each matrix entry.

    python scripts/test_summary.py RESULTS ENTRY...

RESULTS is the folder that ``make test`` fills, per ENTRY (``main`` for the whole suite, then the
matrix entries: ``mpich-net``, ``openmpi``...): ``ENTRY.json`` (what pytest's ``--results-file``
wrote: every test's outcome, each skip's reason), ``ENTRY.rc`` (pytest's exit status), or
``ENTRY.unavailable`` (why the entry could not run, e.g. ``.venv-ompi`` could not be built), and
``start`` (when the whole run began, in seconds since the epoch).

Prints passed, failed and skipped per entry and over the whole run, every skip reason, and every
failed test. Exits 1 when a test failed or errored, when a pytest run ended badly or left no
results, and, under ``CI=true``, when a group of tests that this machine is expected to run did
not run at all (``GROUPS``), naming it and why; 0 otherwise.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ORDER = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")
# (what it tests, the entry it runs in, the node ids that belong to it): under CI=true each group must
# have passed tests, in every entry this make run was asked for
GROUPS = [
    ("the dead-worker tests under Open MPI with ULFM", "main", "tests/test_ulfm.py"),
    ("the real-Slurm tests", "main", "tests/test_slurm_real.py"),
    ("the installed wheel (built from the checkout, in a fresh venv)", "main", "tests/test_wheel.py"),
    ("the lint checks (ruff check, mypy)", "main", "tests/test_lint.py"),
    ("the network path (MPICH over TCP)", "mpich-net",
     "tests/test_mpi_stack.py::test_network_path_leaves_shared_memory"),
    ("the core tests under Open MPI", "openmpi", "tests/"),
]


def ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def slurm_opted_out() -> str:
    """Why the real-Slurm tests are not expected here ('' when they are): MPIGATHER_REAL_SLURM=off, or
    noinstall (.ci/run sets it when it could not install slurm-wlm and munge, and says so)."""
    mode = os.environ.get("MPIGATHER_REAL_SLURM", "")
    return f"MPIGATHER_REAL_SLURM={mode}" if mode in ("off", "noinstall") else ""


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s} s" if m else f"{s} s"


def counts_text(counts: dict[str, int]) -> str:
    parts = [f"{counts[k]} {k}" for k in ORDER if counts.get(k)]
    parts += [f"{v} {k}" for k, v in counts.items() if k not in ORDER and v]
    return ", ".join(parts) or "no tests"


def load(results: Path, entry: str) -> dict:
    """What one entry left: its results, its exit status, or why it did not run."""
    info: dict = {"entry": entry, "results": {}, "problem": "", "unavailable": "", "seconds": None}
    why = results / f"{entry}.unavailable"
    if why.exists():
        info["unavailable"] = why.read_text().strip() or "not run"
        return info
    rc_file, data_file = results / f"{entry}.rc", results / f"{entry}.json"
    rc = int(rc_file.read_text().strip() or -1) if rc_file.exists() else None
    if data_file.exists():
        data = json.loads(data_file.read_text())
        info["results"], info["seconds"], info["stack"] = data["results"], data.get("seconds"), data.get("stack")
        if rc is None:
            rc = data.get("exitstatus")
    if rc is None:
        info["problem"] = "did not run (no exit status, no results)"
    elif not data_file.exists():
        info["problem"] = f"pytest exited {rc} without results (see its output above)"
    elif rc != 0 and not (info["results"].get("failed") or info["results"].get("error")):
        info["problem"] = f"pytest exited {rc}" + (" (no tests ran)" if rc == 5 else " (see its output above)")
    return info


def missing_groups(infos: dict[str, dict]) -> list[str]:
    """Under CI=true: the groups that were expected here and did not pass a single test, with why."""
    out = []
    for what, entry, prefix in GROUPS:
        if entry not in infos:
            continue  # not asked for in this make run (e.g. make test-matrix MATRIX=openmpi)
        if what == "the real-Slurm tests" and slurm_opted_out():
            continue
        info = infos[entry]
        if info["unavailable"]:
            out.append(f"{what}: the {entry} entry did not run: {info['unavailable']}")
            continue
        mine = {k: [t for t in v if t["id"].startswith(prefix)] for k, v in info["results"].items()}
        if mine.get("passed"):
            continue
        reasons = sorted({t.get("reason", "") for t in mine.get("skipped", [])} - {""})
        n = sum(len(v) for v in mine.values())
        why = f"{counts_text({k: len(v) for k, v in mine.items()})}" if n else "no such test ran"
        out.append(f"{what} ({entry}: {prefix}): {why}" + "".join(f"\n      {r}" for r in reasons))
    return out


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    results, entries = Path(argv[0]), argv[1:]
    infos = {e: load(results, e) for e in entries}
    start = results / "start"
    wall = time.time() - float(start.read_text()) if start.exists() else None

    print("\n" + " make test: the whole run ".center(100, "="))
    total: dict[str, int] = {}
    width = max(len(e) for e in entries)
    for e, info in infos.items():
        counts = {k: len(v) for k, v in info["results"].items()}
        for k, v in counts.items():
            total[k] = total.get(k, 0) + v
        what = "the whole suite" if e == "main" else "-m matrix"
        if info["unavailable"]:
            line = f"NOT RUN: {info['unavailable']}"
        elif not counts:
            line = info["problem"] or "no tests"
        else:
            line = f"{counts_text(counts)} in {duration(info['seconds'])}"
            if info["problem"]:
                line += f"; {info['problem']}"
        print(f"{e:<{width}} ({info.get('stack') or e}, {what}): {line}")

    skips = [(e, t) for e, info in infos.items() for t in info["results"].get("skipped", [])]
    if skips:
        print("skipped, and why:")
        folded: dict[tuple[str, str, str], int] = {}
        for e, t in skips:
            key = (e, t.get("where", t["id"]), t.get("reason", "?"))
            folded[key] = folded.get(key, 0) + 1
        for (e, where, reason), n in folded.items():
            print(f"  [{e}] {n} x {where}: {reason}")
    bad = [(e, k, t["id"]) for e, info in infos.items() for k in ("failed", "error")
           for t in info["results"].get(k, [])]
    if bad:
        print("failed:")
        for e, k, nodeid in bad:
            print(f"  [{e}] {k.upper()} {nodeid}")
    problems = [f"{e}: {info['problem']}" for e, info in infos.items() if info["problem"]]
    not_run = [e for e, info in infos.items() if info["unavailable"]]
    if ci():
        problems += [f"CI=true, but {m}" for m in missing_groups(infos)]
    for p in problems:
        print(f"FAILED: {p}")

    line = counts_text(total)
    if not_run:
        line += f", {len(not_run)} entr{'y' if len(not_run) == 1 else 'ies'} not run ({', '.join(not_run)})"
    failed = bool(bad or problems)
    print(f"make test: {'FAILED' if failed else 'passed'}: {line} in {duration(wall)} ({', '.join(entries)})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
