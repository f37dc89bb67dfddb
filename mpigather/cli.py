"""Command line: ``run`` (under mpiexec), ``status``, ``verify``, ``report`` and ``template``.

Bad input is found before any work starts and reported once, by rank 0, with exit status 2;
every rank leaves together, so nothing hangs.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from .errors import MasterFailed, UsageError
from .templates import TEMPLATES

log = logging.getLogger("mpigather")
RANK0_LAST = 0.5  # seconds a failed rank 0 waits after MPI_Finalize, so that the workers exit first

FAILED = 3  # exit status: the master itself failed (a bug, or its output became unwritable)
CTRL_C = 130  # exit status: stopped by a Ctrl-C (summary.CTRL_C)
_RELEASED = -1  # (a worker let go by a failed master)
# Seconds between the last output and MPI_Abort: the launcher forwards a rank's output through a
# pipe, and an abort tears the job down at once, dropping what is still in it (seen under load:
# the summary of a run that ended a stuck worker went missing)
ABORT_DRAIN = 1.0


def _rank_from_env() -> int:
    for var in ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID"):
        if var in os.environ:
            try:
                return int(os.environ[var])
            except ValueError:
                pass
    return 0


class _Parser(argparse.ArgumentParser):
    """Reports errors on rank 0 only; every rank exits with status 2."""

    def error(self, message: str) -> NoReturn:
        if _rank_from_env() == 0:
            self.print_usage(sys.stderr)
            sys.stderr.write(f"mpigather: error: {message}\n")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mpigather", description="Gather results of many MPI tasks into files.")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    r = sub.add_parser("run", help="run FUNC on every task (start it with mpiexec -n N)")
    r.add_argument("func", metavar="MODULE:FUNC", help="task function, e.g. mymod:simulate or path/to/file.py:simulate")
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("--tasks", metavar="FILE.jsonl", help="one JSON object per line; its 'id' key names it")
    src.add_argument("--range", type=int, metavar="N", help="tasks 0..N-1, each task the int itself")
    r.add_argument("--out", required=True, help="x.h5 (one HDF5 file) or a directory of .npy files")
    r.add_argument("--mode", choices=("stream", "direct"), help="stream results to the master (default) "
                   "or let workers write their own files")
    r.add_argument("--chunk-size", help="bytes per message of a streamed result (default 64MiB)")
    r.add_argument("--prefetch", type=int, help="tasks queued at each worker (default 2)")
    r.add_argument("--timeout", type=float, help="per-task lease in seconds; a task's own 'timeout' key wins")
    r.add_argument("--retries", type=int, help="retries of a task that raised (default 0)")
    r.add_argument("--max-failures", metavar="N|N%|auto|none",
                   help="stop handing out tasks once more than N tasks (or N%% of those ended) have failed, a task"
                   " counting once its retries are used up; auto (the default): stop when the first 20 tasks"
                   " all failed and none succeeded; none: never stop early")
    r.add_argument("--kwargs", action="store_true", default=None,
                   help="call FUNC with a task line's keys as keyword arguments (all but 'id'), e.g."
                   " def point(seed, x); without it FUNC gets the line's whole dict, 'id' included")
    r.add_argument("--batch-window", type=float, metavar="SECONDS", help="seconds of measured work handed to a"
                   " worker at once when tasks are tiny (default 0.02)")
    r.add_argument("--inline-max", type=int, metavar="BYTES", help="results up to this size travel inside their"
                   " header message instead of as a stream (default 262144)")
    r.add_argument("--hello-patience", type=float, metavar="SECONDS", help="seconds before the master warns that"
                   " workers have not joined (default 10)")
    r.add_argument("--no-abort-stuck", action="store_true", help="at the end of the run, leave workers stuck in a"
                   " task running instead of ending the job with MPI_Abort")
    r.add_argument("--table", action="store_true", default=None,
                   help="store small numpy arrays (up to 4 KiB, alone or in a dict) as rows of the table of small"
                   " results too (docs/tables.md); without it a task that returns an array gets /results/<id>")
    r.add_argument("--heartbeat", type=float, help="seconds between worker heartbeats (default 5)")
    r.add_argument("--grace", type=float, help="seconds running tasks get after SIGTERM/SIGUSR1 (default 60)")
    g = r.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", default=None, help="continue an interrupted run")
    g.add_argument("--overwrite", action="store_true", default=None, help="replace an existing output")
    r.add_argument("--checkpoint", choices=("every", "none"), help="multi-step tasks: store each step's output"
                   " before the step counts as done (every, the default), or keep it in the worker's memory (none)")
    r.add_argument("--keep-steps", action="store_true", default=None, help="keep every step's output in the output")
    r.add_argument("--no-affinity", action="store_true", help="multi-step tasks: hand every next step to the"
                   " scheduler instead of running it on the worker that finished the previous one")
    r.add_argument("--checksum", choices=("both", "sender"), help="large results: the master checks each one's"
                   " crc32c against the sender's (both, the default), or only records the sender's (sender)")
    r.add_argument("--kinds", help="what this process's workers are, e.g. gpu,bigmem (or MPIGATHER_KINDS);"
                   " steps with needs= run only on workers of that kind")
    r.add_argument("--no-lock", action="store_true", help="do not lock the output (a file system without"
                   " working locks; then start only one run on it)")
    r.add_argument("--quiet", action="store_true", help="no progress and no summary")
    r.add_argument("--progress", choices=("auto", "bar", "log", "off"), help="progress display (default auto)")
    r.add_argument("--log-level", default=None,
                   help="DEBUG, INFO, WARNING or ERROR (default INFO; WARNING with --quiet)")

    s = sub.add_parser("status", help="progress of a run, live or finished")
    s.add_argument("path", help="the run's --out")
    s.add_argument("--json", action="store_true", help="machine-readable output (schema in docs/status.md)")
    s.add_argument("--wait", action="store_true", help="wait until the run is no longer live; exit with its status")
    s.add_argument("--timeout", type=float, help="with --wait: give up after this many seconds (exit 124)")
    v = sub.add_parser("verify", help="recompute every stored result's checksum")
    v.add_argument("path")
    v.add_argument("--json", action="store_true")
    rp = sub.add_parser("report", help="where the time went, per worker")
    rp.add_argument("path")
    rp.add_argument("--plot", metavar="PNG", help="draw a per-worker timeline")
    rp.add_argument("--json", action="store_true")
    t = sub.add_parser("template", help="print a batch job template (slurm, pbs) to edit and submit")
    t.add_argument("name", choices=list(TEMPLATES), help="slurm (sbatch) or pbs (qsub: PBS Pro, OpenPBS, Torque)")
    t.add_argument("--out", metavar="FILE", help="write it to FILE instead of printing it")
    t.add_argument("--overwrite", action="store_true", help="with --out: replace an existing FILE")
    return p


def setup_logging(level: str, rank: int) -> None:
    lvl = getattr(logging, str(level).upper(), None)
    if not isinstance(lvl, int):
        raise UsageError(f"log level {level!r} is not one of DEBUG, INFO, WARNING, ERROR")
    h = logging.StreamHandler(sys.stderr)
    host = socket.gethostname()
    h.setFormatter(logging.Formatter(f"[%(asctime)s rank {rank} {host}] %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger("mpigather")
    root.handlers[:] = [h]
    root.setLevel(lvl)
    root.propagate = False
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").handlers[:] = [h]


def load_func(spec: str) -> Callable[[Any], Any]:
    """'pkg.mod:func' or 'path/file.py:func' -> the function. Raises UsageError naming what is missing."""
    mod_name, sep, func_name = spec.rpartition(":")
    if not sep or not mod_name or not func_name:
        raise UsageError(f"task function {spec!r} must be MODULE:FUNC, e.g. mymodule:simulate")
    if mod_name.endswith(".py"):
        path = Path(mod_name)
        if not path.is_file():
            raise UsageError(f"task function {spec!r}: file {path} does not exist")
        sp = importlib.util.spec_from_file_location(path.stem, path)
        assert sp is not None and sp.loader is not None
        mod = importlib.util.module_from_spec(sp)
        sys.modules[path.stem] = mod
        try:
            sp.loader.exec_module(mod)
        except Exception as e:
            raise UsageError(f"task function {spec!r}: importing {path} raised {type(e).__name__}: {e}") from None
    else:
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:
            raise UsageError(f"task function {spec!r}: no module named {e.name!r}"
                             " (is it on PYTHONPATH or in the current directory?)") from None
        except Exception as e:
            raise UsageError(f"task function {spec!r}: importing {mod_name} raised {type(e).__name__}: {e}") from None
    func = getattr(mod, func_name, None)
    if func is None:
        raise UsageError(f"task function {spec!r}: module {mod_name} has no attribute {func_name!r}")
    if not callable(func):
        raise UsageError(f"task function {spec!r}: {func_name} is a {type(func).__name__}, not a function")
    return func  # type: ignore[no-any-return]


def _options(a: argparse.Namespace) -> Any:
    from .config import make_options

    progress = "off" if a.quiet else a.progress
    return make_options(chunk_size=a.chunk_size, prefetch=a.prefetch, mode=a.mode, timeout=a.timeout,
                        retries=a.retries, heartbeat=a.heartbeat, grace=a.grace, resume=a.resume,
                        overwrite=a.overwrite, progress=progress, lock=False if a.no_lock else None,
                        checkpoint=a.checkpoint, keep_steps=a.keep_steps, affinity=False if a.no_affinity else None,
                        kinds=a.kinds, max_failures=a.max_failures, kwargs=a.kwargs, checksum=a.checksum,
                        batch_window=a.batch_window, inline_max=a.inline_max, hello_patience=a.hello_patience,
                        abort_stuck=False if a.no_abort_stuck else None, table=a.table, interface="cli")


def cmd_run(a: argparse.Namespace, argv: list[str]) -> int:
    from . import signals
    from .transport import MPILink

    # before MPI starts: a wall-time signal during start-up or shutdown must not kill rank 0
    signals.install(master=_rank_from_env() == 0)
    early = None
    if _rank_from_env() == 0 and a.tasks is not None and not a.resume:
        _find_mpi()
        early = _EarlyScan(a.tasks)  # (a resume may skip the pass: not then)
    link = MPILink()
    try:
        code = _run(a, argv, link, early)
        if code == FAILED or code == _RELEASED:
            link.farewell()
    finally:
        signals.ignore_stop()
        link.close()
    if code == _RELEASED:
        return 0  # rank 0 reports and sets the status (hydra ORs the ranks' exit codes together)
    if code == FAILED and link.rank == 0:
        # the output may be broken (a full disk in the middle of HDF5's metadata): leave without
        # letting the interpreter's clean-up touch it again, which can crash the HDF5 library.
        # Leave after the released workers: the launcher kills the ranks still running once one
        # exits with an error, and then reports their SIGKILL (9) instead of this status.
        from .transport import finalize

        sys.stdout.flush()
        sys.stderr.flush()
        finalize()
        time.sleep(RANK0_LAST)
        os._exit(FAILED)
    return code


def _find_mpi() -> None:
    """Find mpi4py's MPI module without importing it (nor starting MPI), before another thread
    imports anything: mpi4py's finder imports ctypes and loads the MPI library to learn its ABI
    inside ``find_spec``, which Python calls holding its global import lock, and a thread that
    held ctypes' or struct's lock meanwhile deadlocked the master (seen once in about 30 starts).
    The finder keeps what it learned, and the import itself imports nothing more there."""
    try:
        importlib.util.find_spec("mpi4py.MPI")
    except ImportError:
        pass  # (``MPILink`` says what is missing)


class _EarlyScan(threading.Thread):
    """The master's pass over a task file, begun before MPI starts: this thread imports the task
    file's code (numpy with it) and starts the pass, while the calling thread starts MPI. A
    master that imported them first came to ``MPI_Init`` 0.2 s after its workers, which spin
    there until every rank has come."""

    def __init__(self, path: str) -> None:
        super().__init__(name="mpigather-scan-start", daemon=True)
        self.path = path
        self._source: Any = None
        self._error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            from .tasks import JsonlSource

            source = JsonlSource(self.path)
            source.scan_early()
            self._source = source
        except BaseException as e:  # (raised again by ``source``, in the calling thread)
            self._error = e

    def source(self) -> Any:
        """The task file's source, its pass going on (or this thread's error)."""
        self.join()
        if self._error is not None:
            raise self._error
        return self._source


def _check_everywhere(a: argparse.Namespace, link: Any) -> tuple[Any, Any, str | None]:
    """Every rank checks what it can (logging, launch, options, the function); rank 0 speaks
    for all, once. Returns (options, function, the error every rank agrees on)."""
    from .launch import check as check_launch
    from .tasks import range_tasks

    opts = func = None
    err: str | None = None
    try:
        try:
            setup_logging(a.log_level or ("WARNING" if a.quiet else "INFO"), link.rank)
        finally:
            if not log.handlers:
                setup_logging("INFO", link.rank)
        check_launch(link.size)
        opts = _options(a)
        func = load_func(a.func)
        if a.range is not None:
            range_tasks(a.range)
        if link.rank == 0:
            from .startup import import_master

            import_master(a.out)  # (while the workers start: else between their hello and first task)
    except UsageError as e:
        err = str(e)
    if link.size == 1 and err is not None and _rank_from_env() != 0:
        return opts, func, ""  # one of several one-rank jobs: the first reports
    errs = link.gather(err) or []
    return opts, func, link.bcast(next((e for e in errs if e), None))


def _run(a: argparse.Namespace, argv: list[str], link: Any, early: _EarlyScan | None = None) -> int:
    from .api import run_on

    opts, func, msg = _check_everywhere(a, link)
    if msg is not None:
        if msg and link.rank == 0:
            print(f"mpigather: error: {msg}", file=sys.stderr)
        return 2
    source = None
    if link.rank == 0:
        if early is not None:
            source = early.source()
        else:  # (a task file is checked once the output is locked: done tasks too)
            from .tasks import JsonlSource, RangeSource

            source = JsonlSource(a.tasks) if a.tasks is not None else RangeSource(a.range)
    try:
        summary = run_on(link, func, source, a.out, opts, total=source.total if source else None, argv=argv,
                         worker_args={"decode": "json"} if a.tasks is not None else None)
    except UsageError as e:
        if link.rank == 0:
            print(f"mpigather: error: {e}", file=sys.stderr)
        return 2
    except MasterFailed:
        return _RELEASED
    except KeyboardInterrupt:  # a Ctrl-C (mpiexec sends it to every rank); the master kept what was finished
        if link.rank == 0:
            print("mpigather: interrupted (Ctrl-C); --resume continues the run", file=sys.stderr)
        return CTRL_C
    except Exception as e:  # a failure of the master itself: the workers were released before this
        if link.rank == 0:
            traceback.print_exc()
            print(f"mpigather: error: the master failed ({type(e).__name__}: {e}); every result the journal"
                  " calls done is safe, and --resume continues the run", file=sys.stderr)
        return FAILED
    if summary is None:
        return 0
    if not a.quiet or summary.exit_code != 0:
        print(summary.text(), file=sys.stderr if a.quiet else sys.stdout, flush=True)
    if summary.stuck and opts.abort_stuck:
        log.error("ending %d stuck worker(s) with MPI_Abort; their tasks were done elsewhere or failed",
                  len(summary.stuck))
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(ABORT_DRAIN)
        link.abort(summary.exit_code)
    return summary.exit_code


def cmd_status(a: argparse.Namespace) -> int:
    from .status import status

    return status(a.path, as_json=a.json, wait=a.wait, timeout=a.timeout)


def cmd_verify(a: argparse.Namespace) -> int:
    from .reader import verify

    try:
        n, bad, missing = verify(a.path)
    except FileNotFoundError as e:
        print(f"mpigather: error: {e}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps({"checked": n, "mismatched": bad, "missing": missing}))
    else:
        print(f"{n} result(s) checked, {len(bad)} mismatched, {len(missing)} missing")
        for t in bad:
            print(f"  MISMATCH {t}")
        for t in missing:
            print(f"  MISSING  {t}")
    return 1 if bad or missing else 0


def cmd_report(a: argparse.Namespace) -> int:
    from .report import report

    return report(a.path, plot=a.plot, as_json=a.json)


def cmd_template(a: argparse.Namespace) -> int:
    """The template on stdout, byte for byte, or in a new file (an existing one only with --overwrite)."""
    from . import templates

    try:
        text = templates.read(a.name)
    except OSError as e:  # a broken installation
        print(f"mpigather: error: cannot read the {a.name} template ({e}); reinstall mpigather", file=sys.stderr)
        return 1
    if a.out is None:
        if a.overwrite:
            raise UsageError("--overwrite goes with --out FILE (printing the template overwrites nothing)")
        sys.stdout.buffer.write(text)
        sys.stdout.flush()
        return 0
    if os.path.isdir(a.out):
        raise UsageError(f"--out {a.out} is a directory; name the file to write, e.g. "
                         f"{os.path.join(a.out, templates.filename(a.name))}")
    try:
        with open(a.out, "wb" if a.overwrite else "xb") as f:
            f.write(text)
    except FileExistsError:
        raise UsageError(f"{a.out} exists; pass --overwrite to replace it, or choose another --out") from None
    except OSError as e:
        raise UsageError(f"cannot write {a.out}: {e.strerror or e}") from None
    edit = "the lines marked EDIT"
    if a.name == "pbs" and os.path.basename(a.out) != templates.filename("pbs"):
        edit += f" (JOB_SCRIPT={os.path.basename(a.out)})"
    print(f"wrote {a.out}: edit {edit}, then `{TEMPLATES[a.name][1]} {a.out}`", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = build_parser().parse_args(argv)
    try:
        if a.cmd == "run":
            return cmd_run(a, ["mpigather", *argv])
        if a.cmd == "status":
            return cmd_status(a)
        if a.cmd == "verify":
            return cmd_verify(a)
        if a.cmd == "template":
            return cmd_template(a)
        return cmd_report(a)
    except UsageError as e:
        print(f"mpigather: error: {e}", file=sys.stderr)
        return 2
