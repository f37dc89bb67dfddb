"""Stopping early under mpiexec: a sweep whose every task fails stops after a few, says the error
once, keeps its journal small, and --resume with the fixed function completes it; 10% of tasks
failing at random does not stop the default but stops --max-failures 5%; a limit reached while
tasks run loses nothing; keyword calling and a signature mismatch. Every run has a timeout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import env, gather, journal_records, show

import mpigather

pytestmark = [pytest.mark.mpi]


def tasks_file(path: Path, n: int, ids: bool = False) -> Path:
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({**({"id": f"t{i}"} if ids else {}), "seed": i, "x": float(i % 7)}) + "\n")
    return path


def status_json(out: Path) -> dict:
    p = subprocess.run([sys.executable, "-m", "mpigather", "status", str(out), "--json"], capture_output=True,
                       text=True, env=env(), timeout=60)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_every_task_fails_stops_early_once_then_resume_completes_it(tmp_path):
    tasks = tasks_file(tmp_path / "tasks.jsonl", 3000)
    out = tmp_path / "o.h5"
    p = gather(3, "failfuncs:storm", out, "--tasks", str(tasks), timeout=120)
    assert p.returncode == 1, show(p)
    assert "STOPPED EARLY" in p.stdout and "none succeeded" in p.stdout and "--resume" in p.stdout, show(p)
    assert p.stdout.count("unsupported operand") == 1 and p.stdout.count("FAILED") == 1, show(p)  # the error, once
    recs = journal_records(out)
    assert [r["ev"] for r in recs].count("error") == 1
    failures = sum(len(json.dumps(r)) for r in recs if r["ev"] in ("error", "failed"))
    assert failures < 5_000, failures  # the error once, the failed tasks as ranges
    jsize = Path(str(out) + ".journal").stat().st_size
    assert jsize < 300_000, jsize  # (most of it: the workers' timeline spans, at most 5000 each)
    outputs = [q for q in tmp_path.iterdir() if q.name.startswith("o.h5") and not q.name.endswith(".journal")]
    assert outputs and sum(q.stat().st_size for q in outputs if q.is_file()) < 1 << 20, outputs
    st = status_json(out)
    assert st["state"] == "stopped early" and st["exit"] == 1 and 20 <= st["failed"] < 200, st
    (err,) = st["errors"]
    assert err["count"] == st["failed"] and err["error"].startswith("TypeError: unsupported operand"), err
    assert sum(n for _, n in err["positions"]) == st["failed"]
    assert st["done"] + st["failed"] + st["pending"] == 3000, st

    p = gather(3, "failfuncs:fixed", out, "--tasks", str(tasks), "--resume", timeout=120)
    assert p.returncode == 0, show(p)
    fresh = tmp_path / "fresh.h5"
    p = gather(3, "failfuncs:fixed", fresh, "--tasks", str(tasks), timeout=120)
    assert p.returncode == 0, show(p)
    with mpigather.load(out) as a, mpigather.load(fresh) as b:
        ca, cb = a.columns(), b.columns()
        assert len(a) == len(b) == 3000
        order_a, order_b = np.argsort(ca["seed"]), np.argsort(cb["seed"])
        for key in cb:
            assert np.array_equal(ca[key][order_a], cb[key][order_b]), key  # bit-exact
    assert status_json(out)["failed"] == 0


def test_ten_percent_failing_goes_on_by_default_and_stops_at_five_percent(tmp_path):
    out = tmp_path / "o.h5"
    p = gather(3, "failfuncs:sometimes", out, "--range", "400", timeout=120)
    assert p.returncode == 1 and "STOPPED EARLY" not in p.stdout, show(p)
    with mpigather.load(out) as res:
        n_done = len(res)
    st = status_json(out)
    assert st["done"] == n_done and st["failed"] == 400 - n_done and 20 <= st["failed"] <= 60, st
    assert len(st["errors"]) == 1 and st["errors"][0]["count"] == st["failed"], st  # one place, many messages
    assert p.stdout.count("FAILED") == 1, show(p)

    out5 = tmp_path / "o5.h5"
    p = gather(3, "failfuncs:sometimes", out5, "--range", "400", "--max-failures", "5%", timeout=120)
    assert p.returncode == 1 and "STOPPED EARLY" in p.stdout and "--max-failures 5%" in p.stdout, show(p)
    assert "not run" in p.stdout, show(p)
    st = status_json(out5)
    assert st["state"] == "stopped early" and st["pending"] > 0, st


def test_bad_max_failures_is_a_usage_error(tmp_path):
    p = gather(3, "failfuncs:sometimes", tmp_path / "o.h5", "--range", "4", "--max-failures", "lots", timeout=60)
    assert p.returncode == 2 and "max failures 'lots'" in p.stderr, show(p)


def test_a_limit_reached_while_tasks_run_loses_nothing(tmp_path):
    out = tmp_path / "o.h5"
    extra = {"MPIGATHER_TEST_DIR": str(tmp_path)}
    p = gather(3, "failfuncs:first_fails_once", out, "--range", "12", "--max-failures", "0", "--prefetch", "1",
               timeout=120, extra_env=extra)
    assert p.returncode == 1 and "STOPPED EARLY" in p.stdout, show(p)
    st = status_json(out)
    assert st["failed"] == 1 and st["done"] + st["failed"] + st["pending"] == 12, st
    with mpigather.load(str(out) + ".partial") as res:  # (an HDF5 output of a run that stopped early)
        first = {k: res[k] for k in res}
    assert len(first) == st["done"] >= 1, (first, st)
    assert all(v == int(k) * 2.0 for k, v in first.items()), first  # what finished is stored
    p = gather(3, "failfuncs:first_fails_once", out, "--range", "12", "--resume", timeout=120, extra_env=extra)
    assert p.returncode == 0, show(p)
    with mpigather.load(out) as res:
        assert {int(k): res[k] for k in res} == {i: i * 2.0 for i in range(12)}


def test_keyword_calling_from_a_task_file(tmp_path):
    tasks = tasks_file(tmp_path / "tasks.jsonl", 50, ids=True)
    out = tmp_path / "o.h5"
    p = gather(3, "failfuncs:point", out, "--tasks", str(tasks), "--kwargs", timeout=120)
    assert p.returncode == 0, show(p)
    with mpigather.load(out) as res:
        assert res["t17"] == 17 * 1000 + 17 % 7


def test_a_signature_mismatch_stops_at_the_first_task_and_names_it(tmp_path):
    tasks = tasks_file(tmp_path / "tasks.jsonl", 2000)
    p = gather(3, "failfuncs:point", tmp_path / "o.h5", "--tasks", str(tasks), timeout=120)
    assert p.returncode == 1 and "STOPPED EARLY" in p.stdout, show(p)
    assert "point(seed, x) cannot take the task: missing a required argument: 'x'" in p.stdout, show(p)
    assert "--kwargs passes the keys as keyword arguments" in p.stdout, show(p)
    st = status_json(tmp_path / "o.h5")
    assert st["failed"] <= 4 and st["pending"] >= 1990, st
    p = gather(3, "failfuncs:storm", tmp_path / "o2.h5", "--tasks", str(tasks), "--kwargs", timeout=120)
    assert p.returncode == 1 and "storm(task) cannot take the task: missing a required argument: 'task'" in p.stdout, \
        show(p)
