"""The text of a failure that goes back to the master: where it happened and its traceback
(``format_exc``), or, for an error seen before on this worker, a line naming it
(``format_again``); ``where`` is the key that makes two failures the same error.
"""

from __future__ import annotations

import os
import traceback
from typing import Any


def where(exc: BaseException | None) -> str:
    """An exception's type and the place it was raised (file:line in function): what makes two
    failures the same error."""
    if exc is None:
        return ""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return type(exc).__qualname__
    code = tb.tb_frame.f_code
    return f"{type(exc).__qualname__} at {code.co_filename}:{tb.tb_lineno} in {code.co_name}"


def format_again(tid: Any, attempt: int, rank: int, host: str, exc: BaseException, first: Any, key: str,
                 step: str | None = None) -> str:
    """The error text of a failure seen before on this worker: the traceback is named, not repeated."""
    where_ = f" in {step}" if step else ""
    only = "".join(traceback.format_exception_only(type(exc), exc))
    return (f"task {tid!r} failed{where_} on rank {rank} (host {host}, pid {os.getpid()}), attempt {attempt}:\n"
            f"(the same error as task {first!r}, whose traceback was reported: {key})\n{only}")


def format_exc(tid: Any, attempt: int, rank: int, host: str, exc: BaseException, step: str | None = None) -> str:
    """The error text that goes back to the master: where it happened, then the traceback."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    where = f" in {step}" if step else ""
    return f"task {tid!r} failed{where} on rank {rank} (host {host}, pid {os.getpid()}), attempt {attempt}:\n{tb}"
