"""Library use under mpiexec: mpigather.run with results in memory, and the executor."""

import sys

from compare import check_all
from mpi4py import MPI
from taskfuncs import KINDS, every_type, raise_on_odd

import mpigather

rank = MPI.COMM_WORLD.Get_rank()
what = sys.argv[1]

if what == "memory":
    n = 2 * len(KINDS)
    s = mpigather.run(every_type, range(n), out=None, chunk_size="64KiB")
    if rank == 0:
        bad = check_all({str(k): v for k, v in s.results.items()}, every_type, range(n))
        print(f"RESULT {'OK' if not bad and s.done == n and s.exit_code == 0 else bad}", flush=True)
    else:
        assert s is None
        print("WORKER released", flush=True)

elif what == "failures":
    s = mpigather.run(raise_on_odd, range(6), out=None)
    if rank == 0:
        assert s.exit_code == 1 and sorted(s.failed) == [1, 3, 5], s.failed
        err = s.failed[3]
        assert "ValueError: task 3 is odd" in err and "failed on rank" in err and "host" in err, err
        assert sorted(s.results) == [0, 2, 4]
        print("RESULT OK", flush=True)

elif what == "executor":
    with mpigather.executor(chunk_size="1MiB") as ex:
        if ex is not None:
            squares = list(ex.map(pow, range(50), [2] * 50))
            assert squares == [i * i for i in range(50)], squares
            arrays = list(ex.map(every_type, range(len(KINDS))))
            bad = check_all({str(i): a for i, a in enumerate(arrays)}, every_type, range(len(KINDS)))
            assert not bad, bad
            f = ex.submit(raise_on_odd, 3)
            try:
                f.result()
            except ValueError as e:  # the task's own exception type, as with mpi4py.futures
                assert "task 3 is odd" in str(e)
                if MPI.COMM_WORLD.Get_size() > 1:
                    assert isinstance(e.__cause__, mpigather.RemoteTaskError), repr(e.__cause__)
                    assert "failed on rank" in str(e.__cause__)
            else:
                raise AssertionError("no error")
            print("RESULT OK", flush=True)
    print(f"rank {rank} left the executor", flush=True)

elif what == "bad_output":
    try:
        mpigather.run(every_type, range(3), out="/nonexistent/dir/o.h5")
    except mpigather.UsageError as e:
        print(f"USAGE {e}", flush=True)
    except mpigather.MasterFailed as e:
        print(f"RELEASED {e}", flush=True)

elif what == "kwargs":
    from failfuncs import point_py

    tasks = [{"id": f"p{i}", "seed": i, "x": 0.25} for i in range(40)]
    s = mpigather.run(point_py, tasks, out=None, kwargs=True, progress="off")
    # a signature that cannot take the tasks: stopped at the first task, the mismatch named
    s2 = mpigather.run(point_py, [{"seed": i} for i in range(500)], out=None, kwargs=True, progress="off")
    if rank == 0:
        assert s.exit_code == 0 and s.done == 40, s.text()
        assert s.results["p7"] == 7.25 and s.results["p0"] == 0.25, s.results
        assert s2.exit_code == 1 and s2.stopped_early and s2.done == 0, s2.text()
        assert 1 <= len(s2.failed) <= 4 and s2.not_run >= 490, s2.text()
        err = next(iter(s2.failed.values()))
        assert "point_py(seed, x, scale=1.0)" in err and "missing a required argument: 'x'" in err, err
        print("RESULT OK", flush=True)
