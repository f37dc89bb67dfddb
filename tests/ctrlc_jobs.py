"""Jobs that a Ctrl-C stops (tests/test_ctrl_c.py), each run as ``mpiexec -n N python tests/ctrlc_jobs.py ...``:

- ``executor READY small|large``: an executor maps ``work`` over 16 items again and again (as
  a sampler does), or over 100,000 items at once; the root touches READY once results come back;
- ``run OUT N [resume]``: ``mpigather.run(work, range(N), out=OUT)``;
- the command line runs ``ctrlc_jobs:work`` itself.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

SECONDS = 0.05  # one task


def work(i: int) -> int:
    time.sleep(SECONDS)
    return i * i


def main(argv: list[str]) -> int:
    import mpigather

    if argv[0] == "executor":
        with mpigather.executor() as ex:
            if ex is not None:
                if argv[2] == "small":
                    for k in range(1_000_000):
                        list(ex.map(work, range(16)))
                        if k == 2:
                            Path(argv[1]).touch()
                else:
                    for k, _ in enumerate(ex.map(work, range(100_000))):
                        if k == 10:
                            Path(argv[1]).touch()
        return 0
    out, n = argv[1], int(argv[2])
    resume = argv[3:] == ["resume"]
    mpigather.run(work, range(n), out=out, progress="off", resume=resume or None, overwrite=None if resume else True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
