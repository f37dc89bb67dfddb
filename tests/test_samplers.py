"""emcee and dynesty through ``mpigather.executor()`` under ``mpiexec -n 3`` give, bit for bit,
the chain and the evidence of a serial run with the same seed (tests/samplers.py)."""

from __future__ import annotations

import pytest
from helpers import HERE, mpirun, show
from samplers import SAMPLERS

pytestmark = pytest.mark.mpi


def test_samplers_match_a_serial_run() -> None:
    pytest.importorskip("emcee")
    pytest.importorskip("dynesty")
    p = mpirun(3, [str(HERE / "samplers.py")], timeout=300)
    lines = {ln.split()[1]: ln for ln in p.stdout.splitlines() if ln.startswith("SAMPLER ")}
    assert set(lines) == set(SAMPLERS), show(p)
    assert all(" pass" in ln for ln in lines.values()) and p.returncode == 0, show(p)
