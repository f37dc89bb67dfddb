"""Run options. Each is taken from the explicit argument, else ``MPIGATHER_<NAME>``, else its default."""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, fields
from typing import Any

from .errors import UsageError

MiB = 1 << 20
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "kb": 1000, "m": MiB, "mib": MiB, "mb": 10**6,
          "g": 1 << 30, "gib": 1 << 30, "gb": 10**9}
MAX_CHUNK = (1 << 31) - 1  # one MPI message with an int count


def parse_size(text: str | int, what: str = "size") -> int:
    """'64MiB' -> 67108864. Raises UsageError naming the value."""
    if isinstance(text, int) and not isinstance(text, bool):
        n = text
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
        unit = m.group(2).lower() if m else None
        if not m or unit not in _UNITS:
            raise UsageError(f"{what} {text!r} is not a size; write it like 64MiB, 1GiB or 1048576")
        n = int(float(m.group(1)) * _UNITS[unit])
    if n <= 0:
        raise UsageError(f"{what} must be greater than 0, not {text!r}")
    return n


@dataclass
class Options:
    """Everything that tunes a run. See docs/cluster.md for how to choose them."""

    chunk_size: int = 64 * MiB  # bytes per message of a streamed result
    prefetch: int = 2  # tasks queued at each worker beyond the one running
    mode: str = "stream"  # stream | direct
    timeout: float | None = None  # per-task lease, seconds
    retries: int = 0  # retries of a task that raised
    heartbeat: float = 5.0  # seconds between worker heartbeats while a task runs
    grace: float = 60.0  # seconds that running tasks get to finish after SIGTERM/SIGUSR1
    inline_max: int = 256 << 10  # results up to this size travel inside the header message
    batch_window: float = 0.02  # seconds of work queued per worker for tiny tasks
    resume: bool = False
    overwrite: bool = False
    progress: str = "auto"  # auto | bar | log | off
    abort_stuck: bool = True  # end workers stuck in a task at the end of the run (MPI_Abort)
    lock: bool = True  # hold an exclusive lock on the output (off: a file system without locks)
    hello_patience: float = 10.0  # seconds before the master warns that workers have not checked in
    checkpoint: str = "every"  # every | none: store each step's output before the step counts as done
    affinity: bool = True  # the worker that finished a step runs the next one itself when it can
    keep_steps: bool = False  # keep every step's output in the output (/steps/<id>/<n>-<step>)
    checksum: str = "both"  # both | sender: the master also checks each streamed result's crc32c, or only records it
    kinds: str = ""  # what this worker is, comma-separated (gpu,bigmem): steps with needs= go to such workers
    max_failures: str = "auto"  # auto | N | N% | none: when failing tasks stop the run early (scheduler.limits)
    kwargs: bool = False  # call the task function with a dict task's keys (but "id") as keyword arguments
    table: bool = False  # small numpy arrays are rows of the table too (else an array is /results/<id>)
    interface: str = "library"  # cli | library: how errors name the options (--resume or resume=True)

    def __post_init__(self) -> None:
        self.chunk_size = parse_size(self.chunk_size, "chunk size")
        if self.chunk_size > MAX_CHUNK:
            raise UsageError(f"chunk size {self.chunk_size} is over the 2 GiB MPI message limit; use at most 1GiB")
        if self.mode not in ("stream", "direct"):
            raise UsageError(f"mode must be 'stream' or 'direct', not {self.mode!r}")
        if int(self.prefetch) < 1:
            raise UsageError(f"prefetch must be at least 1, not {self.prefetch}")
        if int(self.retries) < 0:
            raise UsageError(f"retries must be at least 0, not {self.retries}")
        if self.timeout is not None and float(self.timeout) <= 0:
            raise UsageError(f"timeout must be greater than 0 seconds, not {self.timeout}")
        if float(self.heartbeat) <= 0:
            raise UsageError(f"heartbeat must be greater than 0 seconds, not {self.heartbeat}")
        if self.resume and self.overwrite:
            raise UsageError(f"choose one of {self.flag('resume')} and {self.flag('overwrite')}")
        if self.checkpoint not in ("every", "none"):
            raise UsageError(f"checkpoint must be 'every' or 'none', not {self.checkpoint!r}")
        if self.checksum not in ("both", "sender"):
            raise UsageError(f"checksum must be 'both' or 'sender', not {self.checksum!r}")
        if self.progress not in ("auto", "bar", "log", "off"):
            raise UsageError(f"progress must be auto, bar, log or off, not {self.progress!r}")
        self.prefetch, self.retries = int(self.prefetch), int(self.retries)
        from .scheduler.limits import FailureLimit

        try:
            self.max_failures = str(FailureLimit.parse(self.max_failures))
        except ValueError as e:
            raise UsageError(str(e)) from None

    def flag(self, name: str) -> str:
        """How the user spells an option: ``--resume`` on the command line, ``resume=True`` in Python."""
        if self.interface == "cli":
            return "--" + name.replace("_", "-")
        default = next(f.default for f in fields(self) if f.name == name)
        return f"{name}={not default!r}" if isinstance(default, bool) else f"{name}=..."

    def check_in_memory(self) -> None:
        """Refuse what a run without an output cannot do (direct mode: workers write the files)."""
        if self.mode == "direct":
            where = "--out x.h5 or --out DIR" if self.interface == "cli" else "out='x.h5' or out='DIR'"
            raise UsageError(f"mode 'direct' needs a file output ({where})")


def _convert(name: str, default: Any, raw: str) -> Any:
    if name == "chunk_size":
        return raw
    if isinstance(default, bool):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if name == "timeout":
        return float(raw)
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    return raw


def make_options(**given: Any) -> Options:
    """Options from keyword arguments, falling back to MPIGATHER_* variables, then defaults."""
    names = {f.name: f for f in fields(Options)}
    unknown = set(given) - set(names)
    if unknown:
        raise UsageError(f"unknown option(s): {', '.join(sorted(unknown))}; known: {', '.join(names)}")
    values: dict[str, Any] = {}
    for name, f in names.items():
        if given.get(name) is not None:
            values[name] = given[name]
            continue
        raw = os.environ.get(f"MPIGATHER_{name.upper()}")
        if raw is None:
            continue
        try:
            values[name] = _convert(name, f.default, raw)
        except ValueError:
            warnings.warn(f"ignoring MPIGATHER_{name.upper()}={raw!r}: not a valid {name}", stacklevel=2)
    return Options(**values)


# Every option's name, in the order of ``Options``: ``mpigather.run`` and ``mpigather.executor``
# take them as keyword arguments, and the command line as flags (tests/test_api.py keeps the
# three in step).
OPTION_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Options))
