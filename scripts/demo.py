"""The demo task of `make run`: a fake simulation whose result is a 16 MiB field plus a few diagnostics.

Each task sleeps a random short while (workers finish out of order) and returns a dict of arrays.
"""

import time

import numpy as np


def simulate(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    time.sleep(float(rng.uniform(0.01, 0.2)))
    field = rng.standard_normal((1024, 2048), dtype=np.float64)  # 16 MiB
    return {
        "field": field,
        "energy": np.array(float((field**2).sum())),
        "histogram": np.histogram(field, bins=32, range=(-4, 4))[0],
    }
