"""The examples in README.md and docs/*.md run, so that they cannot drift from the code.

Every fenced block runs, in order, in one scratch directory per document: a ``python`` block
whose first line is ``# name.py`` is written as that module; other ``python`` blocks run under
``mpiexec -n 3``; ``sh``/``bash`` blocks run with bash (``set -e``), with the project's venv first
on PATH. A block preceded by ``<!-- docs-test: skip (why) -->`` is not run, and must say why;
``text``, ``json`` and unlabelled blocks are output, not examples (docs/status.md's JSON is
checked against the real ``status --json`` instead).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, env, mpirun, show

pytestmark = pytest.mark.mpi

FENCE = re.compile(r"(?:<!-- docs-test: skip \((?P<why>[^)]*)\) -->\n)?```(?P<lang>[a-z]*)\n(?P<code>.*?)```", re.S)
DOCS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]


def blocks(doc: str) -> list[tuple[str, str, str | None]]:
    text = (ROOT / doc).read_text()
    return [(m["lang"], m["code"], m["why"]) for m in FENCE.finditer(text)]


@pytest.mark.parametrize("doc", DOCS)
def test_every_example_runs(doc, tmp_path):
    ran = 0
    e = env()
    e["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), e.get("PATH", "")])
    e["PYTHONPATH"] = os.pathsep.join([str(tmp_path), e.get("PYTHONPATH", "")])
    for i, (lang, code, why) in enumerate(blocks(doc)):
        if why is not None:
            assert why.strip(), f"{doc}: block {i} is skipped without a reason"
            continue
        if lang == "python":
            first = code.splitlines()[0] if code.strip() else ""
            if re.fullmatch(r"# [\w/]+\.py", first):
                (tmp_path / first[2:]).write_text(code)
                continue
            script = tmp_path / f"example_{i}.py"
            script.write_text(code)
            p = mpirun(3, [str(script)], timeout=180, cwd=tmp_path, extra_env={"PYTHONPATH": e["PYTHONPATH"]})
        elif lang in ("sh", "bash"):
            p = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=tmp_path, env=e, capture_output=True,
                               text=True, timeout=300)
        else:
            continue
        assert p.returncode == 0, f"{doc}, block {i} ({lang}):\n{code}\n{show(p)}"
        ran += 1
    print(f"\n{doc}: {ran} example(s) ran")


def test_the_status_json_schema_in_the_docs_is_what_status_prints(tmp_path):
    doc = (ROOT / "docs" / "status.md").read_text()
    documented = json.loads(re.search(r"```json\n(.*?)```", doc, re.S).group(1))
    (tmp_path / "f.py").write_text("def f(i):\n    return i\n")
    p = mpirun(3, ["-m", "mpigather", "run", "f:f", "--range", "4", "--out", str(tmp_path / "o.h5"),
                   "--progress", "off"], timeout=60, cwd=tmp_path, extra_env={"PYTHONPATH": str(tmp_path)})
    assert p.returncode == 0, show(p)
    real = json.loads(subprocess.run([sys.executable, "-m", "mpigather", "status", str(tmp_path / "o.h5"), "--json"],
                                     capture_output=True, text=True, timeout=60, env=env()).stdout)
    assert set(real) == set(documented), f"status --json keys {sorted(set(real) ^ set(documented))} differ"
