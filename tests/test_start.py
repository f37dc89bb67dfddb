"""How a run starts: ranks that wait for another at the start sleep instead of spinning."""

from __future__ import annotations

from helpers import gather, show
from startfuncs import MASTER_LATE

import mpigather


def test_workers_wait_for_a_late_master_sleeping(tmp_path):
    """The master imports the task module 1.5 s late. MPICH's blocking collectives spin, and a
    worker that waited in one would have used about that much CPU before its first task; one
    that waits sleeping uses what its imports cost (about 0.3 s here)."""
    out = tmp_path / "o.h5"
    p = gather(3, "startfuncs:cpu_so_far", out, "--range", "4", timeout=120)
    assert p.returncode == 0, show(p)
    with mpigather.load(out) as res:
        cpu = res.columns()["value"]
    assert len(cpu) == 4 and max(cpu) < MASTER_LATE * 2 / 3, cpu
