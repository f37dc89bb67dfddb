"""Reading a task file's lines: opening it, parsing a line (with the message a bad line gets),
a line's id without parsing it where it comes first, and the file's size and checksum."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

from ..crc import crc32c
from ..errors import UsageError
from .params import _task_id

try:
    from orjson import loads as _orjson_loads
except ImportError:  # (optional: ``pip install mpigather[fast]``) the standard library's json parses every line
    _orjson_loads = None  # type: ignore[assignment]

_FAST: Any = _orjson_loads  # the fast parser, or None (tests set None to check the fallback)
_REFUSED = object()


def _iter_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, Any, Any]]:
    with _open_tasks(path) as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            obj = _parse(path, i, line)
            yield i + 1, _task_id(obj, i), obj


_NO_ID = object()
_ID_PREFIX = '{"id": '


def _quick_id(line: str) -> Any:
    """A line's id without parsing it, where it comes first as a plain string or int
    (``{"id": "p17", ...}``); None: the line has no ``id`` key; _NO_ID: parse the line to know."""
    if not line.startswith(_ID_PREFIX):
        return _NO_ID if '"id"' in line else None
    rest = line[len(_ID_PREFIX):]
    if rest[:1] == '"':
        end = rest.find('"', 1)
        tid = rest[1:end]
        if end < 0 or "\\" in tid or rest[end + 1 : end + 2] not in (",", "}"):
            return _NO_ID
        return tid
    end = next((k for k, c in enumerate(rest) if c in ",}"), -1)
    num = rest[:end]
    return int(num) if end > 0 and num.isdigit() and (num == "0" or num[0] != "0") else _NO_ID


def _open_tasks(path: str | os.PathLike[str]) -> Any:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise UsageError(f"task file {path} does not exist") from None
    except OSError as e:
        raise UsageError(f"cannot read task file {path}: {e.strerror}") from None


def _parse(path: str | os.PathLike[str], i: int, line: bytes | str) -> Any:
    """A line's object (a dict), or UsageError naming the line. orjson, where installed, parses
    the lines it accepts (several times faster than json); a line it refuses is parsed again by ``json``, which
    decides, so that both accept the same lines (``json`` also takes NaN, 1e400 and lone
    surrogates) and a bad line gets the same message; an id that orjson reads as a float is read
    again too (an integer beyond 64 bits, which json keeps an int)."""
    obj: Any = _REFUSED
    if _FAST is not None:
        try:
            obj = _FAST(line)
        except ValueError:
            pass
        else:
            if type(obj) is dict and type(obj.get("id")) is float:
                obj = _REFUSED  # (orjson reads an integer beyond 64 bits as a float: json keeps it an int)
    if obj is _REFUSED:
        try:
            obj = json.loads(line.decode() if type(line) is bytes else line)
        except ValueError as e:  # (a line that is not UTF-8 too)
            msg = getattr(e, "msg", str(e))
            raise UsageError(f"task file {path}, line {i + 1}: invalid JSON ({msg})") from None
    if not isinstance(obj, dict):
        raise UsageError(f"task file {path}, line {i + 1}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _iter_jsonl_hashed(path: str | os.PathLike[str]) -> Iterator[tuple[int, Any, Any, int, int]]:
    """(line number, id, object, position, hash) of every task of a file."""
    seq = -1
    with _open_tasks(path) as f:
        for i, line in enumerate(f):
            stripped = line.strip()
            if not stripped:
                continue
            seq += 1
            obj = _parse(path, i, line)
            yield i + 1, _task_id(obj, i), obj, seq, crc32c(stripped)


def _file_signature(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(size, crc32c) of a file, read in large blocks (about 2 GB/s here)."""
    crc = size = 0
    with _open_tasks(path) as f:
        while block := f.read(8 << 20):
            crc = crc32c(block, crc)
            size += len(block)
    return size, crc
