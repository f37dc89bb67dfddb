"""Bad input: exit status 2, one clear message printed once (not once per rank), never a hang."""

from __future__ import annotations

import pytest
from helpers import gather, show

import mpigather

pytestmark = pytest.mark.mpi

ERR = "mpigather: error:"


def one_error(p, *needles: str) -> None:
    assert p.returncode == 2, show(p)
    text = p.stdout + p.stderr
    assert text.count(ERR) == 1, show(p)
    for n in needles:
        assert n in text, f"{n!r} not in output\n{show(p)}"


@pytest.mark.parametrize("ranks", [1, 3])
def test_missing_module(tmp_path, ranks):
    one_error(gather(ranks, "no_such_module_xyz:f", tmp_path / "o.h5", "--range", "3", timeout=60),
              "no module named 'no_such_module_xyz'")


def test_missing_function(tmp_path):
    one_error(gather(3, "taskfuncs:nope", tmp_path / "o.h5", "--range", "3", timeout=60),
              "has no attribute 'nope'")


def test_missing_task_file(tmp_path):
    one_error(gather(3, "taskfuncs:every_type", tmp_path / "o.h5", "--tasks", str(tmp_path / "none.jsonl"),
                     timeout=60), "none.jsonl does not exist")


def test_invalid_task_file_line(tmp_path):
    t = tmp_path / "t.jsonl"
    t.write_text('{"id": 1}\n{"id": 2}\n{"id": 3,\n')
    one_error(gather(3, "taskfuncs:every_type", tmp_path / "o.h5", "--tasks", str(t), timeout=60),
              "line 3: invalid JSON")


def test_duplicate_ids(tmp_path):
    t = tmp_path / "t.jsonl"
    t.write_text('{"id": "a"}\n{"id": "b"}\n{"id": "a"}\n')
    one_error(gather(3, "taskfuncs:every_type", tmp_path / "o.h5", "--tasks", str(t), timeout=60),
              "line 3: duplicate task id 'a'")


@pytest.mark.parametrize("last,needle", [('{"id": "x", "seed": ', "invalid JSON"),
                                         ('{"id": "run-7", "seed": 7}', "duplicate task id 'run-7' (also on line 8)")])
def test_a_bad_line_late_in_a_long_task_file(tmp_path, last, needle):
    """Past the lines checked before the run starts: found before or while the first tasks run
    (the file is checked as they do, and may be done by then), the message and exit status are
    those of a bad line at the start."""
    from mpigather.tasks.jsonl import STREAM_AFTER

    t, n = tmp_path / "t.jsonl", STREAM_AFTER + 20_000
    t.write_text("".join(f'{{"id": "run-{i}", "seed": {i}}}\n' for i in range(n)) + last + "\n")
    one_error(gather(3, "quickfuncs:seed_value", tmp_path / "o.h5", "--tasks", str(t), timeout=120),
              f"line {n + 1}: {needle}")


def test_negative_range(tmp_path):
    one_error(gather(3, "taskfuncs:every_type", tmp_path / "o.h5", "--range", "-4", timeout=60),
              "--range must be 0 or more, not -4")


@pytest.mark.parametrize("size", ["0", "lots", "-5MiB", "3GiB"])
def test_bad_chunk_size(tmp_path, size):
    one_error(gather(3, "taskfuncs:every_type", tmp_path / "o.h5", "--range", "3", f"--chunk-size={size}",
                     timeout=60), "chunk size")


def test_unwritable_output(tmp_path):
    one_error(gather(3, "taskfuncs:every_type", tmp_path / "no" / "such" / "o.h5", "--range", "3", timeout=60),
              "does not exist")


def test_existing_output_needs_resume_or_overwrite(tmp_path):
    out = tmp_path / "o.h5"
    p = gather(2, "taskfuncs:every_type", out, "--range", "3", timeout=60)
    assert p.returncode == 0, show(p)
    before = out.read_bytes()
    one_error(gather(3, "taskfuncs:every_type", out, "--range", "3", timeout=60), "--resume", "--overwrite")
    assert out.read_bytes() == before  # untouched
    p = gather(3, "taskfuncs:every_type", out, "--range", "3", "--overwrite", timeout=60)
    assert p.returncode == 0, show(p)


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_an_unpicklable_result_fails_its_task_only(tmp_path, ranks):
    out = tmp_path / "o.h5"
    p = gather(ranks, "taskfuncs:unsupported", out, "--range", "6", timeout=60)
    assert p.returncode == 1, show(p)
    assert "5 done, 1 failed" in p.stdout and "FAILED 3" in p.stdout and "_thread.lock" in p.stdout, show(p)
    with mpigather.load(out, allow_pickle=True) as res:
        assert [res[str(i)] for i in (0, 1, 2, 4, 5)] == [[i, "x"] for i in (0, 1, 2, 4, 5)]


def test_usage_error_from_argparse(tmp_path):
    p = gather(3, "taskfuncs:every_type", tmp_path / "o.h5", timeout=60)  # neither --tasks nor --range
    assert p.returncode == 2, show(p)
    assert p.stderr.count("error:") == 1, show(p)
