"""``keep_steps``: at the end of a complete run, every step's output goes into the output.

HDF5: ``/steps/<id>/<n>-<step>``, written like a result. A directory:
``DIR/_steps/<id>/<n>-<step>.<ext>``, moved there. ``n`` counts steps from 1 and ``<step>`` is
the name of the function whose output it is.
"""

from __future__ import annotations

import os
from pathlib import Path

from .. import results as R
from . import layout as L
from .base import Sink


def keep_steps(sink: Sink, root: Path, journal_path: Path | None) -> None:
    from ..journal import read_records
    from ..reader_whole import load_entry

    if journal_path is None or not root.is_dir():
        return
    stored = [r for r in read_records(journal_path) if r.get("ev") == "step" and os.path.exists(r["path"])]
    if sink.kind == "hdf5":
        from .hdf5_nodes import _write_part, create_result

        group = sink.f.require_group("steps")  # type: ignore[attr-defined]
        for r in stored:
            task = group.require_group(L.check_id(r["id"]))
            name = f"{r['n']}-{r.get('ran') or 'step'}"
            if name in task:
                continue
            header, bufs = R.encode(load_entry(r["path"]))
            for place, buf in zip(create_result(task.id, name, header), bufs):
                if len(buf):
                    _write_part(sink.fd, place, 0, buf)  # type: ignore[attr-defined]
        return
    base = Path(sink.path or root) / "_steps"
    for r in stored:
        src = Path(r["path"])
        ext = next((e for e in L.FILE_EXTS if src.name.endswith(e)), "")
        dest = base / L.check_id(r["id"]) / f"{r['n']}-{r.get('ran') or 'step'}{ext}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dest)
