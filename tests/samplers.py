"""Samplers driven through ``mpigather.executor()`` as their users do, checked bit for bit
against a serial run with the same seed: ``mpiexec -n N python tests/samplers.py``.

emcee (32 walkers, 3 parameters, ``pool=ex``) and dynesty (a 3-D Gaussian, ``pool=ex``, its
queue sized by ``ex.size``). The serial reference runs in the root's own process; dynesty's gets
a stand-in pool of the same size, since its proposals depend on the queue size, not on who
computes them. Rank 0 prints ``SAMPLER <name> pass|fail <detail>`` and a timing line.
"""

from __future__ import annotations

import sys
import time
import warnings
from typing import Any

import numpy as np

import mpigather

NDIM, WALKERS, STEPS = 3, 32, 20
ITERATIONS = 300  # dynesty


def log_prob(x: np.ndarray) -> float:
    """A standard normal in NDIM dimensions: instant, so the pool's overhead is all there is."""
    return -0.5 * float(np.dot(x, x))


def prior_transform(u: np.ndarray) -> np.ndarray:
    return 20.0 * u - 10.0


class SerialPool:
    """``map`` in this process, with a pool's ``size``."""

    def __init__(self, size: int) -> None:
        self.size = size

    def map(self, fn: Any, iterable: Any) -> list[Any]:
        return list(map(fn, iterable))


def run_emcee(pool: Any) -> np.ndarray:
    import emcee

    sampler = emcee.EnsembleSampler(WALKERS, NDIM, log_prob, pool=pool)
    sampler.random_state = np.random.RandomState(7).get_state()
    start = np.random.default_rng(7).normal(size=(WALKERS, NDIM))
    sampler.run_mcmc(start, STEPS)
    return np.concatenate([sampler.get_chain().ravel(), sampler.get_log_prob().ravel()])


def run_dynesty(pool: Any) -> np.ndarray:
    import dynesty

    ns = dynesty.NestedSampler(log_prob, prior_transform, NDIM, nlive=100, pool=pool,
                               rstate=np.random.default_rng(7))
    with warnings.catch_warnings():  # stopped by maxiter on purpose: a short run is enough to compare
        warnings.filterwarnings("ignore", "The sampling was stopped short")
        ns.run_nested(maxiter=ITERATIONS, print_progress=False)
    r = ns.results
    return np.concatenate([np.ravel(r.samples), np.ravel(r.logl), np.ravel(r.logz), np.ravel(r.logwt)])


SAMPLERS = {"emcee": run_emcee, "dynesty": run_dynesty}


def main() -> int:
    bad = 0
    with mpigather.executor() as ex:
        if ex is not None:
            for name, run in SAMPLERS.items():
                t0 = time.monotonic()
                pooled = run(ex)
                took = time.monotonic() - t0
                serial = run(SerialPool(ex.size))
                same = pooled.shape == serial.shape and np.array_equal(pooled, serial)
                bad += not same
                differ = np.count_nonzero(pooled != serial) if pooled.shape == serial.shape else "?"
                detail = "" if same else f"{differ} of {serial.size} values differ from the serial run"
                print(f"SAMPLER {name} {'pass' if same else 'fail'} {detail}".rstrip(), flush=True)
                print(f"# {name}: {took:.2f} s through the executor ({ex.size} workers)", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
