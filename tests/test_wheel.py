"""The package as users install it: a wheel built from the checkout, in a fresh venv, with nothing
of the repository on the path. Every other test runs the checkout itself, so a file that the
wheel leaves out (a module, the batch templates) fails here and nowhere else.

The wheel is built from a copy of the files git knows (as a fresh clone would have them: no stale
``build/`` can fill a gap) with ``pip wheel --no-deps``, and installed with mpich and mpi4py (the
versions of the venv that runs the tests) into a venv made with ``python -m venv``; pip takes them
from its cache or the configured index. From a scratch folder, with PYTHONPATH unset and no folder
of the repository or of the test venv on PATH, the test then runs that venv's ``mpiexec -n 3
mpigather run``, ``status``, ``verify``, ``report`` and ``mpigather.load``, and checks that
``mpigather template slurm|pbs`` gives exactly the files that the batch tests run.

When the wheel or the venv cannot be built for a reason outside the project (no index, no
network) the test is skipped, saying why; under ``CI=true`` that fails instead (helpers.ci()).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from helpers import PBS_TEMPLATE, ROOT, SLURM_TEMPLATE, TAG, ci, communicate_or_fail

pytestmark = [pytest.mark.mpi, pytest.mark.slow]

# pip's words for "the network or the index is not there", as opposed to a build that failed; "no
# version found" counts only for what the test itself asks for (a dependency of the wheel that no
# index has, with the network there, is the project's fault)
OUTSIDE = re.compile(r"NewConnectionError|Failed to establish a new connection|Network is unreachable|"
                     r"Temporary failure in name resolution|Name or service not known|ConnectTimeout|"
                     r"ReadTimeout|Max retries exceeded|ProxyError|SSLError|Could not fetch URL|"
                     r"No space left on device|"
                     r"(Could not find a version that satisfies|No matching distribution found for)"
                     r" (the requirement )?(setuptools|mpich|mpi4py)\b")
PIP = ["--retries", "1", "--timeout", "30"]  # offline, fail in seconds rather than minutes

MOD = '''\
import numpy as np


def point(i):
    """Odd tasks return an array (stored whole), even ones a small record (a row of the table)."""
    if i % 2:
        return np.arange(1000 * i, dtype=np.float64) / 7
    return {"i": i, "half": i / 2, "tag": f"t{i}"}
'''
N = 12
CHECK = f'''\
import numpy as np, mpigather
print(mpigather.__file__)
with mpigather.load("out.h5") as res:
    assert sorted(res, key=int) == [str(i) for i in range({N})], list(res)
    for i in range({N}):
        got = res[str(i)]
        if i % 2:
            want = np.arange(1000 * i, dtype=np.float64) / 7
            assert got.dtype == want.dtype and np.array_equal(got, want), i
        else:
            assert got == {{"i": i, "half": i / 2, "tag": f"t{{i}}"}}, (i, got)
print("loaded", len(res))
'''


def unavailable(why: str, output: str = "") -> None:
    if ci():
        pytest.fail(f"CI=true, but the wheel test cannot run: {why}" + (f"\n{output[-3000:]}" if output else ""))
    print(output[-3000:])  # (shown with the test's output, e.g. pytest -rP)
    pytest.skip(f"the wheel test cannot run: {why}")


class Outside(Exception):
    """A build or install step failed for want of the index or the network."""


def step(what: str, cmd: list[str], timeout: float, cwd: Path) -> subprocess.CompletedProcess[str]:
    """A build or install step. A failure that pip blames on the index or the network raises
    Outside (the test skips; under CI=true it fails); any other failure is the project's, and fails."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    except subprocess.TimeoutExpired as e:
        raise Outside(f"{what} took more than {timeout:.0f} s (a slow or unreachable index?)", str(e.stderr)) from None
    if p.returncode != 0:
        out = p.stdout + p.stderr
        if m := OUTSIDE.search(out):
            line = next(x for x in out.splitlines() if m.group(0) in x).strip()
            raise Outside(f"{what} failed: {line[:300]}", f"{' '.join(cmd)}\n{out}")
        pytest.fail(f"{what} failed (exit {p.returncode}): {' '.join(cmd)}\n{out[-4000:]}")
    return p


def source_copy(dest: Path) -> Path:
    """The checkout's files as a fresh clone has them (tracked ones, and new ones not ignored)."""
    try:
        names = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others",
                                "--exclude-standard"], capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(".git", ".venv*", "build", "dist", "*.egg-info",
                                                                  "__pycache__", ".*_cache", ".hypothesis"))
        return dest
    for name in filter(None, names.decode().split("\0")):
        src = ROOT / name
        if src.is_file():  # (not one deleted since the last commit)
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def pinned(dist: str) -> str:
    try:
        return f"{dist}=={version(dist)}"
    except PackageNotFoundError:
        return dist


def build_and_install(tmp: Path) -> Path:
    """The wheel built from the checkout, installed in a new venv; returns that venv's bin folder."""
    src = source_copy(tmp / "src")
    wheels = tmp / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-w", str(wheels), *PIP]
    try:
        step("building the wheel", build, timeout=180, cwd=tmp)
    except Outside:
        # pip builds in a fresh environment with setuptools from the index; without an index, this
        # venv's setuptools will do if it is recent enough for pyproject.toml's build-system
        if not setuptools_suffices(src):
            raise
        step("building the wheel (--no-build-isolation)", [*build, "--no-build-isolation"], timeout=180, cwd=tmp)
    (wheel,) = wheels.glob("mpigather-*.whl")
    venv = tmp / "venv"
    py = venv / "bin" / "python"
    # pip of the test venv installs into the new one (pip >= 22.3: --python), which saves ensurepip
    own_pip = key(version("pip")) >= (22, 3)
    try:
        subprocess.run([sys.executable, "-m", "venv", *(["--without-pip"] if own_pip else []), str(venv)],
                       check=True, capture_output=True, timeout=120)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        raise Outside(f"python -m venv failed: {e}", str(e.stderr)) from None
    pip = [sys.executable, "-m", "pip", "--python", str(py)] if own_pip else [str(py), "-m", "pip"]
    step("installing the wheel, mpich and mpi4py", [*pip, "install", *PIP, str(wheel), pinned("mpich"),
                                                    pinned("mpi4py")], timeout=200, cwd=tmp)
    return venv / "bin"


def key(v: str) -> tuple[int, ...]:
    """A version's first three numbers, for comparing."""
    return tuple(int(x) for x in re.findall(r"\d+", v)[:3])


def setuptools_suffices(src: Path) -> bool:
    """Does this venv's setuptools meet pyproject.toml's ``setuptools>=X``?"""
    m = re.search(r'"setuptools>=([\d.]+)"', (src / "pyproject.toml").read_text())
    try:
        have = version("setuptools")
    except PackageNotFoundError:
        return False
    return m is not None and key(have) >= key(m.group(1))


def clean_env(bin_dir: Path) -> dict[str, str]:
    """The environment of a user who installed the wheel: its venv first on PATH, no PYTHONPATH,
    no folder of the repository or of the test venv on PATH, no MPIGATHER_ settings."""
    test_bin = Path(sys.executable).parent.resolve()

    def foreign(d: str) -> bool:
        p = Path(d).resolve()
        return p == test_bin or p == ROOT.resolve() or ROOT.resolve() in p.parents

    e = {k: v for k, v in os.environ.items()
         if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV") and (not k.startswith("MPIGATHER_") or k == TAG)}
    e["PATH"] = os.pathsep.join([str(bin_dir), *(d for d in os.environ.get("PATH", "").split(os.pathsep)
                                                 if d and not foreign(d))])
    e["VIRTUAL_ENV"] = str(bin_dir.parent)
    return e


def test_the_installed_wheel_runs_and_gives_the_templates(tmp_path):
    t0 = time.monotonic()
    try:
        bin_dir = build_and_install(tmp_path)
    except Outside as e:
        unavailable(*e.args)
    t_install = time.monotonic() - t0
    work = tmp_path / "work"
    work.mkdir()
    (work / "wheelmod.py").write_text(MOD)
    e = clean_env(bin_dir)

    def sh(*cmd: str, timeout: float = 60, text: bool = True) -> subprocess.CompletedProcess:
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=work, env=e, text=text,
                              start_new_session=True) as proc:
            out, err = communicate_or_fail(proc, timeout, f"timed out after {timeout} s: {' '.join(cmd)}")
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)

    def ok(*cmd: str, **kw: object) -> subprocess.CompletedProcess:
        p = sh(*cmd, **kw)  # type: ignore[arg-type]
        assert p.returncode == 0, f"{' '.join(cmd)}: exit {p.returncode}\n{p.stdout}\n{p.stderr}"
        return p

    # the venv's own mpigather, not the checkout's
    where = ok("python", "-c", "import mpigather, shutil; print(mpigather.__file__); print(shutil.which('mpigather'))")
    module, script = where.stdout.split()
    assert Path(module).is_relative_to(bin_dir.parent) and Path(script).parent == bin_dir, where.stdout
    # the PEP 561 marker: without it a user's type checker ignores the package's annotations
    assert (Path(module).parent / "py.typed").is_file(), "py.typed is missing from the wheel"

    ok(str(bin_dir / "mpiexec"), "-n", "3", "mpigather", "run", "wheelmod:point", "--range", str(N),
       "--out", "out.h5", "--progress", "off", timeout=120)
    status = json.loads(ok("mpigather", "status", "out.h5", "--json").stdout)
    assert status["state"] == "finished" and status["done"] == N, status
    assert "finished" in ok("mpigather", "status", "out.h5").stdout
    assert json.loads(ok("mpigather", "verify", "out.h5", "--json").stdout) == {"checked": N, "mismatched": [],
                                                                               "missing": []}
    ok("mpigather", "report", "out.h5")
    loaded = ok("python", "-c", CHECK)
    assert loaded.stdout.splitlines() == [module, f"loaded {N}"], loaded.stdout

    assert ok("mpigather", "template", "slurm", text=False).stdout == SLURM_TEMPLATE.read_bytes()
    assert ok("mpigather", "template", "pbs", text=False).stdout == PBS_TEMPLATE.read_bytes()
    print(f"\nwheel built and installed in {t_install:.1f} s; whole test {time.monotonic() - t0:.1f} s")
