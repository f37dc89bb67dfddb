"""What a task may return, and how it travels: a small header plus raw byte parts.

A task may return anything picklable. The value becomes a tree of *nodes*:

- ``array`` (a numpy array), ``generic`` (a numpy scalar) and ``bytes``: one raw *part* each;
- ``str``, ``int``, ``float``, ``bool`` and ``none``: their value rides in the header;
- ``dict`` (a plain dict whose keys can name files and datasets): a node per key;
- ``object``: anything else, pickled with protocol 5; its large buffers (the arrays inside a
  list, a dataclass, a DataFrame...) go *out of band* as parts of their own, so they travel
  and are stored as raw bytes, exactly like an array, and are never copied into the pickle.

Each part is a C-contiguous buffer sent as raw bytes; the header (kinds, dtypes, shapes,
sizes, checksum, and the small values) is small and pickled. Imports no MPI.
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import numpy as np

from .crc import crc32c as _crc32c
from .errors import UnsupportedResultError
from .tuples import NamedTuple

OOB_MIN = 64 << 10  # buffers inside a pickled object at least this large travel out of band
SCALARS = ("str", "int", "float", "bool")
# dict keys with these endings would collide with the .npy directory's file names
RESERVED_SUFFIXES = (".npy", ".pkl", ".bytes", ".none")


class PartSpec(NamedTuple):
    """One raw buffer of a result: its path inside the result, dtype descriptor and shape.

    Named tuples, not dataclasses: thousands of these are pickled per second for tiny tasks.
    """

    key: str | None
    descr: Any
    shape: tuple[int, ...]
    nbytes: int

    @property
    def dtype(self) -> np.dtype:
        return descr_to_dtype(self.descr)


class Header(NamedTuple):
    """Everything the master needs to place a result before its bytes arrive.

    ``tree`` is the root node's reference: a part index (array, generic, bytes), the value
    itself (str, int, float, bool), ``(first part, number of parts)`` (object: the pickle,
    then its out-of-band buffers), a tuple of ``(key, kind, reference)`` in key order (dict),
    or None.
    """

    kind: str
    parts: tuple[PartSpec, ...]
    nbytes: int
    crc: int | None  # None in a streamed header: the crc follows the chunks, in a trailer
    tree: Any = None


def dtype_to_descr(dt: np.dtype) -> Any:
    try:
        return _descr_cached(dt)
    except TypeError:  # unhashable dtype (never seen, but cheap to allow)
        return _descr(dt)


@lru_cache(maxsize=256)
def _descr_cached(dt: np.dtype) -> Any:
    return _descr(dt)


def _descr(dt: np.dtype) -> Any:
    with warnings.catch_warnings():  # h5py tags the dtypes it reads (bool enums...): not needed here
        warnings.simplefilter("ignore", UserWarning)
        return np.lib.format.dtype_to_descr(dt)


def descr_to_dtype(descr: Any) -> np.dtype:
    if isinstance(descr, str):
        return _dtype_cached(descr)
    return np.lib.format.descr_to_dtype(descr)  # type: ignore[arg-type]  # a str descr is valid


@lru_cache(maxsize=256)
def _dtype_cached(descr: str) -> np.dtype:
    return np.lib.format.descr_to_dtype(descr)  # type: ignore[arg-type]  # a str descr is valid


_U8 = "|u1"


def valid_key(key: Any) -> bool:
    """Can this dict key name a dataset and a file?"""
    return (isinstance(key, str) and key != "" and "/" not in key and "\0" not in key
            and not key.startswith(".") and not key.endswith(RESERVED_SUFFIXES) and _utf8(key))


def _utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        return False
    return True


class _Encoder:
    def __init__(self) -> None:
        self.specs: list[PartSpec] = []
        self.bufs: list[Any] = []

    def part(self, key: str | None, descr: Any, shape: tuple[int, ...], nbytes: int, buf: Any) -> int:
        self.specs.append(PartSpec(key, descr, shape, nbytes))
        self.bufs.append(buf)
        return len(self.specs) - 1

    def node(self, value: Any, path: str | None) -> tuple[str, Any]:
        t = type(value)
        if value is None:
            return "none", None
        if t is bool:
            return "bool", value
        if t is int and -(1 << 63) <= value < (1 << 63):
            return "int", value
        if t is float:
            return "float", value
        if t is str and "\0" not in value and _utf8(value):
            return "str", value
        if t is bytes:
            arr = np.frombuffer(value, dtype=np.uint8)
            return "bytes", self.part(path, _U8, (len(value),), len(value), arr)
        if t is np.ndarray and not value.dtype.hasobject:
            # not np.ascontiguousarray: it turns a 0-d array into a 1-d one
            arr = value if value.flags.c_contiguous else value.copy(order="C")
            return "array", self.part(path, dtype_to_descr(arr.dtype), tuple(arr.shape), int(arr.nbytes), raw(arr))
        if isinstance(value, np.generic) and not value.dtype.hasobject:
            arr = np.asarray(value)
            return "generic", self.part(path, dtype_to_descr(arr.dtype), (), int(arr.nbytes), raw(arr))
        if t is dict and all(valid_key(k) for k in value):
            entries = []
            for key in sorted(value):
                kind, ref = self.node(value[key], key if path is None else f"{path}/{key}")
                entries.append((key, kind, ref))
            return "dict", tuple(entries)
        return "object", self.pickled(value, path)

    def pickled(self, value: Any, path: str | None) -> tuple[int, int]:
        oob: list[pickle.PickleBuffer] = []

        def keep(buf: pickle.PickleBuffer) -> bool:
            if buf.raw().nbytes >= OOB_MIN:
                oob.append(buf)
                return False  # out of band
            return True  # small: inside the pickle

        try:
            data = pickle.dumps(value, protocol=5, buffer_callback=keep)
        except Exception as e:
            what = f"{type(value).__module__}.{type(value).__qualname__}"
            where = "the result" if path is None else f"the value at key {path!r} of the result"
            raise UnsupportedResultError(
                f"{where} is of type {what}, which cannot be pickled ({type(e).__name__}: {e});"
                " return numpy arrays, dicts or other picklable objects"
            ) from e
        skel = np.frombuffer(data, dtype=np.uint8)
        if not oob:
            return self.part(path, _U8, (len(data),), len(data), skel), 1
        first = self.part(None if path is None else path, _U8, (len(data),), len(data), skel)
        for i, pb in enumerate(oob):
            m = pb.raw()
            self.part(f"{path or ''}#{i}", _U8, (m.nbytes,), m.nbytes, np.frombuffer(m, dtype=np.uint8))
        return first, 1 + len(oob)


def raw(arr: np.ndarray) -> np.ndarray:
    """A flat uint8 view of a C-contiguous array (no copy)."""
    return arr.reshape(-1).view(np.uint8)


def checksum(buffers: Any, value: int = 0) -> int:
    """crc32c over the concatenated raw bytes, in order."""
    for buf in buffers:
        if len(buf):
            value = _crc32c(buf, value)
    return value


def crc_update(value: int, buf: Any) -> int:
    return _crc32c(buf, value) if len(buf) else value


def encode(result: Any, with_crc: bool = True) -> tuple[Header, list[np.ndarray]]:
    """Header and flat uint8 buffers of a return value. Raises UnsupportedResultError when
    the value (or a part of it) cannot be pickled.

    ``with_crc=False`` leaves ``crc`` None, for a sender that checksums chunk by chunk.
    """
    enc = _Encoder()
    kind, tree = enc.node(result, None)
    specs = tuple(enc.specs)
    return (Header(kind, specs, sum(s.nbytes for s in specs), checksum(enc.bufs) if with_crc else None, tree),
            enc.bufs)


def chunk_plan(header: Header, chunk_size: int) -> list[tuple[int, int, int]]:
    """The (part index, byte offset, length) of every chunk, in sending order.

    Chunks never span parts, so each lands in exactly one destination.
    """
    plan = []
    for i, spec in enumerate(header.parts):
        for off in range(0, spec.nbytes, chunk_size):
            plan.append((i, off, min(chunk_size, spec.nbytes - off)))
    return plan


def from_raw(spec: PartSpec, buf: np.ndarray) -> np.ndarray:
    """View a flat uint8 buffer as the part's array."""
    dt = spec.dtype
    if dt.itemsize == 0 or buf.size == 0:
        return np.empty(spec.shape, dtype=dt)
    return buf.view(dt).reshape(spec.shape)


def assemble(header: Header, raws: list[np.ndarray]) -> Any:
    """Rebuild the value a task returned from its header and the raw uint8 buffer of each part.

    Arrays are views of those buffers (no copy). Raises whatever unpickling an object raises.
    """
    return _build(header, raws, header.kind, header.tree)


def _build(header: Header, raws: list[np.ndarray], kind: str, ref: Any) -> Any:
    if kind in SCALARS:
        return ref
    if kind == "none":
        return None
    if kind == "array":
        return from_raw(header.parts[ref], raws[ref])
    if kind == "generic":
        return from_raw(header.parts[ref], raws[ref])[()]
    if kind == "bytes":
        return raws[ref].tobytes()
    if kind == "dict":
        return {key: _build(header, raws, k, r) for key, k, r in ref}
    if kind == "object":
        first, n = ref
        return pickle.loads(raws[first], buffers=raws[first + 1 : first + n])
    raise ValueError(f"unknown result kind {kind!r}")


def walk(header: Header) -> Iterator[tuple[tuple[str, ...], str, Any]]:
    """Every node of a result, parents before children, dict keys in order: (path, kind, reference)."""

    def visit(path: tuple[str, ...], kind: str, ref: Any) -> Iterator[tuple[tuple[str, ...], str, Any]]:
        yield path, kind, ref
        if kind == "dict":
            for key, k, r in ref:
                yield from visit((*path, key), k, r)

    return visit((), header.kind, header.tree)
