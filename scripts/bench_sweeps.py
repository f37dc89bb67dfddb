"""`make bench` (part 2): sweeps, tiny tasks and the executor, side by side with what a user
would otherwise write, in one run.

    python scripts/bench_sweeps.py               # every case, 5 rounds (~5 min on 2 cores)
    python scripts/bench_sweeps.py --quick       # small sizes, 2 rounds
    python scripts/bench_sweeps.py --only latency --rounds 3
    python scripts/bench_sweeps.py --only sweep_h5 --sweep-size 1000000 --rounds 3   # -> SWEEPS-1000000.md

Each measurement is one ``mpiexec -n 3`` command with a timeout; the rounds are interleaved
(each round runs every variant once), so that background load hits them alike. Reported per
variant: the fastest, the median and the slowest run, and the first one (a cold machine, as a
user's single run is), and the ratio of the medians to the peer's (above 1: mpigather wins).
Writes ``bench/SWEEPS.md`` and ``bench/sweeps.json`` (``--quick``: under ``bench/raw/quick/``).

Under mpiexec, ``python scripts/bench_sweeps.py case NAME ARGS`` runs one measurement and prints
``RESULT {json}`` on the root.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


# -- the task functions (workers import them from here) ------------------------------------------


def point(p: dict[str, Any]) -> dict[str, Any]:
    """A sweep's point: ``{"id": "p17", "seed": 17, "x": 0.017}`` -> three small fields."""
    x, s = p["x"], p["seed"]
    return {"energy": math.sin(x) * s, "converged": s % 3 != 0, "iters": s % 17}


def half(x: float) -> float:
    return x * 0.5


def ident(x: Any) -> Any:
    return x


def write_tasks(path: Path, n: int) -> Path:
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            for i in range(n):
                f.write(json.dumps({"id": f"p{i}", "seed": i, "x": i / n}) + "\n")
        tmp.replace(path)
    return path


# -- one measurement, under mpiexec ---------------------------------------------------------------


def _emit(rec: dict[str, Any]) -> None:
    print("RESULT " + json.dumps(rec), flush=True)


def case_sweep_hand(a: argparse.Namespace) -> None:
    """What a user writes: MPICommExecutor.map(chunksize=100), then one h5py dataset per field
    (durable only at the end)."""
    import h5py
    import numpy as np
    from mpi4py import MPI
    from mpi4py.futures import MPICommExecutor

    with MPICommExecutor(MPI.COMM_WORLD, root=0) as ex:
        if ex is not None:
            params = [json.loads(line) for line in open(a.tasks)]
            res = list(ex.map(point, params, chunksize=100))
            if a.out:
                with h5py.File(a.out, "w") as f:
                    f["id"] = np.array([p["id"] for p in params], dtype="S")
                    f["seed"] = np.array([p["seed"] for p in params])
                    f["x"] = np.array([p["x"] for p in params])
                    f["energy"] = np.array([r["energy"] for r in res])
                    f["converged"] = np.array([r["converged"] for r in res])
                    f["iters"] = np.array([r["iters"] for r in res])
            _emit({"n": len(res)})


def case_sweep_mem(a: argparse.Namespace) -> None:
    from mpi4py import MPI

    import mpigather

    root = MPI.COMM_WORLD.Get_rank() == 0
    tasks = (json.loads(line) for line in open(a.tasks)) if root else []
    s = mpigather.run(point, tasks, out=None, progress="off")
    if root:
        _emit({"n": s.done})


def case_tiny(a: argparse.Namespace) -> None:
    """20,000 calls of ``half``: throughput inside the process (tasks/s), without the start-up."""
    import numpy  # noqa: F401 - as a user's program has it (mpigather.run imports it, mpi4py.futures not)
    from mpi4py import MPI

    import mpigather
    from mpigather import api, executor  # noqa: F401 - imported before the clock starts

    comm, n = MPI.COMM_WORLD, a.count
    comm.Barrier()
    t0 = time.perf_counter()
    if a.method == "run":
        s = mpigather.run(half, range(n), out=None, progress="off")
        ok = s is None or s.done == n
    elif a.method == "exmap":
        with mpigather.executor() as ex:
            ok = ex is None or len(list(ex.map(half, range(n)))) == n
    else:
        from mpi4py.futures import MPICommExecutor

        with MPICommExecutor(comm, root=0) as ex:
            ok = ex is None or len(list(ex.map(half, range(n), chunksize=100))) == n
    dt = time.perf_counter() - t0
    if comm.Get_rank() == 0:
        assert ok
        _emit({"value": n / dt, "unit": "tasks/s"})


def case_latency(a: argparse.Namespace) -> None:
    """Median round trip of ``map(ident, range(16))`` or of ``submit(ident, 1).result()``, 300 times."""
    from mpi4py import MPI

    import mpigather

    if a.method == "mpigather":
        pool = mpigather.executor()
    else:
        from mpi4py.futures import MPICommExecutor

        pool = MPICommExecutor(MPI.COMM_WORLD, root=0)
    with pool as ex:
        if ex is not None:
            list(ex.map(ident, range(64)))
            times = []
            for _ in range(300):
                t = time.perf_counter()
                if a.what == "map16":
                    list(ex.map(ident, range(16)))
                else:
                    ex.submit(ident, 1).result()
                times.append(time.perf_counter() - t)
            _emit({"value": statistics.median(times) * 1e3, "unit": "ms"})


def case_client(a: argparse.Namespace) -> None:
    """emcee (seconds per step) or dynesty (seconds per run) through a pool, instant likelihood;
    prints a digest of the chain or evidence, so that pools can be compared for identity."""
    import hashlib
    import warnings

    import numpy as np
    from mpi4py import MPI

    import mpigather

    sys.path.insert(0, str(ROOT / "tests"))
    import samplers

    warnings.filterwarnings("ignore")
    if a.method == "mpigather":
        pool = mpigather.executor()
    else:
        from mpi4py.futures import MPICommExecutor

        pool = MPICommExecutor(MPI.COMM_WORLD, root=0)
    with pool as ex:
        if ex is not None:
            if a.method != "mpigather":
                ex.size = MPI.COMM_WORLD.Get_size() - 1  # dynesty sizes its queue by it
            t = time.perf_counter()
            got = samplers.SAMPLERS[a.what](ex)
            dt = time.perf_counter() - t
            per = dt / samplers.STEPS if a.what == "emcee" else dt
            digest = hashlib.sha256(np.ascontiguousarray(got).tobytes()).hexdigest()[:12]
            _emit({"value": per * 1e3, "unit": "ms", "digest": digest})


CASE_FUNCS = {"sweep_hand": case_sweep_hand, "sweep_mem": case_sweep_mem, "tiny": case_tiny,
              "latency": case_latency, "client": case_client}


# -- the driver ----------------------------------------------------------------------------------


def variants(quick: bool, tasks: Path, tmp: Path) -> list[dict[str, Any]]:
    """Every measurement: (case, variant, command, what is measured). ``wall``: the whole
    mpiexec command, as a user times it."""
    here = str(Path(__file__).resolve())
    n_tiny = 2000 if quick else 20000
    v: list[dict[str, Any]] = []
    h5 = str(tmp / "sweep.h5")
    v.append({"case": "sweep_h5", "variant": "mpigather", "label": "mpigather run --tasks F --out x.h5",
              "args": ["-m", "mpigather", "run", "bench_sweeps:point", "--tasks", str(tasks), "--out", h5,
                       "--progress", "off"], "wall": True, "file": h5})
    hh5 = str(tmp / "hand.h5")
    v.append({"case": "sweep_h5", "variant": "peer", "label": "MPICommExecutor.map(chunksize=100) + h5py",
              "args": [here, "case", "sweep_hand", "--tasks", str(tasks), "--out", hh5], "wall": True, "file": hh5})
    v.append({"case": "sweep_mem", "variant": "mpigather", "label": "mpigather.run(point, lines, out=None)",
              "args": [here, "case", "sweep_mem", "--tasks", str(tasks)], "wall": True})
    v.append({"case": "sweep_mem", "variant": "peer", "label": "MPICommExecutor.map(chunksize=100)",
              "args": [here, "case", "sweep_hand", "--tasks", str(tasks)], "wall": True})
    for m, label in [("run", "mpigather.run(f, range(n), out=None)"),
                     ("exmap", "mpigather.executor().map(f, range(n)), no chunksize"),
                     ("peer", "MPICommExecutor.map(chunksize=100)")]:
        v.append({"case": "tiny", "variant": m if m != "peer" else "peer", "label": label,
                  "args": [here, "case", "tiny", "--method", m, "--count", str(n_tiny)], "higher": True})
    for what in ("map16", "submit"):
        for m in ("mpigather", "peer"):
            v.append({"case": f"latency_{what}", "variant": m,
                      "label": ("mpigather.executor()" if m == "mpigather" else "MPICommExecutor")
                      + (": map of 16 tiny tasks" if what == "map16" else ": submit(f, x).result()"),
                      "args": [here, "case", "latency", "--method", m, "--what", what]})
    for what in ("emcee", "dynesty"):
        for m in ("mpigather", "peer"):
            v.append({"case": what, "variant": m,
                      "label": ("mpigather.executor()" if m == "mpigather" else "MPICommExecutor")
                      + (": emcee, ms per step (32 walkers)" if what == "emcee"
                         else ": dynesty, ms per run (300 iterations)"),
                      "args": [here, "case", "client", "--method", m, "--what", what]})
    return v


def run_one(v: dict[str, Any], timeout: float) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "scripts"), str(ROOT), env.get("PYTHONPATH", "")])
    for f in (v.get("file"),):
        if f:
            for p in (f, f + ".journal"):
                Path(p).unlink(missing_ok=True)
    mpiexec = str(Path(sys.executable).parent / "mpiexec")
    cmd = [mpiexec, "-n", "3", sys.executable, *v["args"]]
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(ROOT))
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    wall = time.perf_counter() - t
    if p.returncode != 0:
        return {"error": f"exit {p.returncode}: {p.stderr.strip()[-300:]}"}
    rec: dict[str, Any] = {}
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            rec = json.loads(line[7:])
    if v.get("wall"):
        rec.update(value=wall, unit="s")
    if v.get("file"):
        rec["file_mb"] = Path(v["file"]).stat().st_size / 1e6
    if "value" not in rec:
        return {"error": "no result printed: " + p.stdout[-300:] + p.stderr[-300:]}
    return rec


def spread(vals: list[float]) -> dict[str, float]:
    return {"first": vals[0], "fastest": min(vals), "median": statistics.median(vals), "slowest": max(vals)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd")
    c = sub.add_parser("case")
    c.add_argument("name", choices=sorted(CASE_FUNCS))
    c.add_argument("--tasks")
    c.add_argument("--out")
    c.add_argument("--method", default="mpigather")
    c.add_argument("--what", default="")
    c.add_argument("--count", type=int, default=20000)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--sweep-size", type=int, help="JSONL lines of the sweep cases (default 200,000; --quick 20,000);"
                    " another size writes SWEEPS-<size>.md")
    ap.add_argument("--only", action="append", help="a case name (sweep_h5, sweep_mem, tiny, latency_map16,"
                    " latency_submit, emcee, dynesty); repeatable")
    a = ap.parse_args(argv)
    if a.cmd == "case":
        CASE_FUNCS[a.name](a)
        return 0
    rounds = a.rounds or (2 if a.quick else 5)
    n_sweep = a.sweep_size or (20_000 if a.quick else 200_000)
    outdir = ROOT / "bench" / ("raw/quick" if a.quick else "")
    outdir.mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "raw").mkdir(parents=True, exist_ok=True)
    tasks = write_tasks(ROOT / "bench" / "raw" / f"sweep-{n_sweep}.jsonl", n_sweep)
    with tempfile.TemporaryDirectory(prefix="bench-sweeps-") as td:
        vs = [v for v in variants(a.quick, tasks, Path(td)) if not a.only or v["case"] in a.only]
        results: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in range(rounds):
            for v in vs:
                rec = run_one(v, 300)
                results.setdefault((v["case"], v["variant"]), []).append(rec)
                shown = rec.get("error") or f"{rec['value']:.4g} {rec['unit']}"
                print(f"round {r + 1}/{rounds}  {v['case']:15s} {v['variant']:10s} {shown}", flush=True)
    name = "SWEEPS" if not a.sweep_size or a.sweep_size == (20_000 if a.quick else 200_000) else f"SWEEPS-{n_sweep}"
    return report(vs, results, rounds, n_sweep, outdir, name)


def report(vs: list[dict[str, Any]], results: dict[tuple[str, str], list[dict[str, Any]]], rounds: int,
           n_sweep: int, outdir: Path, name: str = "SWEEPS") -> int:
    rows, raw = [], {}
    cases = list(dict.fromkeys(v["case"] for v in vs))
    for case in cases:
        mine = [v for v in vs if v["case"] == case]
        peer = next((v for v in mine if v["variant"] == "peer"), None)
        peer_recs = [x for x in results.get((case, "peer"), []) if "error" not in x]
        for v in mine:
            recs = results.get((case, v["variant"]), [])
            ok = [x for x in recs if "error" not in x]
            raw[f"{case}/{v['variant']}"] = recs
            if not ok:
                rows.append(f"| {case} | {v['label']} | failed: {recs[0]['error'] if recs else 'not run'} | | |")
                continue
            s = spread([x["value"] for x in ok])
            unit = ok[0]["unit"]
            higher = v.get("higher", False)
            ratio = ""
            if peer is not None and v is not peer and peer_recs:
                pm = statistics.median(x["value"] for x in peer_recs)
                r = s["median"] / pm if higher else pm / s["median"]
                ratio = f"{r:.2f}x"
            extra = ""
            if "file_mb" in ok[0]:
                extra = f"; file {ok[0]['file_mb']:.1f} MB"
            digests = {x.get("digest") for x in ok if x.get("digest")}
            if digests:
                extra += f"; digest {', '.join(sorted(digests))}"
            fmt = (lambda x: f"{x:,.0f}") if unit == "tasks/s" else (lambda x: f"{x:.3g}")
            rows.append(f"| {case} | {v['label']} | {fmt(s['median'])} {unit} | {fmt(s['fastest'])} / "
                        f"{fmt(s['slowest'])} / {fmt(s['first'])} | {ratio}{extra} |")
    md = [
        "# Sweeps, tiny tasks and the executor, side by side (scripts/bench_sweeps.py)",
        "",
        f"`mpiexec -n 3` (2 workers); {rounds} interleaved rounds; the sweep has {n_sweep:,} JSONL lines and"
        " the tiny case 20,000 calls. Ratio: the peer's median over ours for times, ours over the"
        " peer's for rates (above 1: mpigather is faster). Sweep times are whole mpiexec commands.",
        "",
        "| case | variant | median | fastest / slowest / first | ratio to the peer |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ]
    (outdir / f"{name}.md").write_text("\n".join(md))
    (outdir / f"{name.lower()}.json").write_text(json.dumps(raw, indent=1))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
