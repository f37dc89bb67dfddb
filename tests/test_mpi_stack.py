"""The MPI stack the tests run under (MPIGATHER_TEST_MPI, see helpers.py) is the one intended:
mpiexec and mpi4py agree on the library, and the network path really leaves shared memory."""

from __future__ import annotations

import re

import pytest
from helpers import mpirun, show, stack

pytestmark = [pytest.mark.mpi, pytest.mark.matrix]

PING = """
import sys
import numpy as np
from mpi4py import MPI
c = MPI.COMM_WORLD
b = np.zeros(1 << 20, np.uint8)
if c.rank == 1:
    c.Send(b, 0)
elif c.rank == 0:
    c.Recv(b, 1)
sys.stdout.write(f"RANK {c.rank} OF {c.size} {MPI.Get_library_version().splitlines()[0]}\\n")
"""


def test_mpiexec_and_mpi4py_use_the_same_library():
    """Each rank sees the whole job (a mismatch starts N singletons) and the library of the stack."""
    p = mpirun(2, ["-c", PING], timeout=60)
    assert p.returncode == 0, show(p)
    ranks = sorted(re.findall(r"RANK (\d+) OF (\d+) (MPICH|Open MPI)", p.stdout))
    lib = stack().library
    assert ranks == [("0", "2", lib), ("1", "2", lib)], show(p)


def ucx_transports(text: str) -> set[str]:
    """Transports in the UCX protocol tables (UCX_PROTO_INFO=y) for peers on this machine."""
    found: set[str] = set()
    inside = False
    for line in text.splitlines():
        if "ucp_context" in line:
            inside = "intra-node" in line
            continue
        m = re.search(r"\|\s*([a-z0-9_]+)/\S+\s*\|\s*$", line)
        if inside and m:
            found.add(m.group(1))
    return found


def test_network_path_leaves_shared_memory():
    """MPICH with MPIR_CVAR_NOLOCAL=1 sends everything through its UCX network module; UCX itself
    would still use shared memory (sysv, cma) between local processes unless UCX_TLS says tcp.
    UCX's own protocol report shows what carried the messages between the two ranks."""
    s = stack()
    if s.name != "mpich-net":
        pytest.skip(f"{s.name}: the path is chosen by mpiexec options ({' '.join(s.args) or 'defaults'}); "
                    "this check reads MPICH/UCX's report")
    p = mpirun(2, ["-c", PING], timeout=60, extra_env={"UCX_PROTO_INFO": "y"})
    assert p.returncode == 0, show(p)
    used = ucx_transports(p.stdout + p.stderr)
    assert used == {"tcp"}, f"intra-node transports {used}\n{show(p)}"
