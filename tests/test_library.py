"""mpigather.run and mpigather.executor from a user's MPI program, with 1-3 ranks: results in
memory, back-to-back runs, the user's own messages, split communicators, every result type in
every sink and mode, bounded master memory for a list of large arrays, and no silent hang."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import mpirun, show

pytestmark = pytest.mark.mpi  # (the core cases also run under the other MPI stacks: matrix)

SCRIPT = str(Path(__file__).with_name("lib_run.py"))
SCENARIOS = str(Path(__file__).with_name("lib_scenarios.py"))


def scenario(ranks: int, *args: str, timeout: float = 120, ok: int = 1):
    p = mpirun(ranks, [SCENARIOS, *args], timeout=timeout)
    assert p.returncode == 0, show(p)
    assert p.stdout.count("RESULT OK") == ok, show(p)
    assert p.stdout.count(" left") == ranks, show(p)
    return p


@pytest.mark.matrix
@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_run_in_memory(ranks):
    p = mpirun(ranks, [SCRIPT, "memory"], timeout=90)
    assert p.returncode == 0, show(p)
    assert p.stdout.count("RESULT OK") == 1, show(p)
    assert p.stdout.count("WORKER released") == ranks - 1, show(p)


@pytest.mark.matrix
@pytest.mark.parametrize("ranks", [1, 3])
def test_run_reports_failures(ranks):
    p = mpirun(ranks, [SCRIPT, "failures"], timeout=90)
    assert p.returncode == 0, show(p)
    assert "RESULT OK" in p.stdout, show(p)


@pytest.mark.matrix
@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_executor(ranks):
    p = mpirun(ranks, [SCRIPT, "executor"], timeout=90)
    assert p.returncode == 0, show(p)
    assert p.stdout.count("RESULT OK") == 1, show(p)
    assert p.stdout.count("left the executor") == ranks, show(p)


def test_bad_output_releases_workers():
    p = mpirun(3, [SCRIPT, "bad_output"], timeout=60)
    assert p.returncode == 0, show(p)
    assert p.stdout.count("USAGE") == 1 and p.stdout.count("RELEASED") == 2, show(p)


@pytest.mark.matrix
def test_a_hundred_runs_back_to_back_without_a_barrier():
    p = scenario(4, "back_to_back", "100", timeout=240)
    assert "RESULT OK 100 runs" in p.stdout


@pytest.mark.matrix
def test_the_users_own_messages_during_a_run_are_untouched():
    scenario(3, "p2p")


@pytest.mark.matrix
def test_two_masters_on_the_two_halves_of_a_split():
    scenario(4, "split", ok=2)


@pytest.mark.parametrize("out", ["memory", "h5", "dir"])
@pytest.mark.parametrize("mode", ["stream", "direct"])
def test_every_result_type_in_every_sink_and_mode(tmp_path, out, mode):
    if out == "memory" and mode == "direct":
        pytest.skip("direct mode needs a file output")
    target = {"memory": "memory", "h5": str(tmp_path / "o.h5"), "dir": str(tmp_path / "odir")}[out]
    scenario(3, "types", target, mode)


@pytest.mark.slow
def test_a_list_of_large_arrays_streams_with_bounded_master_memory(tmp_path):
    p = scenario(2, "big_list", str(tmp_path / "big.h5"), timeout=300)
    rss = float(p.stdout.split("rss ")[1].split()[0])
    # one worker, 64 MiB chunks: about 2 chunks in flight plus the interpreter and h5py
    assert rss < 2 * 64 * 1 + 300, f"master peak RSS {rss} MiB for a 2.5 GiB result"
    print(f"\nlist of three 850 MiB arrays: master peak RSS {rss:.0f} MiB")


@pytest.mark.parametrize("ranks", [3, 4])
def test_equal_tasks_on_as_many_workers_take_one_tasks_time(ranks):
    """Prefetch never makes a run slower: the first worker to say hello does not keep two tasks.
    Each worker runs one task; and the run takes one task's time (1 s), not two: the bound, 1.9 s,
    leaves 0.9 s for starting and ending the run, which holds when other jobs take both cores (the
    tasks sleep; only the run's own messages need the CPU)."""
    n = ranks - 1
    for _ in range(3):  # fresh starts: the hello order differs each time
        p = scenario(ranks, "equal_tasks")
        assert f"tasks per worker {[1] * n}" in p.stdout, show(p)
        wall = float(p.stdout.split("wall ")[1].split()[0])
        assert wall < 1.9, f"{n} tasks of 1 s on {n} workers took {wall:.2f} s\n{show(p)}"


def test_a_master_alone_says_why_it_waits():
    p = mpirun(3, [SCENARIOS, "master_only", "4"], timeout=20)
    assert "rank 0 of 3 has waited 1 s for the other ranks" in p.stderr, show(p)
    assert "must call mpigather.run" in p.stderr, show(p)


def test_a_run_with_a_stuck_worker_returns_without_waiting_for_it(tmp_path):
    """The task of one worker runs past ``timeout`` (it ran again elsewhere): the master returns
    the summary once the run is closed and lets the other workers go, while the stuck worker
    finishes its task (then it leaves too)."""
    p = scenario(3, "stuck", str(tmp_path), timeout=90)
    assert "RESULT OK after" in p.stdout, show(p)


def test_a_funneled_mpi_still_runs_and_the_executor_says_what_it_needs():
    p = scenario(3, "funneled")
    assert "MPI_THREAD_FUNNELED" in p.stdout + p.stderr, show(p)


@pytest.mark.matrix
def test_a_keyboard_interrupt_raised_by_a_task_fails_that_task_only():
    scenario(3, "interrupt")


@pytest.mark.matrix
def test_an_internal_error_on_a_worker_ends_the_run_promptly_with_the_error():
    p = scenario(4, "worker_bug", timeout=60)
    took = float(p.stdout.split("RESULT OK after ")[1].split()[0])
    assert took < 10, show(p)


def test_library_errors_name_keyword_arguments(tmp_path):
    scenario(2, "existing", str(tmp_path / "o.h5"))


def test_run_calls_with_keywords_and_stops_on_a_signature_mismatch():
    p = mpirun(3, [SCRIPT, "kwargs"], timeout=90)
    assert p.returncode == 0, show(p)
    assert "RESULT OK" in p.stdout, show(p)
