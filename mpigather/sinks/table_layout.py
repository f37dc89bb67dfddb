"""The table of small results, as every sink lays it out: one column per field, row ``i`` the
task at position ``i`` of the task list.

Columns (names as in HDF5's ``/table`` group; a directory has ``DIR/_table/<name>.npy``):

- ``id``: the task ids (int64; or text: fixed-width ASCII bytes ``S16``, ``S32``... up to
  ``S256``, the narrowest that holds every id, else variable-length strings);
- ``done``: True where the row holds a finished task's result;
- ``result/<field>``: the result's fields (``result/value`` for a bare number or string; a
  nested dict's fields are ``result/a/b``);
- ``params/<key>``: the task's parameters (a task file's keys, its ``id`` left out);
- ``has/result/<field>``, ``has/params/<key>``: only for a field that some done rows lack:
  True where the row holds it;
- ``type/result/<field>``...: only for a field of numbers of several types (promoted): each
  row's own type, an index into the field's ``seen`` (``coded``);
- ``meta``: who ran it, which attempt, how long (one record a row: ``rank``, ``attempt``,
  ``duration`` in seconds).

Every field seen in any row is a column, and a column's type comes from the set of types seen
in it (``resolve``), so the layout depends on the results, not on their order; the rule is
docs/tables.md's. What the layout is and its rules are here; the table's storage and how a
layout is rewritten are in ``table_store``, the pieces both use in ``table_base``. Imports no MPI.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import table_schema as T
from ..tuples import NamedTuple
from .table_base import META, Column, empty


class Spec(NamedTuple):
    """A result or parameter field's column: its path in the value, what it holds, whether some
    done rows lack it (then a ``has/<name>`` column marks the rows that hold it), and the
    classes of the values seen in it (``kind dtype shape`` each), which alone decide the rest."""

    path: tuple[str, ...]
    kind: str  # float | int | bool | str | generic | array | json
    dtype: str  # numpy dtype string; "" for str and json
    shape: tuple[int, ...]
    has: bool
    seen: tuple[str, ...]


def token(leaf: T.Leaf) -> str:
    return f"{leaf.kind} {leaf.dtype} {','.join(map(str, leaf.shape))}"


_PY_KIND = {"b": "bool", "i": "int", "u": "int", "f": "float"}


def resolve(seen: tuple[str, ...]) -> tuple[str, str, tuple[int, ...]]:
    """A column's kind, dtype and shape from the set of classes seen in it (so the same
    whatever order they came in): numbers promote along numpy's lattice (bool < int < float <
    complex); strings with strings; arrays of one shape promote their dtype; any other mix
    (a string and a number, an array and a scalar, arrays of two shapes) is JSON text."""
    if "json" in seen:
        return "json", "", ()
    parts = [t.split(" ") for t in seen]
    kinds = {k for k, _, _ in parts}
    if kinds == {"str"}:
        return "str", "", ()
    dtypes = sorted({d for _, d, _ in parts})
    if kinds <= {"float", "int", "bool", "generic"}:
        dt = np.result_type(*(np.dtype(d) for d in dtypes))
        kind = next(iter(kinds)) if len(kinds) == 1 else _PY_KIND.get(dt.kind, "generic")
        return kind, dt.str, ()
    shapes = {s for _, _, s in parts}
    if kinds == {"array"} and len(shapes) == 1:
        shape = tuple(int(x) for x in next(iter(shapes)).split(",") if x)
        return "array", np.result_type(*(np.dtype(d) for d in dtypes)).str, shape
    return "json", "", ()


_JSON_SEEN = ("json",)
_ALL_SEEN = ("all", "json")  # the column of a bare result, JSON, holding every result (dicts too)


def takes(spec: Spec, q: tuple[str, ...]) -> bool:
    """Does the column of ``spec`` hold the field at ``q`` (itself, or one under it)? The column
    of a bare result (path ``()``) holds only bare results, but where it holds them all."""
    if not spec.path:
        return not q or spec.seen == _ALL_SEEN
    return q[: len(spec.path)] == spec.path
ID_WIDTHS = (16, 32, 64, 128, 256)  # fixed-width ASCII ids: the narrowest of these that holds them


def _id_width(n: int) -> int | None:
    return next((w for w in ID_WIDTHS if n <= w), None)


def _ids_of(tids: list[Any], int_len: Any, as_text: bool) -> str:
    """The id column's type for these ids: int64; fixed-width ASCII bytes ``S<w>``; or
    variable-length strings (``str``). ``as_text``: ints are stored as text too;
    ``int_len()``: the longest int id stored so far, as text."""
    if not as_text and all(type(t) is int for t in tids):
        return "int"
    texts = [str(t) for t in tids]
    if not all(t.isascii() for t in texts):
        return "str"
    w = _id_width(max(max(map(len, texts), default=0), int_len()))
    return "str" if w is None else f"S{w}"


def _join_ids(a: str, b: str) -> str:
    if a == b:
        return a
    if "str" in (a, b):
        return "str"
    if a == "int":
        return b
    if b == "int":
        return a
    return f"S{max(int(a[1:]), int(b[1:]))}"


Specs = dict[tuple[str, ...], Spec]


class Layout:
    """What a table holds: a column per field seen in any result (and parameter), and its ids'
    type. It depends only on the set of results stored, never on their order (docs/tables.md):
    ``merged`` gives the layout after one more batch, and ``migrate`` rewrites what changes."""

    def __init__(self, ids: str, results: Specs, params: Specs) -> None:
        self.ids = ids  # "int", "str" or "S<width>"
        self.results = dict(sorted(results.items()))
        self.params = dict(sorted(params.items()))
        self.result_names = [f"result/{_name(p)}" for p in self.results]
        self.param_names = [f"params/{_name(p)}" for p in self.params]
        self._plans: dict[Any, Any] = {}  # (schema, pschema) -> how a batch of them fills the columns
        self.loose: set[tuple[str, tuple[str, ...]]] = set()  # collapsed fields whose mask may go

    @classmethod
    def empty(cls) -> Layout:
        return cls("int", {}, {})

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Layout) and self.ids == other.ids and self.results == other.results
                and self.params == other.params)

    __hash__ = None  # type: ignore[assignment]

    # -- a batch against the layout -----------------------------------------------------------

    def ids_fit(self, tids: list[Any]) -> bool:
        if self.ids == "int":
            return all(type(t) is int for t in tids)
        if self.ids == "str":
            return True
        width = int(self.ids[1:])
        return all((type(t) is str and t.isascii() and len(t) <= width) or (type(t) is int and len(str(t)) <= width)
                   for t in tids)

    def covers(self, schema: T.Schema, pschema: T.Schema | None, tids: list[Any]) -> bool:
        """A batch of this schema fits the columns as they are (the common case, kept fast)."""
        plan = self._plans.get((schema, pschema))
        if plan is None:
            plan = self._plans[(schema, pschema)] = self._plan(schema, pschema)
        return plan is not False and self.ids_fit(tids)

    def merged(self, schema: T.Schema, pschema: T.Schema | None, tids: list[Any], any_done: Any,
               int_len: Any) -> Layout:
        """The layout once a batch of this schema is stored too (``any_done()``: the table holds
        done rows; ``int_len()``: the longest int id stored, as text)."""
        ids = self.ids if self.ids_fit(tids) else _join_ids(self.ids, _ids_of(tids, int_len, self.ids != "int"))
        loose: set[tuple[str, tuple[str, ...]]] = set()
        res = _merge(self.results, schema[1], any_done, loose, "result")
        par = _merge(self.params, pschema[1] if pschema is not None else (), any_done, loose, "params")
        out = Layout(ids, res, par)
        out.loose = loose
        return out

    def _plan(self, schema: T.Schema, pschema: T.Schema | None) -> Any:
        """How each column gets its values from a batch's columns, or False when the batch
        would change the layout."""
        plan: list[tuple[str, str, Any, str]] = []
        for prefix, specs, sch in (("result", self.results, schema), ("params", self.params, pschema)):
            leaves = list(sch[1]) if sch is not None else []
            at = {leaf.path: k for k, leaf in enumerate(leaves)}
            used = 0
            for p, spec in specs.items():
                name = f"{prefix}/{_name(p)}"
                under = [(k, leaves[k]) for q, k in at.items() if takes(spec, q)]
                if not under:
                    if not spec.has:
                        return False
                    plan.append((name, "absent", spec, prefix))
                    continue
                used += len(under)
                if spec.kind == "json":
                    plan.append((name, "json", (p, under), prefix))
                else:
                    if len(under) != 1:
                        return False
                    k, leaf = under[0]
                    if leaf.path != p or token(leaf) not in spec.seen:
                        return False
                    plan.append((name, "same" if _same_type(leaf, spec) else "cast", (k, spec), prefix))
                    if coded(spec):
                        plan.append((f"type/{name}", "code", spec.seen.index(token(leaf)), prefix))
                if spec.has:
                    plan.append((f"has/{name}", "present", None, prefix))
            if used != len(leaves):
                return False
        return plan

    def batch_values(self, tids: list[Any], rows: Any, meta: dict[str, Any]) -> dict[str, Any]:
        """Each column's values for the first ``len(tids)`` rows of a worker's batch (the rest
        were revoked), by column name. The batch must be ``covers``-ed by the layout."""
        n = len(tids)
        cols = rows.cols if n == rows.n else [c[:n] for c in rows.cols]
        pcols = rows.pcols if rows.pcols is None or n == rows.n else [c[:n] for c in rows.pcols]
        kind = {"int": np.int64, "str": object}.get(self.ids, self.ids)
        out: dict[str, Any] = {"id": np.array([str(t) for t in tids] if self.ids == "str" else tids, dtype=kind),
                               "done": np.ones(n, dtype=bool)}
        plan = self._plans[(rows.schema, rows.pschema)]
        for name, how, arg, prefix in plan:
            src = cols if prefix == "result" else pcols
            if how == "same":
                out[name] = src[arg[0]]
            elif how == "cast":
                out[name] = np.asarray(src[arg[0]]).astype(arg[1].dtype)
            elif how == "json":
                p, under = arg
                out[name] = np.array([T.to_json(_subtree(p, under, src, k)) for k in range(n)], dtype=object)
            elif how == "absent":
                out[name] = empty(Column(name, _col_dtype(arg), arg.shape), n)
                if arg.has:
                    out[f"has/{name}"] = np.zeros(n, dtype=bool)
                if coded(arg):
                    out[f"type/{name}"] = np.zeros(n, dtype=np.uint8)
            elif how == "code":  # which of the column's types these rows had
                out[name] = np.full(n, arg, dtype=np.uint8)
            else:  # present: the batch holds this field
                out[name] = np.ones(n, dtype=bool)
        rec = np.empty(n, dtype=META)
        rec["rank"], rec["attempt"], rec["duration"] = meta["rank"], meta["attempt"], rows.durations[:n]
        out["meta"] = rec
        return out

    # -- columns and their description ------------------------------------------------------------

    def specs(self) -> list[tuple[str, Spec]]:
        """(column name, spec) of every result and parameter field."""
        return ([(f"result/{_name(p)}", s) for p, s in self.results.items()]
                + [(f"params/{_name(p)}", s) for p, s in self.params.items()])

    def columns(self) -> list[Column]:
        cols = [Column("id", {"int": "<i8", "str": "str"}.get(self.ids, f"|{self.ids}")), Column("done", "|b1")]
        for name, spec in self.specs():
            cols.append(Column(name, _col_dtype(spec), spec.shape, spec.kind))
            if spec.has:
                cols.append(Column(f"has/{name}", "|b1"))
            if coded(spec):
                cols.append(Column(f"type/{name}", "|u1"))
        cols.append(Column("meta", "meta"))
        return cols

    def to_json(self) -> str:
        def side(specs: Specs) -> list[dict[str, Any]]:
            return [{"name": _name(p), "path": list(p), "kind": s.kind, "dtype": s.dtype, "shape": list(s.shape),
                     "has": s.has, "seen": list(s.seen)} for p, s in specs.items()]

        import json  # (a layout is written and read with a file output only)

        return json.dumps({"version": 2, "ids": self.ids, "fields": side(self.results), "params": side(self.params)})

    @classmethod
    def from_json(cls, text: str) -> Layout:
        import json

        d = json.loads(text)

        def side(recs: list[dict[str, Any]] | None) -> Specs:
            out: Specs = {}
            for r in recs or ():
                path = tuple(r["path"])
                shape = tuple(r["shape"])
                leaf = T.Leaf(path, r["kind"], r["dtype"], shape)
                seen = tuple(r["seen"]) if "seen" in r else (token(leaf),)  # (a layout of version 1)
                out[path] = Spec(path, r["kind"], r["dtype"], shape, bool(r.get("has", False)), seen)
            return out

        return cls(d["ids"], side(d["fields"]), side(d["params"]))


def _name(path: tuple[str, ...]) -> str:
    return "/".join(path) if path else "value"


def coded(spec: Spec) -> bool:
    """A column of numbers (or arrays) of several types, promoted: a ``type/<name>`` column
    keeps each row's own type (an index into ``seen``), so that its value comes back exactly."""
    return spec.kind != "json" and len(spec.seen) > 1


def as_token(v: Any, tok: str) -> Any:
    """A promoted cell as the type it had (``tok``, one of its column's ``seen``)."""
    kind, dt, _ = tok.split(" ")
    if kind == "float":
        return float(v)
    if kind == "int":
        return int(v)
    if kind == "bool":
        return bool(v)
    if kind == "generic":
        return np.dtype(dt).type(v)
    if kind == "array":
        return np.asarray(v).astype(dt)
    return v


def cell(spec: Spec, col: Any, i: int, code: Any = None) -> Any:
    """Row ``i`` of a column, as the task returned it (``code``: the row's type/ value)."""
    if spec.kind == "json":
        return T.from_json(col[i])
    v = T._value(leaf_of(spec), col, i)
    return as_token(v, spec.seen[int(code)]) if code is not None else v


def _col_dtype(spec: Spec) -> str:
    return "str" if spec.kind in ("str", "json") else spec.dtype


def _same_type(leaf: T.Leaf, spec: Spec) -> bool:
    if spec.kind == "str":
        return leaf.kind == "str"
    return leaf.dtype == spec.dtype and leaf.shape == spec.shape


def leaf_of(spec: Spec) -> T.Leaf:
    return T.Leaf(spec.path, spec.kind, spec.dtype, spec.shape)


def _subtree(p: tuple[str, ...], under: list[tuple[int, T.Leaf]], cols: list[Any], k: int) -> Any:
    """The value at ``p`` of row ``k`` of a batch, from its leaves under ``p``."""
    out: dict[str, Any] = {}
    for j, leaf in under:
        v = T._value(leaf, cols[j], k)
        rel = leaf.path[len(p):]
        if not rel:
            return v
        d = out
        for key in rel[:-1]:
            d = d.setdefault(key, {})
        d[rel[-1]] = v
    return out


def _merge(specs: Specs, leaves: Any, any_done: Any, loose: set[tuple[str, tuple[str, ...]]],
           side: str) -> Specs:
    """The specs of one side (results or parameters) once a batch with these leaves is stored."""
    new = dict(specs)
    present: set[tuple[str, ...]] = set()
    for leaf in leaves:
        p = leaf.path
        top = new.get(())
        if top is not None and top.seen == _ALL_SEEN:  # one JSON column holds every result
            present.add(())
            continue
        if (p == () and any(q and q[0] == "value" for q in new)) or (p and p[0] == "value" and top is not None):
            # a bare result beside a dict with a field "value": both would be the column "value"
            has = any(s.has for s in new.values())
            new.clear()
            new[()] = Spec((), "json", "", (), has, _ALL_SEEN)
            if has:
                loose.add((side, ()))
            present.add(())
            continue
        pre = next((q for q in new if 0 < len(q) < len(p) and p[: len(q)] == q), None)
        if pre is not None:  # a field that holds a value in some rows and a dict in others: JSON
            s = new[pre]
            if s.kind != "json":
                new[pre] = s._replace(kind="json", dtype="", shape=(), seen=_JSON_SEEN)
            present.add(pre)
            continue
        under = [q for q in new if len(q) > len(p) > 0 and q[: len(p)] == p]
        if under:
            has = any(new[q].has for q in under)
            for q in under:
                del new[q]
            new[p] = Spec(p, "json", "", (), has, _JSON_SEEN)
            if has:
                loose.add((side, p))
            present.add(p)
            continue
        tok = token(leaf)
        got = new.get(p)
        if got is None:
            kind, dt, shape = resolve((tok,))
            new[p] = Spec(p, kind, dt, shape, bool(any_done()), (tok,))
        elif got.kind != "json" and tok not in got.seen:
            seen = tuple(sorted({*got.seen, tok}))
            kind, dt, shape = resolve(seen)
            new[p] = Spec(p, kind, dt, shape, got.has, _JSON_SEEN if kind == "json" else seen)
        present.add(p)
    for q, s in new.items():
        if q not in present:
            loose.discard((side, q))
            if not s.has:
                new[q] = s._replace(has=True)
    return new

