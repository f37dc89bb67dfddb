"""Does this MPI let a master go on after a worker dies? A probe for user-level fault mitigation
(ULFM): a master polls improbe(ANY_SOURCE) on a Dup of COMM_WORLD, workers send pickled results,
16 MiB inputs and 256 MiB buffers, and the last rank SIGKILLs itself at a chosen moment. The
master logs, with timestamps, every MPI error (class, and milliseconds since the kill), what
Ack_failed/Get_failed report, what becomes of its pending Isends to the dead rank, whether a
matched but unreceived message from it completes, errors or hangs, and how the dup is freed.

    OMPI_MCA_async_mpi_finalize=1 mpiexec --with-ft ulfm -n 4 python scripts/ulfm_probe.py idle
    mpiexec --with-ft ulfm --mca btl tcp,self -n 4 python scripts/ulfm_probe.py bigsend --blocking
    mpiexec -n 4 python scripts/ulfm_probe.py stream      # MPICH: the launcher ends the job

SCENARIO:
  idle       the victim stops receiving, sleeps 0.3 s (the master meanwhile posts a task and a
             16 MiB input Isend to it), then dies
  late       the victim Isends 256 MiB; the master improbes it, waits until the victim is dead
             (it watches the pid), and only then receives it
  bigsend    the victim Isends 256 MiB and dies --delay ms later, while the master receives it
  stream     the victim announces 8 chunks of 32 MiB, sends 3 and dies (a half-received stream)
  lastwords  the victim sends a result and dies at once: does the result arrive before the error?
  none       nobody dies
The master's last line is "RESULT {...}" (errors seen, tasks done, ranks alive); --json FILE
writes every event. A run that never ends is the finalize hang: run it under `timeout`.
"""

import argparse
import json
import os
import signal
import time

import numpy as np
from mpi4py import MPI

p = argparse.ArgumentParser()
p.add_argument("scenario", choices=["idle", "late", "bigsend", "stream", "lastwords", "none"])
p.add_argument("--end", choices=["free", "disconnect", "keep"], default="free",
               help="what every survivor does with the dup at the end")
p.add_argument("--eh", choices=["set", "inherit", "fatal"], default="set",
               help="the dup's error handler: set ERRORS_RETURN / inherit COMM_WORLD's / set ERRORS_ARE_FATAL")
p.add_argument("--delay", type=float, default=5.0, help="bigsend: ms between the Isend and the kill")
p.add_argument("--tasks", type=int, default=24)
p.add_argument("--json", default="", help="the master writes every event there")
p.add_argument("--blocking", action="store_true", help="receive matched messages with msg.Recv (Mrecv)")
p.add_argument("--noack", action="store_true", help="never call Ack_failed (count the errors for 1 s)")
p.add_argument("--cleanup", choices=["cancel", "test", "free"], default="cancel",
               help="pending isends to a dead rank: Test, Cancel, Test / only Test for 2 s / Request.Free")
a = p.parse_args()

world = MPI.COMM_WORLD
rank, size = world.Get_rank(), world.Get_size()
comm = world.Dup()
if a.eh == "set":
    comm.Set_errhandler(MPI.ERRORS_RETURN)
elif a.eh == "fatal":
    comm.Set_errhandler(MPI.ERRORS_ARE_FATAL)
T0 = time.time()
TASK, RESULT, HDR, CHUNK, STOP, BIG, PAYLOAD = 1, 2, 3, 4, 5, 6, 7
VICTIM = size - 1
KILL_AT = 1  # the victim's second task: it always gets two at the start (prefetch 2)
BIG_N, CHUNK_N, NCHUNKS = 256 << 20, 32 << 20, 8
PAYLOAD_N = 16 << 20
STAMP = f"/tmp/ulfm-kill-{os.getppid()}-{os.environ.get('PMIX_NAMESPACE', 'x')}.json"
ERRNAMES = {getattr(MPI, n): n for n in ("ERR_PROC_FAILED", "ERR_PROC_FAILED_PENDING", "ERR_REVOKED",
                                         "ERR_UNKNOWN", "ERR_OTHER", "ERR_INTERN", "ERR_TRUNCATE")}


def log(*args):
    print(" ".join([f"[{time.time() - T0:8.4f} r{rank}]", *map(str, args)]), flush=True)


def ename(e):
    c = e.Get_error_class()
    return f"{ERRNAMES.get(c, c)}({c})"


def die():
    with open(STAMP, "w") as f:
        json.dump({"t": time.time(), "pid": os.getpid()}, f)
    os.kill(os.getpid(), signal.SIGKILL)


def worker():
    payload = np.empty(PAYLOAD_N, np.uint8)
    big = np.full(BIG_N, rank, np.uint8)
    ntask = 0
    while True:
        st = MPI.Status()
        msg = comm.recv(source=0, tag=MPI.ANY_TAG, status=st)
        if st.tag == STOP:
            break
        if rank == VICTIM and ntask == KILL_AT and a.scenario == "idle":
            time.sleep(0.3)  # never receives the payload the master is sending
            die()
        comm.Recv(payload, source=0, tag=PAYLOAD)
        task = msg
        if rank == VICTIM and ntask == KILL_AT and a.scenario in ("late", "bigsend"):
            comm.send(("big", task, BIG_N), dest=0, tag=HDR)
            _req = comm.Isend(big, dest=0, tag=BIG)  # never completed: the sender dies
            if a.scenario == "bigsend":
                time.sleep(a.delay / 1000)
                die()
            time.sleep(0.05)
            die()  # late: the master waits for our death before it posts the receive
        if rank == VICTIM and ntask == KILL_AT and a.scenario == "stream":
            comm.send(("stream", task, NCHUNKS), dest=0, tag=HDR)
            for _ in range(3):
                comm.Send(big[:CHUNK_N], dest=0, tag=CHUNK)
            time.sleep(0.05)
            die()
        time.sleep(0.01)
        comm.send(("result", task, rank), dest=0, tag=RESULT)
        if rank == VICTIM and ntask == KILL_AT and a.scenario == "lastwords":
            die()  # the result is on its way (eager): does the master get it before the error?
        ntask += 1


def master():
    obs = {"scenario": a.scenario, "errors": [], "events": []}
    queue = list(range(a.tasks))
    outstanding = {r: [] for r in range(1, size)}
    sends = {r: [] for r in range(1, size)}  # (what, request) of isends to each rank
    alive = set(range(1, size))
    done = set()
    payload = np.zeros(PAYLOAD_N, np.uint8)
    bigbuf = np.zeros(BIG_N, np.uint8)
    streams = {}

    def event(what, **kw):
        kw["t"] = round(time.time() - T0, 4)
        obs["events"].append({"what": what, **kw})
        log(what, kw)

    def dispatch(r):
        if not queue or r not in alive:
            return
        t = queue.pop(0)
        outstanding[r].append(t)
        sends[r].append(("task", comm.isend(t, dest=r, tag=TASK)))
        sends[r].append(("payload", comm.Isend(payload, dest=r, tag=PAYLOAD)))

    def kill_ms(t):
        try:
            return round((t - json.load(open(STAMP))["t"]) * 1000, 1)
        except (OSError, ValueError):
            return None

    def failure(where, e):
        t = time.time()
        try:
            k = json.load(open(STAMP))
            since = round((t - k["t"]) * 1000, 1)
        except (OSError, ValueError):
            since = None
        obs["errors"].append({"where": where, "class": ename(e), "ms_after_kill": since})
        event("error", where=where, cls=ename(e), ms_after_kill=since)
        if a.noack and not obs.get("noack_done"):
            obs["noack_done"] = True
            n_err, n_msg, t1 = 0, 0, time.time()
            while time.time() - t1 < 1.0:
                try:
                    m = comm.improbe(MPI.ANY_SOURCE, MPI.ANY_TAG)
                    if m is not None:
                        n_msg += 1
                        break
                except MPI.Exception:
                    n_err += 1
                time.sleep(0.001)
            g0 = comm.Get_failed()
            event("without Ack_failed for 1 s", improbe_errors=n_err, got_message=n_msg, get_failed=g0.Get_size())
            g0.Free()
        n = comm.Ack_failed()
        g = comm.Get_failed()
        failed = g.Translate_ranks(None, comm.Get_group())
        g.Free()
        event("ack", acked=n, failed=list(failed))
        for r in failed:
            if r not in alive:
                continue
            alive.discard(r)
            queue[:0] = outstanding.pop(r)
            streams.pop(r, None)
            for what, req in sends.pop(r):
                res = {}
                if a.cleanup == "free" and what == "payload":
                    try:
                        req.Free()
                        res["free_without_cancel"] = "ok"
                    except MPI.Exception as e2:
                        res["free_without_cancel"] = ename(e2)
                    event("isend to dead rank", rank=r, kind=what, **res)
                    continue
                if a.cleanup == "test" and what == "payload":
                    t1, n_false = time.time(), 0
                    res["test"] = None
                    while time.time() - t1 < 2.0:
                        try:
                            if req.Test():
                                res["test"] = f"True after {n_false} False"
                                break
                            n_false += 1
                        except MPI.Exception as e2:
                            res["test"] = f"{ename(e2)} after {n_false} False, {1000 * (time.time() - t1):.0f} ms"
                            break
                        time.sleep(0.001)
                    else:
                        res["test"] = f"still False after 2 s ({n_false} calls)"
                    event("isend to dead rank", rank=r, kind=what, **res)
                    continue
                try:
                    res["test"] = req.Test()
                except MPI.Exception as e2:
                    res["test"] = ename(e2)
                if res["test"] is not True:
                    try:
                        req.Cancel()
                        res["cancel"] = "ok"
                    except MPI.Exception as e2:
                        res["cancel"] = ename(e2)
                    try:
                        res["test_after_cancel"] = req.Test()
                    except MPI.Exception as e2:
                        res["test_after_cancel"] = ename(e2)
                    if req != MPI.REQUEST_NULL:
                        try:
                            req.Free()
                            res["free"] = "ok"
                        except MPI.Exception as e2:
                            res["free"] = ename(e2)
                event("isend to dead rank", rank=r, kind=what, **res)
        for r in list(alive):
            if not outstanding[r]:
                dispatch(r)

    def recv_big(msg, buf, src, what):
        """Irecv of a matched message and a Test loop with a deadline: does it complete, error, hang?"""
        t = time.time()
        if a.blocking:
            try:
                msg.Recv(buf)
                event(f"{what} received (Mrecv)", src=src, ms=round((time.time() - t) * 1000, 1),
                      bytes_from_sender=int(np.count_nonzero(buf == src)), of=buf.nbytes)
                buf[:] = 0
                return "ok"
            except MPI.Exception as e:
                event(f"{what} Mrecv raised", src=src, cls=ename(e), ms=round((time.time() - t) * 1000, 1))
                failure(f"{what} Mrecv", e)
                return "error"
        try:
            req = msg.Irecv(buf)
        except MPI.Exception as e:
            event(f"{what} Irecv raised", src=src, cls=ename(e))
            return "error"
        while True:
            try:
                if req.Test():
                    event(f"{what} received", src=src, ms=round((time.time() - t) * 1000, 1),
                          bytes_from_sender=int(np.count_nonzero(buf == src)), of=buf.nbytes,
                          posted_ms_after_kill=kill_ms(t))
                    buf[:] = 0
                    return "ok"
            except MPI.Exception as e:
                event(f"{what} Test raised", src=src, cls=ename(e), ms=round((time.time() - t) * 1000, 1))
                failure(f"{what} Test", e)
                return "error"
            if time.time() - t > 10:
                event(f"{what} HANG: not complete after 10 s", src=src)
                obs["hang"] = what
                return "hang"
            time.sleep(0.0005)

    for r in range(1, size):
        dispatch(r)
        dispatch(r)  # prefetch 2
    st = MPI.Status()
    deadline = time.time() + 60
    while (queue or any(outstanding[r] for r in alive)) and time.time() < deadline:
        try:
            msg = comm.improbe(MPI.ANY_SOURCE, MPI.ANY_TAG, st)
        except MPI.Exception as e:
            failure("improbe(ANY_SOURCE)", e)
            continue
        if msg is None:
            time.sleep(0.0005)
            continue
        src, tag = st.Get_source(), st.Get_tag()
        if tag == RESULT:
            kind, t, _r = msg.recv()
            if src == VICTIM and a.scenario == "lastwords":
                event("result from the victim", task=t, ms_after_kill=kill_ms(time.time()))
            if src not in alive:
                event("message from a rank already known dead", src=src, task=t)
                continue
            outstanding[src].remove(t)
            done.add(t)
            sends[src] = [(w, q) for w, q in sends[src] if not q.Test()]
            dispatch(src)
        elif tag == HDR:
            hdr = msg.recv()
            event("header", src=src, hdr=list(hdr))
            streams[src] = hdr
        elif tag == BIG:
            if a.scenario == "late" and src == VICTIM:
                k = None
                while k is None:  # wait until the victim is dead, then post the receive
                    try:
                        k = json.load(open(STAMP))
                        os.kill(k["pid"], 0)
                        k = None
                    except (OSError, ValueError, ProcessLookupError):
                        if k is not None:
                            break
                    time.sleep(0.001)
                time.sleep(0.05)
                event("victim is dead; now Irecv of the improbed 256 MiB message", src=src)
            r = recv_big(msg, bigbuf, src, "BIG")
            if r == "hang":
                break
            if r == "ok" and src in streams:
                t = streams.pop(src)[1]
                outstanding[src].remove(t)
                done.add(t)
                dispatch(src)
        elif tag == CHUNK:
            r = recv_big(msg, bigbuf[:CHUNK_N], src, "CHUNK")
            if r == "hang":
                break
    obs["done"] = len(done)
    obs["alive"] = sorted(alive)
    event("loop over", done=len(done), alive=sorted(alive), left=len(queue))
    for r in sorted(alive):
        comm.send(None, dest=r, tag=STOP)
    for r in sorted(alive):
        for _what, q in sends.get(r, []):
            q.Wait()
    return obs


if rank == 0:
    # what a program can see at run time: Open MPI defines the ULFM error classes (75-77; MPICH
    # maps them all to ERR_UNKNOWN), and `mpiexec --with-ft ulfm` sets OMPI_MCA_mpi_ft_enable=1
    log("library", MPI.Get_library_version().splitlines()[0][:40], "ulfm classes:",
        MPI.ERR_PROC_FAILED != MPI.ERR_UNKNOWN, "ft enabled:", os.environ.get("OMPI_MCA_mpi_ft_enable"),
        "errhandler ERRORS_RETURN:", comm.Get_errhandler() == MPI.ERRORS_RETURN)
    obs = master()
else:
    worker()
    obs = None
t = time.time()
try:
    if a.end == "free":
        comm.Free()
    elif a.end == "disconnect":
        comm.Disconnect()
    if rank == 0:
        log(f"comm {a.end} returned after {1000 * (time.time() - t):.1f} ms")
except MPI.Exception as e:
    log(f"comm {a.end} raised {ename(e)}")
    if obs is not None:
        obs["end_error"] = ename(e)
if obs is not None:
    obs["end_ms"] = round(1000 * (time.time() - t), 1)
    obs["library"] = MPI.Get_library_version().splitlines()[0][:40]
    if a.json:
        with open(a.json, "w") as f:
            json.dump(obs, f)
    log("RESULT", json.dumps({k: obs[k] for k in ("errors", "done", "alive")}))
log("finalizing")
