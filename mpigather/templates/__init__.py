"""The batch templates, shipped as package data: ``mpigather template slurm|pbs`` gives them out.

Each is a complete job script whose lines to change are marked ``EDIT``; docs/cluster.md section 4
says what they do. They live only here, so the file a user gets from an installed package is the
one the tests run (tests/test_batch.py, tests/test_slurm_real.py).
"""

from __future__ import annotations

from ..errors import UsageError

# the name on the command line -> the file, and the command that submits it
TEMPLATES = {"slurm": ("slurm.sbatch", "sbatch"), "pbs": ("pbs.sh", "qsub")}


def filename(name: str) -> str:
    """The template's file name (``slurm`` -> ``slurm.sbatch``); a UsageError names the choices."""
    if name not in TEMPLATES:
        raise UsageError(f"no batch template {name!r}: choose one of {', '.join(TEMPLATES)}")
    return TEMPLATES[name][0]


def read(name: str) -> bytes:
    """The template ``name`` (``slurm`` or ``pbs``), byte for byte as the package holds it."""
    from importlib.resources import files  # (here: `mpigather run` starts without it)

    return files(__name__).joinpath(filename(name)).read_bytes()
