"""The on-disk layout, in one place: every name, extension and attribute that a file sink
writes and ``mpigather.load`` reads.

HDF5 (``--out x.h5``)::

    /results/<id>           a dataset (array, numpy scalar, bytes, str/int/float/bool),
                            or a group (dict: one member per key; object: "pickle", "0", "1"...)
    /tasks                  one row per result stored whole: id, its parameters (JSON), rank,
                            attempt, duration, bytes, crc32c, position in the task list
    /table/...              the table of small results, one dataset per column (sinks/table_layout.py)
    attribute "kind"        on every node inside a result that is not a plain array, and on
                            groups (see ``results``); a dataset at the top of a result has
                            none: its kind is the task table's
    attribute "mpigather"   on the file: how the run went (JSON)

While a run is live the file is ``x.h5.partial``; direct mode keeps the workers' files in
``x.h5.parts/`` and links ``/results/<id>`` to them.

A directory (``--out DIR``)::

    DIR/<id>.npy            an array or numpy scalar (np.load reads it)
    DIR/<id>/               a dict: one entry per key, named the same way inside
    DIR/<id>.pkl            any other object, or a str/int/float/bool: a plain pickle
    DIR/<id>.pkl/           an object with large buffers: "pickle" plus raw buffers "0", "1"...
    DIR/<id>.bytes          bytes
    DIR/<id>.none           None
    DIR/_tasks.jsonl        one line per result stored whole (as /tasks above)
    DIR/_table/<col>.npy    the table of small results, one .npy file per column (sinks/table_layout.py)
    DIR/_mpigather.json     how the run went

Names that start with ``.tmp.`` are results being written; they never count.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import UsageError

# file and directory names
PARTIAL = ".partial"  # suffix of an HDF5 output while its run is live
PARTS = ".parts"  # suffix of the directory of direct-mode HDF5 part files
TMP = ".tmp."  # prefix of anything not yet complete
RUN_INFO = "_mpigather.json"
TASKS_JSONL = "_tasks.jsonl"
LOCK = ".lock"  # suffix of the output's lock file

# HDF5 names
RESULTS = "results"
STAGING = "_staging"  # where older runs built results; removed when a file is reopened
TASKS = "tasks"
TABLE = "table"  # the table of small results (see sinks/table_layout.py)
ATTR_LAYOUT = "layout"  # on /table: its schema, as JSON
TABLE_DIR = "_table"  # a directory's table: DIR/_table/<column>.npy and layout.json
NEXT = ".next"  # suffix of a table being rewritten (a change of its layout): swapped in whole when done
OLD = ".old"  # suffix of a directory's table just swapped out
ATTR_KIND = "kind"
ATTR_RUN = "mpigather"
ATTR_DTYPE = "mpigather_dtype"  # a part whose dtype HDF5 cannot store: raw bytes plus these two
ATTR_SHAPE = "mpigather_shape"
PICKLE = "pickle"  # the pickle of an object with out-of-band buffers, beside "0", "1"...

# .npy directory: the extension of each node kind (a dict is a directory)
EXT = {"array": ".npy", "generic": ".npy", "bytes": ".bytes", "none": ".none", "object": ".pkl",
       "str": ".pkl", "int": ".pkl", "float": ".pkl", "bool": ".pkl", "dict": ""}
FILE_EXTS = (".npy", ".pkl", ".bytes", ".none")

TASK_FIELDS = ("seq", "id", "int_id", "params", "rank", "attempt", "duration", "bytes", "crc32c", "kind")


def check_id(tid: Any) -> str:
    """The file and dataset name of a task id; rejects ids that cannot be one."""
    if type(tid) is int:
        return str(tid)
    if isinstance(tid, bool) or not isinstance(tid, (int, str)):
        raise UsageError(f"task id {tid!r} is a {type(tid).__name__}; ids must be str or int")
    name = str(tid)
    if (not name or "/" in name or "\0" in name or name.startswith(".") or len(name) > 200
            or name.endswith(FILE_EXTS)):
        raise UsageError(f"task id {tid!r} cannot name a file: use a non-empty id without '/', not starting"
                         f" with '.' and not ending in {', '.join(FILE_EXTS)}")
    return name


def is_hdf5_path(out: str | os.PathLike[str]) -> bool:
    """An HDF5 output (or the ``.partial`` file of one, which ``load`` reads too)."""
    name = str(out).lower()
    if name.endswith(PARTIAL):
        name = name[: -len(PARTIAL)]
    return name.endswith((".h5", ".hdf5"))


def strip_ext(name: str) -> str:
    """A stored entry's name without its extension: the task id or dict key it holds."""
    for ext in FILE_EXTS:
        if name.endswith(ext):
            return name[: -len(ext)]
    return name
