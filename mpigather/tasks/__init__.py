"""Task sources, read lazily: a JSONL file, a range, or any iterable.

Each gives the scheduler chunks of consecutive tasks: ids, payloads and positions in the task
list. In a JSONL file, a line's ``id`` key is its id, else its 0-based line number. From an
iterable, a dict payload's ``id`` key is its id, else its 0-based position. A file is checked
in one pass (JSON, ids, duplicates), holding 8 bytes per task, while its first tasks run: only
checked lines are handed out, and a bad line stops the run. On resume, done tasks are left out
by position, unread.

Modules: ``params`` (a task's parameters, their hash, and a resume's checks), ``source`` (ranges,
lists and iterables), ``lines`` (reading and parsing a task file's lines), ``scan`` (the
checking pass) and ``jsonl`` (the task file source).

A task's parameters are described for the output's task table: as canonical JSON where they
are JSON, else by their ``repr``. Their hash (of a file's line; of the JSON, or of the pickle,
for other tasks) lets a resume check that each done task still has the parameters it had.
"""

from typing import TYPE_CHECKING

from ..lazy import lazy_getattr

# Where each name lives, imported on first use (PEP 562): a run of a range or a list (and the
# executor) does not import the task file's reader and its checking pass.
_WHERE = {
    "JsonlSource": "jsonl", "scan_jsonl": "jsonl",
    "PARAMS_MAX": "params", "block_hash": "params", "describe": "params", "timeout_of": "params",
    "ItemsSource": "source", "IterableSource": "source", "ListSource": "source", "RangeSource": "source",
    "TaskSource": "source", "iterable_tasks": "source", "range_tasks": "source", "source_of": "source",
}

__all__ = ["PARAMS_MAX", "IterableSource", "ItemsSource", "JsonlSource", "ListSource", "RangeSource", "TaskSource",
           "block_hash", "describe", "iterable_tasks", "range_tasks", "scan_jsonl", "source_of", "timeout_of"]


__getattr__ = lazy_getattr(__name__, _WHERE, globals())


if TYPE_CHECKING:  # for type checkers: the same names, imported eagerly
    from .jsonl import JsonlSource, scan_jsonl
    from .params import PARAMS_MAX, block_hash, describe, timeout_of
    from .source import (
        ItemsSource,
        IterableSource,
        ListSource,
        RangeSource,
        TaskSource,
        iterable_tasks,
        range_tasks,
        source_of,
    )
