"""pytest set-up: the test folder on sys.path, and the ``mpi`` marker applied by module.

Test modules that start MPI processes set ``pytestmark = pytest.mark.mpi``, so
``pytest -m "not mpi"`` runs the in-process tests alone, in seconds.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
