"""What a task may return, and how it travels: a small header plus raw byte parts.

A result is split into *parts*, each a C-contiguous numpy array sent as raw bytes.
The header (kind, dtype descriptors, shapes, sizes, checksum) is small and pickled;
the array data never is. Imports no MPI.
"""

from __future__ import annotations

import pickle
import warnings
from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np
from crc32c import crc32c as _crc32c

from .errors import UnsupportedResultError

SUPPORTED = "a numpy array (or numpy scalar), bytes, a dict of str to arrays, or None"


class PartSpec(NamedTuple):
    """One array of a result: its key (None for a plain array), dtype descriptor and shape.

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
    """Everything the master needs to place a result before its bytes arrive."""

    kind: str
    parts: tuple[PartSpec, ...]
    nbytes: int
    crc: int | None  # None in a streamed header: the crc follows the chunks, in a trailer


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


def _as_part(key: str | None, value: Any, where: str) -> np.ndarray:
    if isinstance(value, np.generic):
        value = np.asarray(value)
    if not isinstance(value, np.ndarray):
        raise UnsupportedResultError(
            f"{where} is of unsupported type {type(value).__module__}.{type(value).__qualname__};"
            f" return {SUPPORTED}"
        )
    if value.dtype.hasobject:
        raise UnsupportedResultError(
            f"{where} has dtype {value.dtype} holding Python objects, which cannot be sent as raw bytes;"
            f" return {SUPPORTED} with a fixed-size dtype"
        )
    # not np.ascontiguousarray: it turns a 0-d array into a 1-d one
    return value if value.flags.c_contiguous else value.copy(order="C")


def split(result: Any) -> tuple[str, list[tuple[PartSpec, np.ndarray]]]:
    """Split a task's return value into its kind and its (spec, contiguous array) parts."""
    if result is None:
        return "none", []
    if isinstance(result, (bytes, bytearray, memoryview)):
        arr = np.frombuffer(bytes(result) if isinstance(result, memoryview) else result, dtype=np.uint8)
        return "bytes", [(_spec(None, arr), arr)]
    if isinstance(result, dict):
        # parts in sorted key order: the order a reader of the files sees, so checksums agree
        parts = []
        for key in sorted(result, key=lambda k: (not isinstance(k, str), str(k))):
            value = result[key]
            if not isinstance(key, str) or not key or "/" in key or key.startswith("."):
                raise UnsupportedResultError(
                    f"result dict has key {key!r}: keys must be non-empty str without '/' and not start with '.'"
                )
            arr = _as_part(key, value, f"result dict value for key {key!r}")
            parts.append((_spec(key, arr), arr))
        return "dict", parts
    arr = _as_part(None, result, "result")
    return "array", [(_spec(None, arr), arr)]


def _spec(key: str | None, arr: np.ndarray) -> PartSpec:
    return PartSpec(key, dtype_to_descr(arr.dtype), tuple(arr.shape), int(arr.nbytes))


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
    """Header and flat uint8 buffers of a return value; raises UnsupportedResultError.

    ``with_crc=False`` leaves ``crc`` None, for a sender that checksums chunk by chunk.
    """
    kind, parts = split(result)
    bufs = [raw(a) for _, a in parts]
    specs = tuple(s for s, _ in parts)
    return Header(kind, specs, sum(s.nbytes for s in specs), checksum(bufs) if with_crc else None), bufs


def encode_any(result: Any, with_crc: bool = True) -> tuple[Header, list[np.ndarray]]:
    """Like ``encode``, but any other picklable value travels pickled (kind "object").

    Used by the executor, whose users return arbitrary objects as with mpi4py.futures.
    """
    if type(result) in (np.ndarray, bytes, dict) or result is None:
        try:
            return encode(result, with_crc)
        except UnsupportedResultError:
            pass
    arr = np.frombuffer(pickle.dumps(result, protocol=5), dtype=np.uint8)
    spec = _spec(None, arr)
    return Header("object", (spec,), spec.nbytes, checksum([arr]) if with_crc else None), [arr]


def chunk_plan(header: Header, chunk_size: int) -> list[tuple[int, int, int]]:
    """The (part index, byte offset, length) of every chunk, in sending order.

    Chunks never span parts, so each lands in exactly one destination.
    """
    plan = []
    for i, spec in enumerate(header.parts):
        for off in range(0, spec.nbytes, chunk_size):
            plan.append((i, off, min(chunk_size, spec.nbytes - off)))
    return plan


def assemble(header: Header, arrays: list[np.ndarray]) -> Any:
    """Rebuild the value a task returned from its header and part arrays."""
    if header.kind == "none":
        return None
    if header.kind == "bytes":
        return arrays[0].tobytes()
    if header.kind == "object":
        return pickle.loads(arrays[0].tobytes())
    if header.kind == "array":
        return arrays[0]
    return {spec.key: arr for spec, arr in zip(header.parts, arrays)}


def from_raw(spec: PartSpec, buf: np.ndarray) -> np.ndarray:
    """View a flat uint8 buffer as the part's array."""
    dt = spec.dtype
    if dt.itemsize == 0 or buf.size == 0:
        return np.empty(spec.shape, dtype=dt)
    return buf.view(dt).reshape(spec.shape)
