"""`make bench` (part 3): reading a sweep's table back as an analyst does, side by side with h5py.

    python scripts/bench_readback.py                   # 200,000 points, 5 rounds
    python scripts/bench_readback.py --quick           # 20,000 points, 2 rounds
    python scripts/bench_readback.py --points 10000000 --rounds 1 --keep-files

Writes the sweep once with mpigather (``mpigather run bench_sweeps:point --tasks F --out x.h5``)
and once the way a hand-written program does (one h5py dataset per field), then reads each back,
every round in a fresh process (imports not counted, the page cache warm after the first round):

- ``columns()`` and ``to_pandas()`` of the mpigather file, with the task's parameters;
- h5py alone on the mpigather file, as docs/tables.md shows it;
- the hand-written file into a DataFrame with h5py and pandas (the peer).

Also reports the two files' sizes and the master's peak RSS while it wrote its file. Writes
``bench/READBACK.md`` and ``bench/readback.json`` (``--outdir`` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import bench_sweeps  # noqa: E402 - the sweep's task function and task file

READERS = {
    # name: (label, file, code timed after the imports)
    "columns": ("mpigather.load(out).columns()", "mg", "r = mpigather.load(path); c = r.columns(); r.close()"),
    "to_pandas": ("mpigather.load(out).to_pandas()", "mg", "r = mpigather.load(path); df = r.to_pandas(); r.close()"),
    "h5py_mg": ("h5py alone, every column of the mpigather file", "mg",
                "f = h5py.File(path, 'r'); c = {}\n"
                "f['table'].visititems(lambda n, o: c.update({n: o[:]}) if isinstance(o, h5py.Dataset) else None)\n"
                "f.close()"),
    "peer": ("h5py + pandas on the hand-written file (the peer)", "hand",
             "f = h5py.File(path, 'r'); df = pd.DataFrame({k: f[k][:] for k in f}); f.close()"),
}


def _timed(code: str, path: str) -> float:
    prog = ("import time, h5py, pandas as pd, mpigather\n"
            f"path = {path!r}\n"
            "t = time.perf_counter()\n"
            f"{code}\n"
            "print(time.perf_counter() - t)\n")
    p = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=900, cwd=str(ROOT))
    if p.returncode != 0:
        raise SystemExit(f"read-back failed: {p.stderr.strip()[-500:]}")
    return float(p.stdout.split()[-1])


def _write(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(seconds, peak RSS of the largest process in MiB) of one mpiexec command."""
    t = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd] if Path("/usr/bin/time").exists() else cmd,
                       capture_output=True, text=True, timeout=7200, env=env, cwd=str(ROOT))
    dt = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"writing failed: {p.stderr.strip()[-500:]}")
    last = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ""
    return dt, (int(last) / 1024 if last.isdigit() else float("nan"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="20,000 points, 2 rounds, into bench/raw/quick/")
    ap.add_argument("--points", type=int)
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--outdir")
    ap.add_argument("--keep-files", action="store_true", help="leave the two HDF5 files in bench/raw/")
    a = ap.parse_args(argv)
    a.points = a.points or (20_000 if a.quick else 200_000)
    a.rounds = a.rounds or (2 if a.quick else 5)
    a.outdir = a.outdir or str(ROOT / "bench" / ("raw/quick" if a.quick else ""))
    raw = ROOT / "bench" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    tasks = bench_sweeps.write_tasks(raw / f"sweep-{a.points}.jsonl", a.points)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "scripts"), str(ROOT), env.get("PYTHONPATH", "")])
    mpiexec = str(Path(sys.executable).parent / "mpiexec")
    with tempfile.TemporaryDirectory(prefix="bench-readback-", dir=str(raw) if a.keep_files else None) as td:
        files = {"mg": str(Path(td) / "sweep.h5"), "hand": str(Path(td) / "hand.h5")}
        write = {
            "mg": _write([mpiexec, "-n", "3", sys.executable, "-m", "mpigather", "run", "bench_sweeps:point",
                          "--tasks", str(tasks), "--out", files["mg"], "--progress", "off"], env),
            "hand": _write([mpiexec, "-n", "3", sys.executable, str(ROOT / "scripts" / "bench_sweeps.py"), "case",
                            "sweep_hand", "--tasks", str(tasks), "--out", files["hand"]], env),
        }
        sizes = {k: Path(f).stat().st_size for k, f in files.items()}
        times: dict[str, list[float]] = {k: [] for k in READERS}
        for r in range(a.rounds):
            for name, (_label, which, code) in READERS.items():
                times[name].append(_timed(code, files[which]))
                print(f"round {r + 1}/{a.rounds}  {name:10s} {times[name][-1]:.3f} s", flush=True)
        if a.keep_files:
            for k, f in files.items():
                os.replace(f, raw / f"readback-{a.points}-{k}.h5")
    return report(a, write, sizes, times)


def report(a: argparse.Namespace, write: dict[str, tuple[float, float]], sizes: dict[str, int],
           times: dict[str, list[float]]) -> int:
    peer = statistics.median(times["peer"])
    lines = [
        "# Reading a sweep's table back",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())} with `python scripts/bench_readback.py"
        f" --points {a.points} --rounds {a.rounds}`: {a.points:,} points of `bench_sweeps.point` (an id, two"
        " parameters, three result fields), written under `mpiexec -n 3`, read back in a fresh process each round"
        " (imports not counted). Ratio: the peer's median over this one's (above 1: faster than the peer).",
        "",
        "| writer | whole mpiexec command | peak RSS of the largest process | file | bytes per row |",
        "|---|---|---|---|---|",
    ]
    for k, label in (("mg", "mpigather run --tasks F --out x.h5"), ("hand", "MPICommExecutor.map + h5py")):
        dt, rss = write[k]
        lines.append(f"| {label} | {dt:.1f} s | {rss:.0f} MiB | {sizes[k] / 1e6:.1f} MB | {sizes[k] / a.points:.1f} |")
    lines += ["", "| read-back | first | fastest | median | slowest | ratio |", "|---|---|---|---|---|---|"]
    for name, (label, _which, _code) in READERS.items():
        v = times[name]
        m = statistics.median(v)
        lines.append(f"| {label} | {v[0]:.3f} s | {min(v):.3f} s | {m:.3f} s | {max(v):.3f} s |"
                     f" {'' if name == 'peer' else f'{peer / m:.2f}x'} |")
    out = Path(a.outdir)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "" if a.points == 200_000 else f"-{a.points}"
    (out / f"READBACK{suffix}.md").write_text("\n".join(lines) + "\n")
    (out / f"readback{suffix}.json").write_text(json.dumps(
        {"points": a.points, "rounds": a.rounds, "write": write, "sizes": sizes, "times": times}, indent=1) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
