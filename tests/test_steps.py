"""Multi-step tasks under mpiexec: steps in order on any worker, the worker deciding what comes
next, failures per step, hangs past a step's lease, SIGKILL of the whole job then --resume (no
finished step runs again), kinds of workers (and none of the kind needed), fan-out to 100
children, and a 2.5 GiB intermediate with bounded master memory."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from helpers import done_ids, env, gather, journal_records, kill_group, mpiexec_path, show
from stepfuncs import expected

import mpigather

pytestmark = pytest.mark.mpi


def steps_log(tmp_path: Path) -> Counter:
    p = tmp_path / "steps.log"
    return Counter((a, b) for a, b, _ in (line.split() for line in p.read_text().splitlines())) if p.exists() \
        else Counter()


def check(out: Path, n: int) -> None:
    with mpigather.load(out) as res:
        for i in range(n):
            got, want = res[str(i)], expected(i)
            assert got["energy"] == want["energy"] and np.array_equal(got["field"], want["field"]), i


def fenv(tmp_path: Path, **kw: str) -> dict[str, str]:
    return {"MPIGATHER_TEST_DIR": str(tmp_path), **kw}


@pytest.mark.matrix
@pytest.mark.parametrize("ranks", [1, 3])
@pytest.mark.parametrize("checkpoint", ["every", "none"])
@pytest.mark.parametrize("sink", ["h5", "dir"])
def test_steps_run_in_order_and_each_once(tmp_path, ranks, checkpoint, sink):
    out = tmp_path / ("o.h5" if sink == "h5" else "odir")
    n = 10
    p = gather(ranks, "stepfuncs:fetch", out, "--range", str(n), "--checkpoint", checkpoint, timeout=90,
               extra_env=fenv(tmp_path))
    assert p.returncode == 0, show(p)
    check(out, n)
    ran = steps_log(tmp_path)
    for i in range(n):
        want = ["fetch", "clean", "repair", "simulate"] if i % 5 == 4 else ["fetch", "clean", "simulate"]
        assert [s for s in ("fetch", "clean", "repair", "simulate") if ran[(str(i), s)]] == want, i
        assert all(ran[(str(i), s)] == 1 for s in want), (i, {s: ran[(str(i), s)] for s in want})
    assert not Path(str(out) + ".steps").exists(), "step outputs were left behind after a complete run"


def test_an_exception_in_a_step_retries_that_step_only(tmp_path):
    out = tmp_path / "o.h5"
    p = gather(3, "stepfuncs:fetch", out, "--range", "6", "--retries", "1", timeout=90,
               extra_env=fenv(tmp_path, STEP_FAULT="raise"))
    assert p.returncode == 0, show(p)
    check(out, 6)
    ran = steps_log(tmp_path)
    assert ran[("3", "simulate")] == 2 and ran[("3", "fetch")] == 1 and ran[("3", "clean")] == 1, ran
    recs = journal_records(out)
    fails = [r for r in recs if r["ev"] == "failed"]
    errors = [r for r in recs if r["ev"] == "error"]
    assert len(fails) == 1 and not fails[0]["final"] and fails[0]["pos"] == [[3, 1]], fails
    assert len(errors) == 1 and "in step 3 (simulate)" in errors[0]["error"], errors


def test_a_step_that_hangs_past_its_lease_runs_again_from_its_input(tmp_path):
    out = tmp_path / "o.h5"
    p = gather(3, "stepfuncs:fetch", out, "--range", "6", "--timeout", "3", "--retries", "1", timeout=90,
               extra_env=fenv(tmp_path, STEP_FAULT="hang"))
    assert p.returncode == 0, show(p)
    assert "is stuck in task 3" in p.stdout, show(p)
    check(out, 6)
    ran = steps_log(tmp_path)
    assert ran[("3", "simulate")] == 2 and ran[("3", "fetch")] == 1 and ran[("3", "clean")] == 1, ran


def test_sigkill_at_random_points_then_resume_reruns_no_finished_step(tmp_path):
    rng = random.Random(7)
    n = 40  # 0.05 s a step: about 3 s on two workers
    for trial in range(3):
        d = tmp_path / f"t{trial}"
        d.mkdir()
        out = d / "o.h5"
        cmd = [mpiexec_path(), "-n", "3", sys.executable, "-m", "mpigather", "run", "stepfuncs:fetch", "--range",
               str(n), "--out", str(out), "--progress", "off"]
        e = {**env(), **fenv(d, STEP_FAULT="slow")}
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e, start_new_session=True)
        at = rng.randint(5, 80)  # kill once this many steps are stored
        end = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < end:
            if sum(1 for r in journal_records(out) if r["ev"] == "step") >= at:
                break
            time.sleep(0.01)
        kill_group(proc.pid)
        proc.communicate(timeout=30)
        recs = journal_records(out)
        finished_steps = {(str(r["id"]), r["ran"]) for r in recs if r["ev"] == "step"}
        finished_tasks = {str(t) for t in done_ids(out, recs)}
        before = steps_log(d)
        (d / "steps.log").rename(d / "steps.before")
        p = gather(3, "stepfuncs:fetch", out, "--range", str(n), "--resume", timeout=90,
                   extra_env=fenv(d, STEP_FAULT="slow"))
        assert p.returncode == 0, show(p)
        check(out, n)
        after = steps_log(d)
        again = [k for k in after if k in finished_steps or k[0] in finished_tasks]
        assert again == [], f"trial {trial}: finished steps ran again after resume: {again}"
        print(f"\nkill-and-resume trial {trial}: {sum(before.values())} steps before the kill,"
              f" {len(finished_steps)} stored, {len(finished_tasks)} tasks done;"
              f" {sum(after.values())} steps after resume, 0 re-executed")


def test_steps_that_need_a_kind_run_only_on_such_workers(tmp_path):
    out = tmp_path / "o.h5"
    base = [sys.executable, "-m", "mpigather", "run", "stepfuncs:on_gpu", "--range", "8", "--out", str(out),
            "--progress", "off"]
    cmd = [mpiexec_path(), "-n", "2", *base, ":", "-n", "1", "env", "MPIGATHER_KINDS=gpu", *base]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=90, env={**env(), **fenv(tmp_path)})
    assert p.returncode == 0, show(p)
    with mpigather.load(out) as res:
        assert all(res[str(i)] == {"kinds": "gpu", "task": i} for i in range(8))


def test_a_step_needing_a_kind_no_worker_is_fails_at_once(tmp_path):
    out = tmp_path / "o.h5"
    t0 = time.monotonic()
    p = gather(3, "stepfuncs:on_gpu", out, "--range", "4", timeout=60, extra_env=fenv(tmp_path))
    assert p.returncode == 1, show(p)
    assert "needs a worker of kind 'gpu', and no worker is" in p.stdout, show(p)
    assert time.monotonic() - t0 < 30


def test_fan_out_to_a_hundred_children(tmp_path):
    out = tmp_path / "o.h5"
    p = gather(3, "stepfuncs:fan", out, "--range", "2", timeout=120, extra_env=fenv(tmp_path, FANOUT="100"))
    assert p.returncode == 0, show(p)
    assert "202 done, 0 failed" in p.stdout, show(p)
    with mpigather.load(out) as res:
        assert res["1"] == [f"1.{k}" for k in range(100)] or sorted(res["1"]) == sorted(f"1.{k}" for k in range(100))
        assert all(np.array_equal(res[f"{t}.{k}"], np.full(4, 100 * t + k)) for t in (0, 1) for k in range(100))
    info = json.loads(subprocess.run([sys.executable, "-m", "mpigather", "status", str(out), "--json"],
                                     capture_output=True, text=True, env=env(), timeout=60).stdout)
    assert info["total"] == 202 and info["done"] == 202 and info["pending"] == 0, info


@pytest.mark.slow
def test_a_2_5_gib_intermediate_keeps_master_memory_bounded(tmp_path):
    out = tmp_path / "o.h5"
    p = gather(2, "stepfuncs:big_middle", out, "--range", "1", timeout=300, extra_env=fenv(tmp_path))
    assert p.returncode == 0, show(p)
    rss = float(p.stdout.split("peak RSS ")[1].split()[0])
    assert rss < 2 * 64 + 300, f"master peak RSS {rss} MiB with a 2.5 GiB intermediate"
    with mpigather.load(out) as res:
        assert list(res["0"]) == [0.0, 2.0, 4.0]
    print(f"\n2.5 GiB intermediate: master peak RSS {rss:.0f} MiB")
