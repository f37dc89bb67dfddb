"""Read the demo's output back and check every result against a fresh computation."""

import sys

import numpy as np
from demo import simulate  # noqa: E402  (scripts/ is on sys.path when run as a script)

import mpigather

out = sys.argv[1] if len(sys.argv) > 1 else "demo_out.h5"
with mpigather.load(out) as results:
    ids = sorted(results, key=int)
    total = 0
    for tid in ids:
        got, want = results[tid], simulate(int(tid))
        assert all(np.array_equal(got[k], want[k]) for k in want), f"task {tid} differs"
        total += sum(a.nbytes for a in got.values())
    meta = results.attrs(ids[0])
print(f"read back {len(ids)} results, {total / 2**20:.0f} MiB, all identical to a fresh computation;"
      f" task {ids[0]} ran on rank {meta['rank']} in {meta['duration']:.3f} s")
