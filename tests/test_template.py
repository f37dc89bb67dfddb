"""``mpigather template slurm|pbs``: the batch templates from the package, printed or written to a file.

What it gives is compared byte for byte with the files that tests/test_batch.py and
tests/test_slurm_real.py run; tests/test_wheel.py does the same from an installed wheel.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import PBS_TEMPLATE, SLURM_TEMPLATE, env

from mpigather.cli import main

FILES = {"slurm": SLURM_TEMPLATE, "pbs": PBS_TEMPLATE}


def cli(*args: str, cwd=None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "mpigather", *args], capture_output=True, timeout=60, env=env(),
                          cwd=cwd)


@pytest.mark.parametrize("name", FILES)
def test_prints_the_template_byte_for_byte(name):
    p = cli("template", name)
    assert p.returncode == 0, p.stderr.decode()
    assert p.stdout == FILES[name].read_bytes()
    assert p.stderr == b""  # stdout is the file: `mpigather template slurm > job.sbatch`


@pytest.mark.parametrize("name", FILES)
def test_the_templates_mark_the_lines_to_edit(name):
    text = FILES[name].read_text()
    edits = [line for line in text.splitlines() if "# EDIT" in line]
    assert len(edits) >= 10, edits
    for var in ("FUNC", "TASKS", "OUT", "OPTIONS", "MAX_RESUBMITS", "MPIGATHER"):
        assert any(line.startswith(f"{var}=") for line in edits), f"{name}: no EDIT line {var}=..."
    assert f"mpigather template {name} > " in text  # its header says how to get it


def test_out_writes_the_file_and_says_how_to_submit(tmp_path, capsys):
    out = tmp_path / "job.sbatch"
    assert main(["template", "slurm", "--out", str(out)]) == 0
    assert out.read_bytes() == SLURM_TEMPLATE.read_bytes()
    cap = capsys.readouterr()
    assert cap.out == ""
    assert f"sbatch {out}" in cap.err and "EDIT" in cap.err


def test_pbs_under_another_name_says_which_line_names_it(tmp_path, capsys):
    out = tmp_path / "job.pbs"
    assert main(["template", "pbs", "--out", str(out)]) == 0
    assert out.read_bytes() == PBS_TEMPLATE.read_bytes()
    err = capsys.readouterr().err
    assert "JOB_SCRIPT=job.pbs" in err and f"qsub {out}" in err


def test_an_existing_file_is_kept_unless_overwrite(tmp_path):
    out = tmp_path / "job.sbatch"
    out.write_text("my edited job\n")
    p = cli("template", "slurm", "--out", str(out))
    assert p.returncode == 2
    assert p.stderr.decode() == (f"mpigather: error: {out} exists; pass --overwrite to replace it,"
                                 " or choose another --out\n")
    assert out.read_text() == "my edited job\n"
    p = cli("template", "slurm", "--out", str(out), "--overwrite")
    assert p.returncode == 0, p.stderr.decode()
    assert out.read_bytes() == SLURM_TEMPLATE.read_bytes()


def test_unknown_template_is_a_usage_error():
    p = cli("template", "sge")
    assert p.returncode == 2 and p.stdout == b""
    err = p.stderr.decode()
    assert "invalid choice: 'sge' (choose from 'slurm', 'pbs')" in err, err


@pytest.mark.parametrize("args, message", [
    (["template"], "the following arguments are required: name"),
    (["template", "slurm", "--overwrite"], "--overwrite goes with --out FILE"),
    (["template", "slurm", "--out", "."], "--out . is a directory; name the file to write, e.g. ./slurm.sbatch"),
    (["template", "pbs", "--out", "no/such/dir/pbs.sh"], "cannot write no/such/dir/pbs.sh: No such file or directory"),
])
def test_bad_usage_exits_2_with_one_message(tmp_path, args, message):
    p = cli(*args, cwd=tmp_path)
    assert p.returncode == 2 and p.stdout == b""
    assert message in p.stderr.decode(), p.stderr.decode()
    assert list(tmp_path.iterdir()) == []


def test_help_lists_the_command():
    p = cli("--help")
    assert p.returncode == 0
    assert "template" in p.stdout.decode() and "batch job template" in p.stdout.decode()
