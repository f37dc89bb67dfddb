"""The per-chunk trace (MPIGATHER_TRACE), the rule that the master never sleeps while a large
result streams in, and the prefault of fresh receive memory. No MPI: the loopback link."""

from __future__ import annotations

import numpy as np
import pytest
from test_loopback import run_loopback

from mpigather import prefault
from mpigather import trace as TR
from mpigather.link import Backoff


def big(x):
    return np.full(300_000, x, dtype=np.float64)  # 2.4 MB: 10 chunks of 256 KiB


def test_backoff_never_sleeps_when_busy():
    slept: list[float] = []
    b = Backoff(spins=3)
    b._sleep = slept.append
    for _ in range(1000):
        assert b.sleep(busy=True) == 0.0
    assert slept == []
    got = [b.sleep() for _ in range(10)]
    assert got[:3] == [0.0, 0.0, 0.0] and all(x > 0 for x in got[3:])  # idle: it backs off after the spins
    assert slept == got[3:]


def test_trace_off_by_default(tmp_path, monkeypatch):
    monkeypatch.delenv(TR.ENV, raising=False)
    assert TR.open_trace(0) is None
    s, errors = run_loopback(big, list(range(3)), n_workers=1, chunk_size="256KiB")
    assert not errors and s.done == 3
    assert list(tmp_path.iterdir()) == []


def test_trace_has_every_chunk_and_no_sleep_while_streaming(tmp_path, monkeypatch):
    monkeypatch.setenv(TR.ENV, str(tmp_path / "tr"))
    s, errors = run_loopback(big, list(range(6)), n_workers=2, chunk_size="256KiB")
    assert not errors and s.done == 6
    master = TR.read(str(tmp_path / "tr.0"))
    workers = TR.read(str(tmp_path / "tr.1")) + TR.read(str(tmp_path / "tr.2"))
    assert master[0]["event"] == "run" and master[0]["rank"] == 0
    nchunks = -(-300_000 * 8 // (256 << 10))
    for ev, lines in (("post", workers), ("probe", master), ("landed", master)):
        got = sorted((int(x["tid"]), x["chunk"]) for x in lines if x["event"] == ev)
        assert got == [(t, k) for t in range(6) for k in range(nchunks)], ev
    assert sorted(int(x["tid"]) for x in master if x["event"] == "stored") == list(range(6))
    assert sorted(int(x["tid"]) for x in master if x["event"] == "announce") == list(range(6))
    posted = {(x["tid"], x["chunk"]): x["t"] for x in workers if x["event"] == "post"}
    for x in master:
        if x["event"] == "probe":  # one clock for every rank of a node: a chunk is probed after its post
            assert x["t"] >= posted[(x["tid"], x["chunk"])]
    assert [x for x in master if x["event"] == "sleep"] == []  # never a sleep while a result streams in


def test_trace_file_format(tmp_path):
    tr = TR.Trace(str(tmp_path / "t"), 3)
    tr.event("probe", "a b", 2, 64, 0.5, t=12.25)
    tr.close()
    text = (tmp_path / "t.3").read_text()
    assert text == TR.HEADER + "12.250000\t3\tprobe\ta b\t2\t64\t0.500000\n"
    assert TR.read(str(tmp_path / "t.3")) == [
        {"t": 12.25, "rank": 3, "event": "probe", "tid": "a b", "chunk": 2, "bytes": 64, "seconds": 0.5}]
    (tmp_path / "u").write_text("something else\n")
    with pytest.raises(ValueError, match="not an mpigather trace"):
        TR.read(str(tmp_path / "u"))


def test_prefault_keeps_contents_and_covers_whole_pages():
    if not prefault.available():
        pytest.skip("no MADV_POPULATE_WRITE here")
    a = np.arange(5_000_000, dtype=np.uint8)  # already written: populating must not change a byte
    b = a.copy()
    n = prefault.populate(a[7:], piece=1 << 20)
    assert np.array_equal(a, b)
    start, whole = prefault.pages(a[7:].ctypes.data, a.nbytes - 7)
    assert n == whole and start % prefault.PAGE == 0


def test_pages_inside_a_range():
    assert prefault.pages(4096, 8192) == (4096, 8192)
    assert prefault.pages(4097, 8192) == (8192, 4096)
    assert prefault.pages(10, 100) == (4096, 0)


@pytest.mark.parametrize("checksum", ["both", "sender"])
def test_checksum_sender_records_the_crc_without_checking_it(checksum):
    """What ``checksum="sender"`` gives up: a result whose bytes do not match the sender's crc
    is kept instead of failing (the sender's crc is still recorded with it)."""
    import threading

    from test_loopback import ScriptedWorker

    from mpigather.api import master_run
    from mpigather.config import make_options
    from mpigather.loopback import LoopbackHub
    from mpigather.tasks import iterable_tasks

    links = LoopbackHub(2).links()
    t = threading.Thread(target=ScriptedWorker(links[1]).play, args=(np.arange(1234.0), 1), daemon=True)
    t.start()
    s = master_run(links[0], iterable_tasks([0]), None, make_options(progress="off", chunk_size=1000,
                                                                     inline_max=100, checksum=checksum))
    t.join(5)
    if checksum == "both":
        assert s.done == 0 and "checksum" in s.failed[0]
    else:
        assert s.done == 1 and np.array_equal(s.results[0], np.arange(1234.0))


def test_recvmem_reuses_the_pages_of_a_dropped_result_only():
    import gc

    from mpigather import recvmem

    n = recvmem.REUSE_MIN + 12345
    a = recvmem.empty(n)
    assert a.nbytes == n and a.flags.writeable
    a[:] = 1
    prefault.wait()
    addr = a.ctypes.data
    view = a[100:200]  # the program keeps a slice: the pages are still its own
    del a
    gc.collect()
    b = recvmem.empty(n)
    assert b.ctypes.data != addr and recvmem.kept() == 0
    del view
    gc.collect()
    c = recvmem.empty(n)  # every view dropped: the same pages, already faulted in
    assert c.ctypes.data == addr
    del b, c
    prefault.wait()  # (the helper thread holds a fresh buffer until it is faulted in)
    gc.collect()
    assert recvmem.kept() >= 2 * n
    assert recvmem.trim(older_than=0) >= 2 * n and recvmem.kept() == 0


def test_recvmem_off_and_small_parts_come_from_numpy(monkeypatch):
    from mpigather import recvmem

    recvmem.trim(older_than=0)
    monkeypatch.setenv("MPIGATHER_REUSE", "off")
    a = recvmem.empty(recvmem.REUSE_MIN)
    del a
    assert recvmem.kept() == 0
    monkeypatch.delenv("MPIGATHER_REUSE")
    b = recvmem.empty(1000)
    del b
    prefault.wait()
    assert recvmem.kept() == 0


def test_results_in_memory_are_whole_and_writable_with_reuse():
    s, errors = run_loopback(lambda i: np.full(2_200_000, i, dtype=np.float64), list(range(4)), n_workers=2,
                             chunk_size="4MiB")
    assert not errors and s.done == 4
    for i in range(4):
        r = s.results[i]
        assert r.shape == (2_200_000,) and (r == i).all()
        r[0] = -1  # a result is the program's to change
