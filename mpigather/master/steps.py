"""The master's part in multi-step tasks: a step's output is stored like a result, journaled,
and its next step released to the scheduler; a fan-out's children are made once all their
inputs are in; the step outputs of a finished task are removed (or kept, with keep_steps).

Part of ``Master``: it uses the master's scheduler, journal, summary and sinks.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..sinks import Meta, Sink, check_id
from ..sinks.layout import EXT
from .base import Base


def child_id(tid: Any, k: int) -> str:
    """The id of child ``k`` of a fanned-out task."""
    return f"{tid}.{k}"


class StepsMixin(Base):
    """Part of ``Master``: multi-step tasks (its state is declared in ``base.Base``)."""

    def _stored(self, src: int, bid: int, i: int, tid: Any, attempt: int, duration: float, step: Any,
                now: float) -> None:
        """Every byte of a result, or of a step's output, is in the sink (not yet durable)."""
        if step is None or step.next is None:
            self._decide_all(self.sched.task_done(src, bid, i, tid, now, duration, attempt), now)
        elif step.child is None:
            self._decide_all(self.sched.step_done(src, bid, i, step.n, step.n + 1, step.needs, step.timeout,
                                                  step.continuing, now), now)
        else:  # one input of a fan-out; the children start once all are in
            got = self._fan.setdefault(tid, {})
            got[step.child] = step
            if len(got) == step.of:
                del self._fan[tid]
                self._parents.add(tid)
                children = [(child_id(tid, k), s.n + 1, s.needs, s.timeout) for k, s in sorted(got.items())]
                b = self.sched.lease(src, bid)
                rec = self.sched.task(tid)
                seq, payload = (b.seq0 + i, b.payloads[i]) if b is not None else (
                    (rec.seq, rec.payload) if rec is not None else (-1, None))
                meta: Meta = {"seq": seq}
                if self._params and seq >= 0:
                    meta["params"], meta["hash"] = self.describe(payload)
                self._fan_children[tid] = (meta, [c for c, *_ in children])
                if self.journal is not None:
                    self.journal.fanout(tid, [c for c, *_ in children])
                self.summary.total += len(children)
                if self.done:  # a resumed run re-ran the fan-out: children done before stay done
                    before = len(children)
                    children = [c for c in children if c[0] not in self.done]
                    self.summary.skipped += before - len(children)
                self._decide_all(self.sched.fanout(src, bid, i, step.n, children, now), now)
                for cid, *_ in children:  # inputs stored before the last one arrived
                    call = self._early_calls.pop(cid, None)
                    if call is not None:
                        self._decide_all(self.sched.step_stored(cid, call), now)

    def _on_step(self, src: int, bid: int, i: int, tid: Any, attempt: int, step: Any, duration: float,
                 now: float) -> None:
        """checkpoint="none": the worker goes on with the next step; only the lease moves."""
        if self.sched.step_begin(src, bid, i, tid, step.n, now):
            self._decide_all(self.sched.step_done(src, bid, i, step.n, step.n + 1, step.needs, step.timeout, True,
                                                  now, stored=False), now)
        else:
            self._decide_all(self.sched.discarded(src, now), now)

    def _steps(self) -> Sink:
        """Where step outputs are stored: beside the output (workers read their inputs there), or in memory."""
        if self._steps_sink is None:
            from ..sinks import open_sink

            self._steps_sink = open_sink(self.steps_dir)
        return self._steps_sink

    @staticmethod
    def _ckpt_key(tid: Any, step: Any) -> str:
        base = check_id(tid) if step.child is None else child_id(tid, step.child)
        return f"{base}.s{step.n + 1}"

    def _steps_stored(self, ready: list[tuple[Any, Meta]]) -> None:
        """Step outputs are durable: journal them, and let their next steps run anywhere."""
        from ..steps import StepCall

        sink = self._steps()
        for key, meta in ready:
            step, tid = meta["step"], meta["tid"]
            target = tid if step.child is None else child_id(tid, step.child)
            if sink.in_memory:
                value = sink.results.pop(key)  # type: ignore[attr-defined]
                call = StepCall(step.n + 1, step.next, step.needs, step.timeout, None, value, True)
            else:
                path = str(sink.path / (key + EXT[meta["kind"]]))  # type: ignore[operator]
                call = StepCall(step.n + 1, step.next, step.needs, step.timeout, path)
                self._ckpts.setdefault(tid, []).append(path)
                if self.journal is not None:
                    self.journal.step(target, step.n + 1, step.next, step.needs, step.timeout, path,
                                      meta.get("hash", 0), parent=tid if step.child is not None else None,
                                      ran=step.ran)
            if step.child is not None and tid in self._fan:  # the fan-out is not complete: keep it for then
                self._early_calls[target] = call
                continue
            self._decide_all(self.sched.step_stored(target, call), time.monotonic())

    def finish_steps(self, complete: bool) -> None:
        """The run ended: keep every step's output in the output (``keep_steps``) or remove the
        folder of step outputs once no unfinished task needs it."""
        if self._steps_sink is None or self._steps_sink.in_memory:
            return
        import shutil

        self._steps_sink.close(complete=True)
        root = Path(self.steps_dir or "")
        if self.opts.keep_steps and complete:
            from ..sinks.keep import keep_steps

            keep_steps(self.sink, root, None if self.journal is None else self.journal.path)
        if complete:
            shutil.rmtree(root, ignore_errors=True)
