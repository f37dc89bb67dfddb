"""The executor contract (tests/executor_contract.py) under mpiexec, for both backends.

One pytest item per backend, layout and contract, so a failure names exactly the contract
that broke. The contracts of one backend and layout run in one MPI job (restarted after a
hang), started by the first of its items; with ``-k`` only the selected contracts run.

``mpi4py`` (the real ``MPICommExecutor``) is the reference and passes them all. ``mpigather``
is expected to pass them too, or to leave the contract out with a note in the README's
"Coming from mpi4py.futures" section (then drop the contract from ``LEFT_OUT`` here).

Layouts: 1 and 3 ranks; set ``CONTRACT_RANKS=1,2,3`` for more.
"""

from __future__ import annotations

import os

import pytest
from executor_contract import BACKENDS, CONTRACTS, drive
from helpers import mpirun

pytestmark = pytest.mark.mpi

LAYOUTS = [int(n) for n in os.environ.get("CONTRACT_RANKS", "1,3").split(",")]

# Contracts a backend leaves out on purpose, each with the README note that says so.
LEFT_OUT: dict[str, dict[str, str]] = {"mpi4py": {}, "mpigather": {}}

_RESULTS: dict[tuple[str, int], dict[str, tuple[str, str]]] = {}


def _selected(session: pytest.Session, backend: str, ranks: int) -> list[str]:
    names = []
    for item in session.items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if params.get("backend") == backend and params.get("ranks") == ranks:
            names.append(params["contract"])
    return [n for n in CONTRACTS if n in names]


@pytest.fixture
def contract_results(request: pytest.FixtureRequest):
    def get(backend: str, ranks: int) -> dict[str, tuple[str, str]]:
        key = (backend, ranks)
        if key not in _RESULTS:
            names = _selected(request.session, backend, ranks) or list(CONTRACTS)
            _RESULTS[key] = drive(backend, ranks, names, run=mpirun)
        return _RESULTS[key]

    return get


@pytest.mark.parametrize("contract", list(CONTRACTS))
@pytest.mark.parametrize("ranks", LAYOUTS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_contract(backend: str, ranks: int, contract: str, contract_results) -> None:
    note = LEFT_OUT[backend].get(contract)
    if note:
        pytest.skip(f"left out on purpose: {note}")
    status, detail = contract_results(backend, ranks).get(contract, ("error", "no result line"))
    assert status == "pass", (
        f"{backend} with {ranks} rank(s): contract {contract} {status.upper()}: {detail}\n"
        f"    what it checks: {CONTRACTS[contract].doc}\n"
        f"    rerun alone: mpiexec -n {ranks} python tests/executor_contract.py {backend} {contract}"
    )
