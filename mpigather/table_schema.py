"""Small results as rows of a columnar table: which values fit, their schema, and their columns.

A result fits a row when it is a number, a bool, a short string, a numpy scalar, or a dict
(nested too, keys that can name datasets) of these; and, only in a run that asks for a table of
arrays (``table=True``), a small array. Whether a result fits depends on that result and the
run's options alone, never on the results before it (see docs/tables.md). Its *schema*
lists one column per leaf: the leaf's path in the dict (``()`` for a bare value), its kind and
its dtype and shape. Consecutive results with the same schema are gathered on the worker into
columns (one numpy array per leaf; a list of str for strings) and travel as one ``Rows`` item,
so a tiny result costs the master a slice of a column, not an object. Imports no MPI.

The kinds keep the exact Python type for reading back: ``float``, ``int`` and ``bool`` are
Python scalars; ``generic`` is a numpy scalar of that dtype; ``array`` a numpy array; ``str``
a Python string.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from .crc import crc32c
from .results import valid_key
from .tuples import NamedTuple

STR_MAX = 1024  # characters of a string that still fits a column
ARRAY_MAX = 4096  # bytes of an array that still fits a column
_INT64 = (-(1 << 63), 1 << 63)


class Leaf(NamedTuple):
    """One column of a schema: where the value sits in the result, and what it is."""

    path: tuple[str, ...]  # keys from the result's top; () for a bare value
    kind: str  # float | int | bool | str | generic | array
    dtype: str  # numpy dtype string (".str"), "" for str
    shape: tuple[int, ...] = ()


Schema = tuple[bool, tuple[Leaf, ...]]  # (the result is a dict, its leaves in key order)

_PY = {float: ("float", "<f8"), int: ("int", "<i8"), bool: ("bool", "|b1"), str: ("str", "")}
_PY_TYPE = {"float": float, "int": int, "bool": bool, "str": str}


def _leaf(value: Any, path: tuple[str, ...], arrays: bool = False) -> Leaf | None:
    t = type(value)
    kd = _PY.get(t)
    if kd is not None:
        if t is int and not _INT64[0] <= value < _INT64[1]:
            return None
        if t is str and (len(value) > STR_MAX or "\0" in value or not _utf8(value)):
            return None
        return Leaf(path, kd[0], kd[1])
    if isinstance(value, np.generic) and value.dtype.kind in "biufc":
        return Leaf(path, "generic", value.dtype.str)
    if arrays and t is np.ndarray and value.dtype.kind in "biufc" and 0 < value.nbytes <= ARRAY_MAX:
        return Leaf(path, "array", value.dtype.str, tuple(value.shape))
    return None


def _utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def schema_of(value: Any, arrays: bool = False) -> Schema | None:
    """The schema of a result that fits a row, else None. ``arrays``: small numpy arrays fit
    too (a run that asks for a table of arrays); otherwise an array anywhere in the result
    makes it be stored whole."""
    if type(value) is not dict:
        leaf = _leaf(value, (), arrays)
        return None if leaf is None else (False, (leaf,))
    leaves: list[Leaf] = []
    if not value or not _walk(value, (), leaves, arrays):
        return None
    return True, tuple(leaves)


def _walk(d: dict[Any, Any], path: tuple[str, ...], out: list[Leaf], arrays: bool) -> bool:
    for key in sorted(d) if all(type(k) is str for k in d) else ():
        if not valid_key(key):
            return False
        v = d[key]
        if type(v) is dict:
            if not v or not _walk(v, (*path, key), out, arrays):
                return False
            continue
        leaf = _leaf(v, (*path, key), arrays)
        if leaf is None:
            return False
        out.append(leaf)
    return len(out) > 0 and all(type(k) is str for k in d)


def leaves_of(value: Any, schema: Schema) -> list[Any] | None:
    """The leaf values of ``value`` in the order of ``schema``, or None if it does not fit it."""
    return matcher(schema)(value)  # type: ignore[no-any-return]


def matcher(schema: Schema, skip: str | None = None) -> Any:
    """``leaves_of`` for one schema, as a function of the value (keep it: finding it hashes the
    schema, which costs as much as matching a small result). ``skip``: a dict's key left out
    (a task's ``id`` among its parameters), matched without a copy of the dict without it."""
    fast = _fast.get((schema, skip))
    if fast is None:
        fast = _fast[(schema, skip)] = _matcher(schema, skip)
        if fast is False:
            if skip is None:
                fast = _fast[(schema, skip)] = lambda v: _leaves_slow(v, schema)
            else:
                fast = _fast[(schema, skip)] = lambda v: _leaves_slow(_without(v, skip), schema)
    return fast


_fast: dict[Any, Any] = {}


def _without(v: Any, key: str) -> Any:
    return {k: x for k, x in v.items() if k != key} if type(v) is dict and key in v else v


def _matcher(schema: Schema, skip: str | None = None) -> Any:
    """A quick check for the common schemas, a bare Python number, bool or string, or a flat dict
    of them: a function of the value (its leaves, or None), or False for the general way."""
    is_dict, leaves = schema
    if any(leaf.kind not in ("float", "int", "bool", "str") or len(leaf.path) > 1 for leaf in leaves):
        return False
    types = tuple(_PY_TYPE[leaf.kind] for leaf in leaves)
    if not is_dict:
        if skip is not None:
            return False
        ty, leaf = types[0], leaves[0]
        if leaf.kind in ("float", "bool"):  # the type says it all
            return lambda v: [v] if type(v) is ty else None
        return lambda v: [v] if type(v) is ty and _fits(v, leaf) else None
    pairs = tuple((leaf.path[0], ty) for leaf, ty in zip(leaves, types))
    if any(k == skip for k, _ in pairs):
        return False
    n = len(pairs)
    lo, hi = _INT64
    strings = any(leaf.kind == "str" for leaf in leaves)

    def match(v: Any) -> list[Any] | None:
        if type(v) is not dict or len(v) != (n if skip is None or skip not in v else n + 1):
            return None
        out = []
        for k, ty in pairs:
            x: Any = v.get(k, _MISSING)
            if type(x) is not ty or (ty is int and not lo <= x < hi):  # type: ignore[operator]  # (an int here)
                return None
            out.append(x)
        if strings and not all(_fits(x, leaf) for x, leaf in zip(out, leaves)):
            return None
        return out

    return match


def _leaves_slow(value: Any, schema: Schema) -> list[Any] | None:
    is_dict, leaves = schema
    if not is_dict:
        leaf = leaves[0]
        return [value] if _fits(value, leaf) else None
    if type(value) is not dict:
        return None
    out = []
    for leaf in leaves:
        v: Any = value
        for k in leaf.path:
            if type(v) is not dict:
                return None
            v = v.get(k, _MISSING)
            if v is _MISSING:
                return None
        if not _fits(v, leaf):
            return None
        out.append(v)
    # no extra keys anywhere: the number of leaves matches the schema's
    return out if _count_leaves(value) == len(leaves) else None


_MISSING = object()


def _count_leaves(d: dict[Any, Any]) -> int:
    n = 0
    for v in d.values():
        n += _count_leaves(v) if type(v) is dict else 1
    return n


def _fits(value: Any, leaf: Leaf) -> bool:
    kind = leaf.kind
    v: Any = value
    if kind in _PY_TYPE:
        if type(value) is not _PY_TYPE[kind]:
            return False
        if kind == "int":
            return bool(_INT64[0] <= v < _INT64[1])
        if kind == "str":
            return len(v) <= STR_MAX and "\0" not in v and _utf8(v)
        return True
    if kind == "generic":
        return isinstance(v, np.generic) and v.dtype.str == leaf.dtype
    return (type(v) is np.ndarray and v.dtype.str == leaf.dtype and tuple(v.shape) == leaf.shape)


class RowsBuilder:
    """Rows of one schema gathered on the worker, a row at a time; columns when they are sent."""

    __slots__ = ("schema", "rows")

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self.rows: list[list[Any]] = []

    @property
    def n(self) -> int:
        return len(self.rows)

    def add(self, leaves: list[Any]) -> None:
        self.rows.append(leaves)

    def columns(self) -> list[Any]:
        """Each column as a numpy array (a list, for strings)."""
        if not self.rows:
            return [column(leaf, []) for leaf in self.schema[1]]
        return [column(leaf, list(values)) for leaf, values in zip(self.schema[1], zip(*self.rows))]


def column(leaf: Leaf, values: list[Any]) -> Any:
    if leaf.kind == "str":
        return list(values)
    if leaf.kind == "array":
        # (np.stack gives the native byte order: keep the task's own dtype)
        return np.stack(values).astype(leaf.dtype, copy=False) if values else np.empty((0, *leaf.shape), leaf.dtype)
    return np.array(values, dtype=leaf.dtype)


def checksum(cols: list[Any], value: int = 0) -> int:
    """crc32c of columns, in order: an array's raw bytes; strings as UTF-8, each ended by a NUL."""
    for c in cols:
        if isinstance(c, np.ndarray):
            if c.size:
                raw: Any = np.ascontiguousarray(c).reshape(-1).view(np.uint8)
                value = crc32c(raw, value)
        elif c:
            value = crc32c("\0".join(c).encode() + b"\0", value)
    return value


def nbytes(cols: list[Any]) -> int:
    return sum(c.nbytes if isinstance(c, np.ndarray) else sum(len(s) for s in c) for c in cols)


def values(schema: Schema, cols: list[Any], i: int) -> Any:
    """The value of row ``i``, rebuilt with the types the task returned."""
    is_dict, leaves = schema
    if not is_dict:
        return _value(leaves[0], cols[0], i)
    out: dict[str, Any] = {}
    for leaf, col in zip(leaves, cols):
        d = out
        for k in leaf.path[:-1]:
            d = d.setdefault(k, {})
        d[leaf.path[-1]] = _value(leaf, col, i)
    return out


def _value(leaf: Leaf, col: Any, i: int) -> Any:
    kind = leaf.kind
    if kind == "str":
        return str(col[i])
    if kind == "array":
        return np.array(col[i])
    if kind == "generic":
        return col[i][()] if isinstance(col[i], np.ndarray) else col[i]
    return _PY_TYPE[kind](col[i].item() if isinstance(col[i], np.generic) else col[i])


def all_values(schema: Schema, cols: list[Any]) -> list[Any]:
    """Every row's value (a column at a time where it can: for a bare Python number, tolist)."""
    is_dict, leaves = schema
    n = len(cols[0]) if cols else 0
    if not is_dict and leaves[0].kind in ("float", "int", "bool"):
        return cols[0].tolist()  # type: ignore[no-any-return]
    if not is_dict and leaves[0].kind == "str":
        return list(cols[0])
    return [values(schema, cols, i) for i in range(n)]


def name(leaf: Leaf) -> str:
    """A column's name: its path joined by '/' (``value`` for a bare result)."""
    return "/".join(leaf.path) if leaf.path else "value"


def describe(schema: Schema) -> list[dict[str, Any]]:
    """The schema as JSON-ready records (stored with the table)."""
    return [{"name": name(leaf), "path": list(leaf.path), "kind": leaf.kind, "dtype": leaf.dtype,
             "shape": list(leaf.shape)} for leaf in schema[1]]


def from_description(is_dict: bool, recs: list[dict[str, Any]]) -> Schema:
    return is_dict, tuple(Leaf(tuple(r["path"]), r["kind"], r["dtype"], tuple(r["shape"])) for r in recs)


def iter_leaves(schema: Schema) -> Iterator[Leaf]:
    return iter(schema[1])


# -- JSON cells: a column whose values mix types -------------------------------------------------

def to_json(value: Any) -> str:
    """A value of a column that mixes types, as JSON text that ``from_json`` gives back exactly:
    Python numbers, bools and strings as themselves; a numpy scalar or array as
    ``{"$np": [dtype, shape, base64 of its bytes]}``; a dict as an object (as
    ``{"$dict": [[key, value], ...]}`` when one of its keys starts with ``$``). (``json`` and
    ``base64`` are imported here: few runs have such a column, and every process would pay them.)"""
    import json

    return json.dumps(_enc(value), separators=(",", ":"), ensure_ascii=False)


def _enc(v: Any) -> Any:
    if isinstance(v, (np.generic, np.ndarray)):
        import base64

        a = np.asarray(v)
        return {"$np": [a.dtype.str, list(a.shape), base64.b64encode(np.ascontiguousarray(a).tobytes()).decode()]}
    if type(v) is dict:
        if any(k.startswith("$") for k in v):
            return {"$dict": [[k, _enc(x)] for k, x in v.items()]}
        return {k: _enc(x) for k, x in v.items()}
    return v


def _dec(d: dict[str, Any]) -> Any:
    if len(d) == 1:
        if "$np" in d:
            import base64

            dt, shape, raw = d["$np"]
            a = np.frombuffer(base64.b64decode(raw), dtype=np.dtype(dt)).reshape(shape).copy()
            return a[()] if not shape else a
        if "$dict" in d:
            return dict(d["$dict"])
    return d


def from_json(text: str) -> Any:
    import json

    return json.loads(text, object_hook=_dec)
