"""The Python API as a user sees it: every option in the signatures of ``run`` and ``executor``,
typed, documented and in step with ``Options`` and the command line's flags; docs/api.md
generated from the code; a caller's mistyped option flagged by mypy (the package ships py.typed).

Nothing here starts MPI in the test process: a bad option fails before MPI starts, and what
needs a run runs in a subprocess with a timeout.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import pydoc
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
from helpers import ROOT, env

import mpigather
from mpigather.api import NOT_FOR_RUN
from mpigather.cli import build_parser
from mpigather.config import OPTION_NAMES, Options, parse_size
from mpigather.executor_factory import NOT_FOR_EXECUTOR

EXECUTOR_OWN = {"initializer", "initargs"}  # the executor's arguments that are not options
# the command line's arguments that are not options of a run
CLI_ONLY = {"func", "tasks", "range", "out", "quiet", "log_level", "help"}
# Documented defaults that are not the repr of the default in ``Options``
SHOWN_AS = {"chunk_size": '``"64MiB"``', "timeout": ": no limit"}
EXECUTOR_DEFAULTS = {"max_failures": '``"none"``'}  # an executor never stops early: each future has its error


def keyword_only(func) -> list[str]:
    return [p.name for p in inspect.signature(func).parameters.values() if p.kind is p.KEYWORD_ONLY]


def cli_options() -> set[str]:
    """The run subcommand's flags, as option names (``--no-lock`` sets ``lock``)."""
    sub = next(a for a in build_parser()._actions if a.dest == "cmd")
    run = sub.choices["run"]
    names = set()
    for a in run._actions:
        name = a.dest
        if name.startswith("no_") and name[3:] in OPTION_NAMES:
            name = name[3:]
        names.add(name)
    return names


def sections(func) -> dict[str, dict[str, str]]:
    """A numpy-style docstring's field sections: {section: {name: its description, one line}}."""
    doc = inspect.getdoc(func) or ""
    out: dict[str, dict[str, str]] = {}
    for m in re.finditer(r"^(\w+)\n-{3,}\n(.*?)(?=^\w+\n-{3,}\n|\Z)", doc, re.S | re.M):
        entries: dict[str, str] = {}
        name = None
        for line in m.group(2).splitlines():
            if line and not line.startswith(" "):
                name = line.partition(" : ")[0].strip()
                entries[name] = ""
            elif name is not None and line.strip():
                entries[name] = (entries[name] + " " + line.strip()).strip()
        out[m.group(1)] = entries
    return out


# -- one source of truth ---------------------------------------------------------------------

def test_run_takes_every_option_but_those_it_says_it_lacks():
    assert set(NOT_FOR_RUN) <= set(OPTION_NAMES)
    assert keyword_only(mpigather.run) == [n for n in keyword_only(mpigather.run) if n in OPTION_NAMES]
    assert set(keyword_only(mpigather.run)) == set(OPTION_NAMES) - set(NOT_FOR_RUN)


def test_the_executor_takes_runs_options_but_those_it_says_it_lacks():
    run_opts = set(keyword_only(mpigather.run))
    assert set(NOT_FOR_EXECUTOR) <= run_opts
    assert set(keyword_only(mpigather.executor)) - EXECUTOR_OWN == run_opts - set(NOT_FOR_EXECUTOR)
    assert all(why.strip() for why in [*NOT_FOR_EXECUTOR.values(), *NOT_FOR_RUN.values()])


def test_the_command_line_has_a_flag_for_every_option():
    flags = cli_options()
    assert flags - CLI_ONLY == set(OPTION_NAMES) - {"interface"}, (
        f"options without a flag: {sorted(set(OPTION_NAMES) - {'interface'} - flags)}; "
        f"flags that are no option: {sorted(flags - CLI_ONLY - set(OPTION_NAMES))}")


def test_options_default_to_none_so_that_the_environment_still_applies():
    for func in (mpigather.run, mpigather.executor):
        for p in inspect.signature(func).parameters.values():
            if p.name in OPTION_NAMES:
                assert p.kind is p.KEYWORD_ONLY and p.default is None, (func.__name__, p.name)


def _documented_default(name: str, default: object) -> str:
    if name in SHOWN_AS:
        return SHOWN_AS[name]
    return f'``"{default}"``' if isinstance(default, str) else f" {default!r}"


def test_the_documented_defaults_are_the_options_defaults():
    assert parse_size("64MiB") == Options.chunk_size and Options.timeout is None  # SHOWN_AS is right
    defaults = {f.name: f.default for f in dataclasses.fields(Options)}
    for func, special in ((mpigather.run, {}), (mpigather.executor, EXECUTOR_DEFAULTS)):
        params = sections(func)["Parameters"]
        for name in keyword_only(func):
            if name not in OPTION_NAMES:
                continue
            want = special.get(name) or _documented_default(name, defaults[name])
            want = want if want.startswith(":") else " " + want.strip()
            assert re.search(rf"Default{re.escape(want)}(\.| \(|:)", params[name]), (
                f"{func.__name__}({name}=...): the docstring should say 'Default{want}', it says: {params[name]}")


def test_every_parameter_is_documented_once_and_the_executors_options_as_runs():
    for func in (mpigather.run, mpigather.executor, mpigather.load):
        names = [p.name for p in inspect.signature(func).parameters.values() if p.name != "self"]
        documented = sections(func)["Parameters"]
        assert list(documented) == names, func.__name__
        assert all(len(text) > 10 for text in documented.values()), func.__name__
        assert {"Returns", "Raises", "Examples"} <= set(re.findall(r"^(\w+)\n-{3,}$", inspect.getdoc(func), re.M))
    run_doc, ex_doc = sections(mpigather.run)["Parameters"], sections(mpigather.executor)["Parameters"]
    for name in set(keyword_only(mpigather.executor)) - EXECUTOR_OWN - set(EXECUTOR_DEFAULTS) - {"timeout"}:
        assert ex_doc[name] == run_doc[name], name


def test_summary_and_results_document_every_attribute(tmp_path):
    documented = sections(mpigather.Summary)["Attributes"]
    assert list(documented) == [f.name for f in dataclasses.fields(mpigather.Summary)]
    assert inspect.getdoc(mpigather.Summary.exit_code) and inspect.getdoc(mpigather.Summary.text)
    (tmp_path / "out").mkdir()
    res = mpigather.load(tmp_path / "out")
    public = [n for n in vars(res) if not n.startswith("_")]
    assert sorted(sections(mpigather.Results)["Attributes"]) == sorted(public)
    for name, member in vars(mpigather.Results).items():
        if not name.startswith("_") and callable(member):
            assert inspect.getdoc(member), f"Results.{name} has no docstring"
    sig = inspect.signature(mpigather.load)
    assert list(sig.parameters) == ["out", "allow_pickle"]


def test_help_shows_every_option():
    for func in (mpigather.run, mpigather.executor):
        text = pydoc.render_doc(func, renderer=pydoc.plaintext)  # what help() shows
        for name in keyword_only(func):
            assert f"{name}: " in text and f"{name} : " in text, (func.__name__, name)


# -- wrong options fail at once, before MPI starts --------------------------------------------

def test_a_misspelt_option_is_a_type_error_naming_it():
    with pytest.raises(TypeError, match="retris"):
        mpigather.run(abs, [1], retris=2)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="retris"):
        mpigather.executor(retris=2)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="resume"):
        mpigather.executor(resume=True)  # type: ignore[call-arg]


BAD_VALUES = r"""
import sys, mpigather
for call in (lambda: mpigather.run(abs, [1], mode="fast"), lambda: mpigather.executor(retries=-1)):
    try:
        call()
    except mpigather.UsageError as e:
        print(e)
print("mpi4py.MPI" in sys.modules)
"""


def test_a_bad_option_value_is_a_usage_error_before_mpi_starts():
    p = subprocess.run([sys.executable, "-c", BAD_VALUES], capture_output=True, text=True, timeout=60, env=env())
    assert p.stdout.splitlines() == ["mode must be 'stream' or 'direct', not 'fast'",
                                     "retries must be at least 0, not -1", "False"], p.stdout + p.stderr


ENV_SCRIPT = r"""
import json, sys
import mpigather, mpigather.api as api, mpigather.executor_factory as fac
from mpigather.config import make_options
seen = {}
def spy(where):
    def make(**given):
        seen[where] = vars(make_options(**given))
        return make_options(**given)
    return make
api.make_options, fac.make_options = spy("run"), spy("executor")
mpigather.run(abs, [1], prefetch=1, progress="off")
with mpigather.executor(prefetch=1, progress="off") as ex:
    ex.submit(abs, 1).result(timeout=60)
print(json.dumps(seen))
"""


def test_an_option_left_unset_comes_from_the_environment_and_an_explicit_one_wins():
    e = {**env(), "MPIGATHER_RETRIES": "3", "MPIGATHER_PREFETCH": "5", "MPIGATHER_MAX_FAILURES": "7",
         "MPIGATHER_CHUNK_SIZE": "1MiB"}
    p = subprocess.run([sys.executable, "-c", ENV_SCRIPT], capture_output=True, text=True, timeout=120, env=e)
    assert p.returncode == 0, p.stderr
    seen = json.loads(p.stdout.strip().splitlines()[-1])
    for where in ("run", "executor"):
        assert seen[where]["retries"] == 3 and seen[where]["chunk_size"] == 1 << 20, where  # from the environment
        assert seen[where]["prefetch"] == 1, where  # explicit wins
        assert seen[where]["heartbeat"] == 5.0, where  # the default
    assert seen["run"]["max_failures"] == "7"
    assert seen["executor"]["max_failures"] == "none"  # the executor's own default, as before


# -- typed for the caller's type checker -----------------------------------------------------

CALLER_GOOD = """
import mpigather

def f(x: int) -> int:
    return x

s = mpigather.run(f, range(4), retries=2, chunk_size="16MiB", mode="direct", out="x.h5", timeout=None)
if s is not None:
    n: int = s.done + s.exit_code
with mpigather.executor(retries=1, max_failures="5%") as ex:
    pass
r: mpigather.Results = mpigather.load("x.h5", allow_pickle=True)
"""
CALLER_BAD = """
import mpigather

mpigather.run(abs, [1], retries="2")
mpigather.run(abs, [1], retris=2)
mpigather.run(abs, [1], mode="fast")
mpigather.executor(resume=True)
s = mpigather.run(abs, [1])
s.done
"""


def _mypy(tmp_path, where, *files):
    """mypy as a user's project runs it: from its own directory, the package found on the path
    as an installed package (which mypy uses only when it has a py.typed marker)."""
    cmd = [sys.executable, "-m", "mypy", "--no-error-summary", "--cache-dir", str(ROOT / "build" / "mypy-caller"),
           "--python-executable", sys.executable, *files]
    e = {**env(), "PYTHONPATH": str(where)}
    e.pop("MYPYPATH", None)
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=e)


def test_a_callers_mistyped_option_is_flagged_by_mypy(tmp_path):
    pytest.importorskip("mypy")
    (tmp_path / "good.py").write_text(textwrap.dedent(CALLER_GOOD))
    (tmp_path / "bad.py").write_text(textwrap.dedent(CALLER_BAD))
    p = _mypy(tmp_path, ROOT, "good.py", "bad.py")
    errors = [line for line in p.stdout.splitlines() if ": error:" in line]
    assert not [e for e in errors if e.startswith("good.py")], p.stdout + p.stderr
    bad = {int(e.split(":")[1]): e for e in errors if e.startswith("bad.py")}
    assert sorted(bad) == [4, 5, 6, 7, 9], p.stdout + p.stderr
    assert '"retries"' in bad[4] and "int | None" in bad[4]
    assert '"retris"' in bad[5]
    assert '"mode"' in bad[6]
    assert '"resume"' in bad[7]
    assert '"Summary | None"' in bad[9] or "None" in bad[9]  # s may be None on a worker
    assert "py.typed" not in p.stdout


def test_without_py_typed_mypy_would_not_use_the_packages_types(tmp_path):
    """The marker is what makes the installed package typed: a copy without it is not used."""
    pytest.importorskip("mypy")
    assert (ROOT / "mpigather" / "py.typed").exists()
    site = tmp_path / "site"
    shutil.copytree(ROOT / "mpigather", site / "mpigather", ignore=shutil.ignore_patterns("py.typed", "__pycache__"))
    (tmp_path / "bad.py").write_text(textwrap.dedent(CALLER_BAD))
    p = _mypy(tmp_path, site, "bad.py")
    assert "missing library stubs or py.typed marker" in p.stdout, p.stdout + p.stderr


def test_py_typed_is_package_data():
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[tool.setuptools.package-data]", 1)[1].split("\n[", 1)[0]
    assert re.search(r'^mpigather = \[[^\]]*"py\.typed"', section, re.M), section


# -- docs/api.md -----------------------------------------------------------------------------

def test_docs_api_md_is_what_the_code_says():
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_api_docs.py"), "--check"],
                       capture_output=True, text=True, timeout=120, env=env())
    assert p.returncode == 0, p.stderr + "\n(regenerate it: python scripts/gen_api_docs.py)"
    text = (ROOT / "docs" / "api.md").read_text()
    for name in mpigather.__all__:
        assert f"### `{name}`" in text, name
    for name in keyword_only(mpigather.run):
        assert f"- `{name}` (" in text, name
