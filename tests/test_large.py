"""More than 3 GiB gathered, one result over 2 GiB, while the master's memory stays under 1 GiB.

Marked slow, but `make test` runs it. The master's RSS is sampled from outside (psutil) while
the job runs; results are checked by crc32c of the stored bytes against the expected arrays,
plus a byte comparison of each result's first and last MiB.
"""

from __future__ import annotations

import subprocess
import time

import numpy as np
import psutil
import pytest
from helpers import env, mpi_cmd
from taskfuncs import big_result

import mpigather
from mpigather.results import checksum, raw

pytestmark = pytest.mark.mpi

GiB = 1 << 30


def _rank0(proc: psutil.Process) -> psutil.Process | None:
    for child in proc.children(recursive=True):
        try:
            e = child.environ()
            if "0" in (e.get("PMI_RANK"), e.get("OMPI_COMM_WORLD_RANK")) and "python" in child.name():
                return child
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


@pytest.mark.slow
@pytest.mark.parametrize("out_name", ["big.h5"])
def test_three_gib_with_a_result_over_2gib(tmp_path, out_name):
    out = tmp_path / out_name
    n = 4  # task 0: 2.29 GiB; tasks 1-3: 256 MiB each -> 3.04 GiB
    cmd = mpi_cmd(3, ["-m", "mpigather", "run", "taskfuncs:big_result", "--range", str(n), "--out", str(out),
                      "--progress", "off"])
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    ps = psutil.Process(proc.pid)
    peak, master = 0, None
    try:
        while proc.poll() is None:
            if time.monotonic() - t0 > 600:
                proc.kill()
                pytest.fail("large gather did not finish in 600 s")
            master = master or _rank0(ps)
            if master is not None:
                try:
                    peak = max(peak, master.memory_info().rss)
                except psutil.NoSuchProcess:
                    pass
            time.sleep(0.02)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    wall = time.monotonic() - t0
    assert proc.returncode == 0, f"{stdout}\n{stderr}"
    assert master is not None, "never saw the master process"
    total = 0
    with mpigather.load(out) as res:
        for i in range(n):
            want = big_result(i)
            total += want.nbytes
            ds = res._f["results"][str(i)]
            assert ds.shape == want.shape and ds.dtype == want.dtype
            mib = 1 << 20
            assert np.array_equal(ds[:mib], want[:mib]) and np.array_equal(ds[-mib:], want[-mib:])
            assert res.attrs(i)["crc32c"] == checksum([raw(want)])
            del want
    checked, bad, missing = mpigather.verify(out)  # recomputes each crc from the stored bytes
    assert (checked, bad, missing) == (n, [], [])
    print(f"\nlarge gather: {total / GiB:.2f} GiB in {wall:.1f} s, master peak RSS {peak / 2**20:.0f} MiB")
    assert total > 3 * GiB
    assert peak < 1 * GiB, f"master peak RSS {peak / 2**20:.0f} MiB"
