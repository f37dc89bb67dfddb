"""Write docs/api.md from the public names' signatures and docstrings (numpy style).

    python scripts/gen_api_docs.py            # rewrite docs/api.md
    python scripts/gen_api_docs.py --check    # exit 1 if docs/api.md differs from the code

tests/test_api.py runs the check, so the page cannot drift from the code: after changing a
public signature or docstring, run this script and commit docs/api.md with the change.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import mpigather  # noqa: E402

API_MD = ROOT / "docs" / "api.md"

# Classes that mpigather makes and hands to you: shown without their constructor
MADE_FOR_YOU = {"Summary", "GatherExecutor", "WorkerInfo", "NextStep"}

# The page's sections, in the order a user meets the names; together exactly ``mpigather.__all__``
GROUPS: list[tuple[str, list[str]]] = [
    ("Running tasks", ["run", "Summary", "INTERRUPTED", "executor", "GatherExecutor"]),
    ("Inside a task", ["current_worker", "WorkerInfo", "next_step", "NextStep"]),
    ("Reading results", ["load", "Results", "verify"]),
    ("Errors", ["MPIGatherError", "UsageError", "ChecksumError", "MasterFailed", "RemoteTaskError",
                "UnsupportedResultError"]),
    ("Version", ["__version__"]),
]

INTRO = """\
# Python API

Every public name of the `mpigather` package, with its signature and what it does. The same
text is what `help(mpigather.run)` (or any other name) shows, and what an editor shows when it
completes a call: the options are keyword arguments with types, so a type checker such as mypy
flags a misspelt option or a value of the wrong type in your code.

Options left at None are "not given": each then takes the value of its environment variable
`MPIGATHER_<NAME>` when it is set (for example `MPIGATHER_CHUNK_SIZE=16MiB`), else the default
that its entry gives. An explicit argument always wins. The command line takes the same options
as flags (`--chunk-size 16MiB`); see the options table in [README.md](../README.md#options).

The package ships its type hints (a `py.typed` marker), so mypy checks your calls against them
once mpigather is installed. An editable install (`pip install -e`) puts the package on the path
through an import hook that mypy does not follow: run mypy with `PYTHONPATH` set to the
directory that holds the `mpigather` package.

This page is generated from the code by `python scripts/gen_api_docs.py`.
"""

SECTION = re.compile(r"^-{3,}$")
FIELD_SECTIONS = {"Parameters", "Attributes", "Returns", "Raises"}


def md(text: str) -> str:
    """reStructuredText literals (``x``) as Markdown code (`x`)."""
    return text.replace("``", "`")


def _blocks(lines: list[str]) -> list[str]:
    """Free text: paragraphs as they are; an indented block after a line ending in ``::`` as
    Python (an example: docs tests run it), another indented block as text."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("    "):
            block = []
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                block.append(lines[i][4:])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            prev = next((x for x in reversed(out) if x.strip()), "")
            lang = "python" if prev.endswith("::") else "text"
            if prev.endswith("::"):
                j = max(k for k, x in enumerate(out) if x.strip())
                out[j] = out[j][:-2].rstrip() + (":" if out[j][:-2].strip() else "")
                if not out[j].strip():
                    del out[j]
            out += [f"```{lang}", *block, "```"]
            continue
        out.append(md(line))
        i += 1
    return out


def _fields(name: str, lines: list[str]) -> list[str]:
    """A Parameters/Attributes/Returns/Raises section as a list, one item per entry."""
    items: list[tuple[str, list[str]]] = []
    for line in lines:
        if not line.strip():
            continue
        if not line.startswith(" "):
            items.append((line.strip(), []))
        elif items:
            items[-1][1].append(line.strip())
    out = [f"**{name}**", ""]
    for head, desc in items:
        what, _, kind = head.partition(" : ")
        text = md(" ".join(desc))
        if name in ("Parameters", "Attributes"):
            out.append(f"- `{what}` ({md(kind)}): {text}" if kind else f"- `{what}`: {text}")
        else:
            out.append(f"- `{md(head)}`: {text}")
    return out


def docstring(obj: Any) -> list[str]:
    """A numpy-style docstring as Markdown lines."""
    lines = (inspect.getdoc(obj) or "").splitlines()
    parts: list[tuple[str | None, list[str]]] = [(None, [])]
    i = 0
    while i < len(lines):
        if i + 1 < len(lines) and SECTION.match(lines[i + 1].strip()) and lines[i].strip():
            parts.append((lines[i].strip(), []))
            i += 2
            continue
        parts[-1][1].append(lines[i])
        i += 1
    out: list[str] = []
    for name, body in parts:
        while body and not body[-1].strip():
            body.pop()
        if name is None:
            out += _blocks(body)
        elif name in FIELD_SECTIONS:
            out += ["", *_fields(name, body)]
        else:
            out += ["", f"**{name}**", "", *_blocks(body)]
    return out


def _annotation(a: Any) -> str:
    if isinstance(a, str):
        return a
    return getattr(a, "__forward_arg__", None) or inspect.formatannotation(a)


def signature(name: str, obj: Any) -> str:
    """``name(...)``, one parameter a line when it does not fit on one."""
    sig = inspect.signature(obj)
    params = []
    star = False
    last_positional_only = next((p.name for p in reversed(sig.parameters.values())
                                 if p.kind is p.POSITIONAL_ONLY), None)
    for p in sig.parameters.values():
        if p.name == "self":
            continue
        if p.kind is p.KEYWORD_ONLY and not star:
            params.append("*")
            star = True
        text = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "") + p.name
        if p.kind is p.VAR_POSITIONAL:
            star = True
        if p.annotation is not p.empty:
            text += f": {_annotation(p.annotation)}"
        if p.default is not p.empty:
            text += f" = {p.default!r}" if p.annotation is not p.empty else f"={p.default!r}"
        params.append(text)
        if p.kind is p.POSITIONAL_ONLY and p.name == last_positional_only:
            params.append("/")
    ret = "" if sig.return_annotation is sig.empty else f" -> {_annotation(sig.return_annotation)}"
    one = f"{name}({', '.join(params)}){ret}"
    if len(one) <= 96:
        return one
    return f"{name}(\n" + "".join(f"    {p},\n" for p in params) + f"){ret}"


def _members(cls: type) -> list[tuple[str, Any]]:
    """The public methods and properties a class defines itself."""
    out = []
    for n, v in vars(cls).items():
        if n.startswith("_"):
            continue
        if isinstance(v, property) or inspect.isfunction(v):
            out.append((n, v))
    return out


def _constant(name: str, value: Any) -> list[str]:
    """A constant: its value, and the comment on the line that defines it."""
    module = sys.modules[f"mpigather.{mpigather._WHERE[name]}"]
    src = inspect.getsource(module)
    m = re.search(rf"^{re.escape(name)}\s*=.*?#\s*(.*)$", src, re.M)
    what = m.group(1) if m else "the version of the installed package"
    return ["```text", f"mpigather.{name} = {value!r}", "```", "", md(what[0].upper() + what[1:]) + "."]


def entry(name: str) -> list[str]:
    obj = getattr(mpigather, name)
    out = [f"### `{name}`", ""]
    if not callable(obj):
        return out + _constant(name, obj)
    if inspect.isclass(obj) and issubclass(obj, BaseException):
        base = next(b for b in obj.__mro__[1:] if b.__module__ != "builtins" or b is Exception)
        bname = f"mpigather.{base.__name__}" if base.__module__.startswith("mpigather") else base.__name__
        return out + ["```text", f"class mpigather.{name}({bname})", "```", "", *docstring(obj)]
    if inspect.isclass(obj):
        title = name if name == "executor" else f"class mpigather.{name}"
        sig = title if name in MADE_FOR_YOU else signature(f"mpigather.{name}" if name == "executor" else title, obj)
        out += ["```text", sig, "```", "", *docstring(obj)]
        for mname, member in _members(obj):
            out += ["", f"#### `{name}.{mname}`", ""]
            if isinstance(member, property):
                out += ["(property)", "", *docstring(member)]
            else:
                out += ["```text", signature(mname, member), "```", "", *docstring(member)]
        return out
    return out + ["```text", signature(f"mpigather.{name}", obj), "```", "", *docstring(obj)]


def render() -> str:
    named = [n for _, names in GROUPS for n in names]
    if sorted(named) != sorted(mpigather.__all__):
        raise SystemExit(f"GROUPS in {__file__} and mpigather.__all__ differ: "
                         f"{sorted(set(named) ^ set(mpigather.__all__))}")
    lines = [INTRO]
    for title, names in GROUPS:
        lines += [f"## {title}", ""]
        for n in names:
            lines += [*entry(n), ""]
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/api.md differs from the code")
    a = ap.parse_args(argv)
    text = render()
    if a.check:
        if not API_MD.exists() or API_MD.read_text() != text:
            print(f"{API_MD} is out of date: run python scripts/gen_api_docs.py", file=sys.stderr)
            return 1
        return 0
    API_MD.write_text(text)
    print(f"wrote {API_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
