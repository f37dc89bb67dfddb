"""The table's storage and the rewriting of a layout: what ``migrate`` needs of a sink's table
(``TableStore``), the columns a changed layout rewrites (``migrate``), the table kept in memory
(``MemoryTable``), and ``fit_layout``, the layout that holds one more batch. The layout itself
and its rules are in ``table_layout``. Imports no MPI.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np

from .. import table_schema as T
from .table_base import Column, empty
from .table_layout import Layout, Spec, Specs, _col_dtype, _name, cell, coded, takes


class TableStore:
    """What ``migrate`` needs of a table's storage: rows, and whole columns to read, drop and
    create. A file's table is rewritten as a copy (``begin_migration``: its unchanged columns
    linked, not copied) that ``save_layout`` swaps in whole, so a kill leaves one or the other."""

    n: int
    # held while ``migrate`` changes the table's files (drops, links, the swap of the rewritten
    # copy); a store whose files are made durable on another thread takes it there too
    lock: AbstractContextManager[Any] = nullcontext()

    def begin_migration(self) -> None:
        pass

    def read_column(self, name: str) -> np.ndarray:
        raise NotImplementedError

    def drop_column(self, name: str) -> None:
        raise NotImplementedError

    def add_column(self, col: Column, data: np.ndarray | None) -> None:
        raise NotImplementedError

    def save_layout(self, layout: Layout) -> None:
        raise NotImplementedError


def int_len(store: TableStore) -> int:
    """The longest int id in a table's id column, as text (0 when it holds none)."""
    if store.n == 0:
        return 0
    ids = store.read_column("id")
    if ids.dtype.kind not in "iu" or not len(ids):
        return 0
    return max(len(str(int(ids.max()))), len(str(int(ids.min()))))


def migrate(store: TableStore, old: Layout, new: Layout) -> Layout:
    """Rewrite the columns that ``new`` changes (rare: a field that appears, a promotion, a mix
    that becomes JSON): each is read whole, converted, and written again. Returns the layout as
    stored (a collapsed field whose rows all hold it loses its mask)."""
    with store.lock:
        return _migrate(store, old, new)


def _migrate(store: TableStore, old: Layout, new: Layout) -> Layout:
    store.begin_migration()
    done = np.asarray(store.read_column("done"), dtype=bool) if store.n else np.zeros(0, dtype=bool)
    anything = bool(done.any())  # else every column is created empty
    if old.ids != new.ids and not anything:
        store.drop_column("id")
        store.add_column(new.columns()[0], None)
    elif old.ids != new.ids:  # ids as text now, or wider text
        texts = [x.decode() if isinstance(x, bytes) else str(x) for x in store.read_column("id").tolist()]
        store.drop_column("id")
        ids = (np.array(texts, dtype=object) if new.ids == "str"
               else np.array([t.encode() for t in texts], dtype=f"|{new.ids}"))
        store.add_column(new.columns()[0], ids if texts else None)
    final_r, final_p = dict(new.results), dict(new.params)
    for prefix, ospecs, nspecs, final in (("result", old.results, new.results, final_r),
                                          ("params", old.params, new.params, final_p)):
        for p, s in nspecs.items():
            name = f"{prefix}/{_name(p)}"
            o = ospecs.get(p)
            if o is not None and (o.kind, o.dtype, o.shape) == (s.kind, s.dtype, s.shape):
                if s.has and not o.has:  # every done row so far holds it
                    store.add_column(Column(f"has/{name}", "|b1"), done.copy() if anything else None)
                _recode(store, name, o, s, anything)
                continue
            sources = [q for q in ospecs if takes(s, q)]
            data: np.ndarray | None = None
            present: np.ndarray | None = None
            if anything and s.kind == "json" and sources:
                data, present = _json_column(store, prefix, ospecs, p, sources, done)
            elif anything and o is not None:
                data = store.read_column(name).astype(s.dtype)
                present = _has(store, name, o, done)
            if o is not None and s.kind != "json":
                _recode(store, name, o, s, anything)
            for q in sources:
                qname = f"{prefix}/{_name(q)}"
                store.drop_column(qname)
                if ospecs[q].has:
                    store.drop_column(f"has/{qname}")
                if coded(ospecs[q]) and not (q == p and coded(s)):
                    store.drop_column(f"type/{qname}")
            if (prefix, p) in new.loose and (present is None or present[done].all()):
                s = final[p] = s._replace(has=False)
            store.add_column(Column(name, _col_dtype(s), s.shape, s.kind), data)
            if s.has:
                store.add_column(Column(f"has/{name}", "|b1"), present)
    out = Layout(new.ids, final_r, final_p)
    store.save_layout(out)
    return out


def _recode(store: TableStore, name: str, o: Spec, s: Spec, anything: bool) -> None:
    """The type/ column of a field whose set of types grew: each row's index into the new set."""
    if not coded(s) or o.seen == s.seen:
        return
    remap = np.array([s.seen.index(t) for t in o.seen], dtype=np.uint8)
    codes = None
    if anything:
        codes = remap[np.asarray(store.read_column(f"type/{name}"), dtype=np.intp)] if coded(o) else \
            np.full(store.n, remap[0], dtype=np.uint8)
    if coded(o):
        store.drop_column(f"type/{name}")
    store.add_column(Column(f"type/{name}", "|u1"), codes)


def _has(store: TableStore, name: str, spec: Spec, done: np.ndarray) -> np.ndarray:
    return np.asarray(store.read_column(f"has/{name}"), dtype=bool) if spec.has else done.copy()


def _json_column(store: TableStore, prefix: str, ospecs: Specs, p: tuple[str, ...], sources: list[Any],
                 done: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The JSON text of field ``p`` in every done row, from the columns of the fields under it."""
    data = np.empty(store.n, dtype=object)
    data.fill("")
    present = np.zeros(store.n, dtype=bool)
    cols = {q: store.read_column(f"{prefix}/{_name(q)}") for q in sources}
    hass = {q: _has(store, f"{prefix}/{_name(q)}", ospecs[q], done) for q in sources}
    codes = {q: store.read_column(f"type/{prefix}/{_name(q)}") for q in sources if coded(ospecs[q])}
    for i in np.flatnonzero(done).tolist():
        out: dict[str, Any] = {}
        whole: Any = _MISSING
        for q in sources:
            if not hass[q][i]:
                continue
            v = cell(ospecs[q], cols[q], i, codes[q][i] if q in codes else None)
            rel = q[len(p):]
            if not rel:
                whole = v
                continue
            d = out
            for key in rel[:-1]:
                d = d.setdefault(key, {})
            d[rel[-1]] = v
        if whole is not _MISSING or out:
            data[i] = T.to_json(whole if whole is not _MISSING else out)
            present[i] = True
    return data, present


_MISSING = object()


class MemoryTable(TableStore):
    """The table kept on the master (``out=None``): numpy columns that grow as rows arrive."""

    def __init__(self, layout: Layout, total: int | None) -> None:
        self.layout = layout
        self.cap = max(total or 0, 1024)
        self.cols = {c.name: empty(c, self.cap) for c in layout.columns()}
        self.specs = {c.name: c for c in layout.columns()}
        self.n = total or 0  # rows: every task's position, as far as known

    def put(self, seq0: int, values: dict[str, Any]) -> None:
        end = seq0 + len(values["id"])
        cap = self.cap
        if end > cap:
            grow = self.cap = max(end, 2 * cap)
            for name, a in self.cols.items():
                b = empty(self.specs[name], grow)
                b[:cap] = a
                self.cols[name] = b
        self.n = max(self.n, end)
        for name, v in values.items():
            self.cols[name][seq0:end] = v

    def column(self, name: str) -> np.ndarray:
        return self.cols[name][: self.n]

    def read_column(self, name: str) -> np.ndarray:
        return self.column(name)

    def drop_column(self, name: str) -> None:
        del self.cols[name], self.specs[name]

    def add_column(self, col: Column, data: np.ndarray | None) -> None:
        a = empty(col, self.cap)
        if data is not None:
            a[: len(data)] = data
        self.cols[col.name], self.specs[col.name] = a, col

    def save_layout(self, layout: Layout) -> None:
        self.layout = layout


def fit_layout(store: TableStore, lay: Layout, rows: Any, tids: list[Any], write_pending: Any) -> Layout:
    """The layout that holds a batch of rows: ``lay`` itself (the common case, checked once per
    schema), or the layout merged with the batch, its changed columns rewritten (the rows not
    yet written go first: ``write_pending()``)."""
    if lay.covers(rows.schema, rows.pschema, tids):
        return lay
    write_pending()

    def any_done() -> bool:
        return store.n > 0 and bool(np.any(store.read_column("done")))

    new = lay.merged(rows.schema, rows.pschema, tids, any_done, lambda: int_len(store))
    new = migrate(store, lay, new)
    if not new.covers(rows.schema, rows.pschema, tids):
        raise AssertionError(f"the table's layout {new.to_json()} does not hold a batch of {rows.schema}")
    return new

