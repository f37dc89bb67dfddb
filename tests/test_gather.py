"""Gathering under mpiexec: every result type, both modes, both file sinks, 1-3 ranks,
chunk sizes that do and do not divide the results; compared bit for bit."""

from __future__ import annotations

import json

import pytest
from compare import check_all
from helpers import done_ids, gather, show
from taskfuncs import KINDS, every_type, out_of_order, sized, value

import mpigather

pytestmark = [pytest.mark.mpi, pytest.mark.matrix]

N = 2 * len(KINDS)


@pytest.mark.parametrize("ranks", [1, 2, 3])
@pytest.mark.parametrize("mode", ["stream", "direct"])
@pytest.mark.parametrize("sink", ["h5", "dir"])
def test_every_type_bit_for_bit(tmp_path, ranks, mode, sink):
    out = tmp_path / ("out.h5" if sink == "h5" else "outdir")
    p = gather(ranks, "taskfuncs:every_type", out, "--range", str(N), "--mode", mode, "--chunk-size", "1MiB")
    assert p.returncode == 0, show(p)
    with mpigather.load(out) as res:
        assert len(res) == N
        assert check_all(res, every_type, range(N)) == []
    assert f"{N} done, 0 failed" in p.stdout


@pytest.mark.parametrize("chunk", ["1MiB", "1000000", "4096", "64MiB"])
def test_chunk_sizes_dividing_and_not(tmp_path, chunk):
    out = tmp_path / "o.h5"
    # 4 MiB results: 1MiB and 4096 divide them, 1000000 does not; 64MiB is larger than a result
    p = gather(3, "taskfuncs:sized", out, "--range", "5", "--chunk-size", chunk)
    assert p.returncode == 0, show(p)
    with mpigather.load(out) as res:
        assert check_all(res, sized, range(5)) == []


def test_out_of_order_completion(tmp_path):
    out = tmp_path / "o"
    p = gather(3, "taskfuncs:out_of_order", out, "--range", "10", "--chunk-size", "256KiB", "--prefetch", "1")
    assert p.returncode == 0, show(p)
    with mpigather.load(out) as res:
        assert check_all(res, out_of_order, range(10)) == []
    # the journal shows the completions were not in id order
    done = done_ids(out)
    assert sorted(done) == list(range(10)) and done != list(range(10))


def test_task_file_with_ids(tmp_path):
    tasks = tmp_path / "t.jsonl"
    kinds = ["f64", "dict", "bytes", "none", "large"]
    rows = [{"id": f"run-{k}", "kind": kind, "i": k} for k, kind in enumerate(kinds)]
    tasks.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "o.h5"
    p = gather(2, "taskfuncs:by_payload", out, "--tasks", str(tasks), "--chunk-size", "64KiB")
    assert p.returncode == 0, show(p)
    with mpigather.load(out) as res:
        for r in rows:
            assert check_all(res, lambda _k, r=r: value(r["kind"], r["i"]), [r["id"]]) == []
        attrs = res.attrs("run-4")
    assert set(attrs) >= {"rank", "attempt", "duration", "bytes", "crc32c", "kind"}
    assert attrs["rank"] == 1 and attrs["attempt"] == 1 and attrs["bytes"] == value("large", 4).nbytes


def test_verify_and_status(tmp_path):
    out = tmp_path / "o.h5"
    p = gather(3, "taskfuncs:every_type", out, "--range", "12")
    assert p.returncode == 0, show(p)
    n, bad, missing = mpigather.verify(out)
    assert (n, bad, missing) == (12, [], [])
    from mpigather.status import collect

    st = collect(str(out))
    assert st["done"] == 12 and st["failed"] == 0 and st["finished"] and st["exit"] == 0
