"""``mpigather report PATH``: where the time went, per worker, from the journal's stats records."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .journal import journal_path, load_state


def collect(out: str) -> dict[str, Any]:
    jp = journal_path(Path(out))
    if not jp.exists():
        raise FileNotFoundError(f"no journal {jp}: is {out} the --out of a run?")
    st = load_state(jp)
    workers: dict[str, Any] = {}
    for rec in st.stats:  # the last run's records win
        workers[str(rec["rank"])] = {k: v for k, v in rec.items() if k not in ("ev",)}
    master = st.ends[-1].get("master", {}) if st.ends else {}
    return {"out": str(out), "workers": workers, "master": master,
            "wall": st.ends[-1].get("wall") if st.ends else None}


def report(out: str, *, plot: str | None = None, as_json: bool = False) -> int:
    try:
        info = collect(out)
    except FileNotFoundError as e:
        print(f"mpigather: error: {e}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps({**info, "workers": {r: {k: v for k, v in w.items() if k != "spans"}
                                              for r, w in info["workers"].items()}}, default=str))
    else:
        print(f"{out}: wall {info['wall'] or 0:.2f} s")
        print("  rank  host              tasks   compute     send     idle     wall  (seconds)")
        for rank, w in sorted(info["workers"].items(), key=lambda kv: int(kv[0])):
            print(f"  {rank:>4}  {str(w.get('host', '?'))[:16]:<16} {w.get('tasks', 0):>6} {w.get('compute', 0):>9.2f}"
                  f" {w.get('send', 0):>8.2f} {w.get('idle', 0):>8.2f} {w.get('wall', 0):>8.2f}")
        m = info["master"]
        if m:
            print(f"  master: receiving {m.get('recv', 0):.2f} s, writing {m.get('write', 0):.2f} s,"
                  f" waiting {m.get('wait', 0):.2f} s")
    if plot:
        from .timeline import draw

        draw(info, plot)
        print(f"timeline written to {plot}")
    return 0
