"""Results stored whole: a small one arrives inline (or, in direct mode, as a file the worker
wrote) and is stored at once; a large one is announced by its header and then streamed, each
chunk received straight into its place in the sink (``Target.buffer``) or into a scratch buffer
that the pipeline thread checksums and writes. Its ``Trailer`` carries the sender's crc32c; a
result whose last chunk is still being checksummed waits in ``_settling`` and is completed at
a later pass (or before its worker's next message, so a worker's messages keep their order).
"""

from __future__ import annotations

import time
from typing import Any

from .. import messages as M
from .. import results as R
from ..errors import ProtocolError
from ..sinks import Meta, Target
from .base import Base
from .failures import _ValueErrors


class _Stream:
    """A large result being received, chunk by chunk. (Written out, not a dataclass, which costs
    half a millisecond to define at the master's start.)"""

    __slots__ = ("bid", "i", "tid", "attempt", "header", "target", "plan", "meta", "step", "index", "crc", "job")

    def __init__(self, bid: int, i: int, tid: Any, attempt: int, header: R.Header, target: Target | None,
                 plan: list[tuple[int, int, int]], meta: Meta, step: Any = None) -> None:
        self.bid = bid  # the lease, and the task's index in it
        self.i = i
        self.tid = tid
        self.attempt = attempt
        self.header = header
        self.target = target  # None: a late duplicate, received and dropped
        self.plan = plan
        self.meta = meta
        self.step = step  # steps.StepInfo when this is a step's output or a multi-step task's result
        self.index = 0
        self.crc = 0
        self.job: Any = None  # the pipeline's last job for this result


class StreamsMixin(Base):
    """Part of ``Master``: results stored whole, and the streams of large ones."""

    def _meta(self, src: int, b: Any, i: int, tid: Any, attempt: int, header: R.Header, duration: float,
              step: Any = None) -> Meta:
        """What is recorded with a result: who ran it, its size, its checksum, its position in the
        task list and its parameters (``b``: its live lease, else a late winner's record)."""
        meta: Meta = {"rank": src, "attempt": attempt, "duration": duration, "bytes": header.nbytes,
                      "crc32c": header.crc, "kind": header.kind}
        if b is not None:
            seq, payload, h = b.seq0 + i, b.payloads[i], (b.hashes[i] if b.hashes is not None else None)
        else:
            rec = self.sched.task(tid)
            seq, payload, h = (rec.seq, rec.payload, rec.hash) if rec is not None else (-1, None, None)
        meta["seq"] = seq
        if self._params and not (step is not None and step.child is not None and payload is None):
            meta["params"], meta["hash"] = self.describe(payload)
            if h is not None:
                meta["hash"] = h
        if step is not None:
            meta["step"], meta["tid"], meta["ran"] = step, tid, step.ran
        return meta

    def _on_result(self, src: int, item: M.Item, now: float) -> None:
        """One result (or step output) of a batch, stored whole."""
        bid, i, tid, attempt, header, duration, inline, path, step = item
        self._hb_task.pop(src, None)
        streamed = inline is None and path is None
        if step is not None and step.n:  # a later step of a multi-step task: its output, or the task's result
            self._multistep = True
            accept = self.sched.step_begin(src, bid, i, tid, step.n, now, streamed=streamed)
        elif step is not None:  # the first step's output
            self._multistep = True
            accept = self.sched.step_begin(src, bid, i, tid, 0, now, streamed=streamed)
        elif streamed:
            accept = self.sched.begin_stream(src, bid, i, tid, now)
        else:
            accept = self.sched.accept(src, bid, i, tid)
        checkpoint = step is not None and step.next is not None
        sink = self._steps() if checkpoint else self.sink
        key = self._ckpt_key(tid, step) if checkpoint else tid
        meta = self._meta(src, self.sched.lease(src, bid), i, tid, attempt, header, duration, step) if accept else {}
        if streamed:  # chunks follow
            target = sink.open(key, header, meta) if accept else None
            stream = _Stream(bid, i, tid, attempt, header, target, R.chunk_plan(header, self.opts.chunk_size), meta,
                             step)
            if self.trace is not None:
                self.trace.event("announce", tid, len(stream.plan), header.nbytes, t=now)
            self._streams[src] = stream
            if not stream.plan:
                self._end_stream(src, stream, now)
            return
        if not accept:  # a late duplicate: the task ended already, or that lease is over
            self._decide_all(self.sched.discarded(src, now), now)
            if path is not None:
                from ..sinks.base import remove_quietly

                remove_quietly(path)
            return
        t = time.perf_counter()
        try:
            if path is not None:
                sink.adopt(key, header, path, meta)
            else:
                bufs = inline or []
                crc = R.checksum(bufs)
                if crc != header.crc:
                    self._bad_checksum(src, bid, i, tid, attempt, header.crc or 0, crc, now)
                    return
                sink.put(key, header, bufs, meta)
        except _ValueErrors as e:  # the value cannot be rebuilt here (memory sink): that task fails
            self._rebuild_failed(src, bid, i, tid, attempt, e, now)
            return
        finally:
            self._t["write"] += time.perf_counter() - t
        self._stored(src, bid, i, tid, attempt, duration, step, now)

    def _on_trailer(self, src: int, tid: Any, crc: int, now: float) -> None:
        """The sender's crc of a streamed result, after its last chunk."""
        stream = self._streams.get(src)
        if stream is None or stream.tid != tid or stream.index != len(stream.plan):
            raise ProtocolError(f"rank {src}: trailer of {tid!r} without its complete result")
        stream.header = stream.header._replace(crc=crc)
        stream.meta["crc32c"] = crc
        self._end_stream(src, stream, now)

    def _on_chunk(self, inc: Any, now: float) -> None:
        src = inc.source
        stream = self._streams.get(src)
        if stream is None:
            raise ProtocolError(f"rank {src} sent data with no open result")
        part, off, n = stream.plan[stream.index]
        if inc.count != n:
            raise ProtocolError(f"rank {src}, task {stream.tid!r}: chunk of {inc.count} bytes, expected {n}")
        if stream.target is None:  # a late duplicate: receive and drop
            inc.into(self._pipe.scratch(n)[0])
        else:
            direct = stream.target.buffer(part, off, n)
            slot = None
            if direct is None:
                buf, slot = self._pipe.scratch(n)
            else:
                buf = direct
            t = time.perf_counter()
            inc.into(buf)
            dt = time.perf_counter() - t
            self._t["recv"] += dt
            if self.trace is not None:
                self.trace.event("probe", stream.tid, stream.index, n, t=now)
                self.trace.event("landed", stream.tid, stream.index, n, dt)
            self._pipe.absorb(stream, part, off, buf, slot)
        stream.index += 1
        if stream.index == len(stream.plan):
            self._end_stream(src, stream, now)

    def _end_stream(self, src: int, stream: _Stream, now: float) -> None:
        """All chunks are in; the result is checked once its trailer (the sender's crc) is here too."""
        if stream.header.crc is None:
            return  # wait for the trailer
        del self._streams[src]
        self.sched.transfer_done(src)  # the worker may announce its next result now
        if stream.target is None:
            return
        if stream.job is not None and not stream.job.done():
            # the helper thread still checksums (and writes) the last chunk: finish it at the next
            # pass, and receive the next result meanwhile
            self._settling.append((src, stream))
            return
        self._complete(src, stream, now)

    def _settle_from(self, src: int, now: float) -> None:
        """Finish ``src``'s results still being checksummed before its next message is handled, so
        that what a worker sends is handled in order (a step's output before the next step's)."""
        mine = [(s, st) for s, st in self._settling if s == src]
        if mine:
            self._settling = [(s, st) for s, st in self._settling if s != src]
            for s, st in mine:
                self._complete(s, st, now)

    def _complete_settled(self, now: float) -> None:
        if self._settling:
            waiting = []
            for src, stream in self._settling:
                if stream.job.done():
                    self._complete(src, stream, now)
                else:
                    waiting.append((src, stream))
            self._settling = waiting

    def _complete(self, src: int, stream: _Stream, now: float) -> None:
        """Every byte of the result is checksummed and written: check it and store it."""
        target, want = stream.target, stream.header.crc
        assert target is not None and want is not None
        t = time.perf_counter()
        self._pipe.settle(stream)
        self._t["write"] += time.perf_counter() - t
        if self._pipe.check and stream.crc != want:
            target.discard()
            self._bad_checksum(src, stream.bid, stream.i, stream.tid, stream.attempt, want, stream.crc, now)
            return
        try:
            target.finish()
        except _ValueErrors as e:
            target.discard()
            self._rebuild_failed(src, stream.bid, stream.i, stream.tid, stream.attempt, e, now)
            return
        if self.trace is not None:
            self.trace.event("stored", stream.tid, len(stream.plan), stream.header.nbytes)
        self._stored(src, stream.bid, stream.i, stream.tid, stream.attempt, stream.meta["duration"], stream.step, now)
