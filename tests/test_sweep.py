"""A parameter sweep of 200,000 tiny tasks from a JSONL file into every sink, both modes, with
the descriptor limit at 256 (many clusters set 1,024), so that a descriptor leak fails fast.
Open descriptors and master memory are sampled while it runs."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

import pytest
from helpers import env, mpiexec_path

import mpigather

pytestmark = [pytest.mark.mpi, pytest.mark.slow]

N = 200_000
LIMIT = 256


@pytest.fixture(scope="module")
def sweep_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep")
    p = d / "tasks.jsonl"
    with open(p, "w") as f:
        for i in range(N):
            f.write(json.dumps({"id": f"run-{i}", "seed": i}) + "\n")
    return p


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT))


def _master_pid(root_pid: int) -> int | None:
    import psutil

    try:
        kids = psutil.Process(root_pid).children(recursive=True)
    except psutil.Error:
        return None
    for k in kids:
        try:
            e = k.environ()
            if "python" in k.name() and (e.get("PMI_RANK") or e.get("OMPI_COMM_WORLD_RANK")) == "0":
                return k.pid
        except psutil.Error:
            continue
    return None


@pytest.mark.parametrize("sink,mode", [("memory", "stream"), ("h5", "stream"), ("h5", "direct"),
                                       ("dir", "stream"), ("dir", "direct")])
def test_a_sweep_of_200k_tiny_tasks_with_256_descriptors(tmp_path, sweep_file, sink, mode):
    import psutil

    out = {"memory": None, "h5": tmp_path / "o.h5", "dir": tmp_path / "odir"}[sink]
    if out is None:  # the library with out=None: the results stay in the master's memory
        script = tmp_path / "mem.py"
        script.write_text(
            "import json, mpigather, quickfuncs\n"
            f"tasks = (json.loads(line) for line in open({str(sweep_file)!r}))\n"
            "s = mpigather.run(quickfuncs.seed_value, tasks, out=None, progress='off')\n"
            "if s is not None:\n"
            f"    assert s.done == {N} and float(s.results['run-77']) == 77.0, s.text()\n"
            "    print('RESULT OK', s.master['peak_rss_mib'])\n")
        args = [str(script)]
    else:
        args = ["-m", "mpigather", "run", "quickfuncs:seed_value", "--tasks", str(sweep_file), "--out", str(out),
                "--mode", mode, "--progress", "off"]
    cmd = [mpiexec_path(), "-n", "3", sys.executable, *args]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
                         preexec_fn=_limit)
    peak_fds = peak_rss = 0
    t0 = time.monotonic()
    master = None
    while p.poll() is None:
        if time.monotonic() - t0 > 600:
            p.kill()
            pytest.fail("the sweep did not end in 600 s")
        master = master or _master_pid(p.pid)
        if master is not None:
            try:
                proc = psutil.Process(master)
                peak_fds = max(peak_fds, proc.num_fds())
                peak_rss = max(peak_rss, proc.memory_info().rss >> 20)
            except psutil.Error:
                pass
        time.sleep(0.2)
    so, se = p.communicate()
    wall = time.monotonic() - t0
    assert p.returncode == 0, f"{so}\n{se}"
    assert "Too many open files" not in se
    assert peak_fds < 64, f"the master held {peak_fds} descriptors"
    if out is None:
        assert "RESULT OK" in so, so
    else:
        assert f"{N} done, 0 failed" in so, so
        with mpigather.load(out) as res:
            assert len(res) == N and float(res["run-123456"]) == 123456.0
    print(f"\nsweep {sink}/{mode}: {N} tasks in {wall:.1f} s ({N / wall:,.0f}/s), master peak {peak_fds} fds,"
          f" {peak_rss} MiB RSS")
