"""Multi-step tasks: a step function says what runs next by returning ``next_step(...)``.

    def fetch(task):
        return mpigather.next_step(clean, read(task["path"]))      # the worker decides
    def clean(raw):
        return mpigather.next_step(simulate, tidy(raw), needs="gpu")
    def simulate(data):
        return {"field": run(data)}                                 # a plain return: the result

The steps of a task run strictly in order, each under its own lease (``timeout=`` per step,
else the run's). By default the worker that finished a step runs the next one itself, with
the value already in its memory (affinity); it hands the step to another worker only when
the step ``needs`` a kind of worker it is not. With ``checkpoint="every"`` (the default) each
step's output is also stored durably on the master before the step counts as done, so a
failure re-runs one step and a resumed run starts every task at its next unfinished step;
with ``checkpoint="none"`` intermediates stay in the worker's memory and a failure restarts
the task. A step may return a list of ``next_step(...)``: each becomes a child task
``<id>.<k>``, and the parent is done when all its children are.

Imports no MPI.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

from .tuples import NamedTuple


class NextStep(NamedTuple):
    """What a step returns to say that ``func(value)`` runs next."""

    func: Callable[[Any], Any]
    value: Any
    needs: str | None = None
    timeout: float | None = None


def next_step(func: Callable[[Any], Any], value: Any, *, needs: str | None = None,
              timeout: float | None = None) -> NextStep:
    """Run ``func(value)`` as the next step of this task.

    ``needs``: a kind of worker the step must run on (workers declare their kinds with
    ``MPIGATHER_KINDS=gpu,bigmem`` or ``--kinds``). ``timeout``: this step's lease in seconds.
    """
    if not callable(func):
        raise TypeError(f"next_step needs a function, not {type(func).__name__}")
    if needs is not None and (not isinstance(needs, str) or not needs):
        raise TypeError(f"needs must be the name of a kind of worker, not {needs!r}")
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be greater than 0 seconds, not {timeout!r}")
    func_ref(func)  # a step that another worker cannot find fails here, on the worker that made it
    return NextStep(func, value, needs, timeout)


def func_ref(func: Callable[..., Any]) -> str:
    """``module:qualname`` of a module-level function, which every rank can look up."""
    mod, qual = getattr(func, "__module__", None), getattr(func, "__qualname__", "")
    if not mod or not qual or "<" in qual:
        raise ValueError(f"the next step {func!r} must be a function defined at the top level of a module"
                         " (not a lambda or a nested function), so that another worker can find it")
    return f"{mod}:{qual}"


def resolve(ref: str) -> Callable[[Any], Any]:
    """The function a ``func_ref`` names."""
    mod_name, _, qual = ref.partition(":")
    mod = sys.modules.get(mod_name) or importlib.import_module(mod_name)
    obj: Any = mod
    for part in qual.split("."):
        obj = getattr(obj, part)
    return obj  # type: ignore[no-any-return]


def step_name(ref: str | None) -> str:
    return "" if not ref else ref.rpartition(":")[2].rpartition(".")[2]


class StepInfo(NamedTuple):
    """Rides with a message about a multi-step task: which step finished and what comes next."""

    n: int  # the step that finished (0: the task function)
    ran: str  # the name of the function that ran it
    next: str | None  # func_ref of the next step; None: this is the task's result
    needs: str | None = None
    timeout: float | None = None
    continuing: bool = False  # the worker runs the next step itself
    child: int | None = None  # fan-out: the input of child ``child`` of ``of``
    of: int = 0


class StepCall(NamedTuple):
    """Sent with a task to run one of its later steps: ``next(input)`` as step ``n``."""

    n: int
    func: str  # func_ref
    needs: str | None = None
    timeout: float | None = None
    path: str | None = None  # where the input is stored (a file the worker reads)
    value: Any = None  # the input itself, when it is not in a file (results in memory)
    inline: bool = False  # ``value`` holds the input (it may be None)


def is_next(value: Any) -> bool:
    return type(value) is NextStep or (type(value) is list and bool(value)
                                       and all(type(v) is NextStep for v in value))
