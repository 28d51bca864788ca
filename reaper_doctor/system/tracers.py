"""Several SIGCHLD traces at once, read in the background (`lesson --trace`,
`scan --trace`)."""

from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import AbstractContextManager, ExitStack
from typing import Callable

from ..model.trace import SignalCounts
from .lifecycle import signals_unwind
from .tracefs import SignalTrace, TracefsError, TraceTargetGone

TICK_S = 0.1          # how often the pipe is drained and /proc looked at


def _interrupt(signum: int) -> BaseException:
    return KeyboardInterrupt()


def sigterm_ends_trace() -> AbstractContextManager[None]:
    """While tracing, SIGTERM/SIGHUP end the trace like Ctrl-C, so the
    instance is removed."""
    return signals_unwind((signal.SIGTERM, signal.SIGHUP), _interrupt)


class SigchldTracer:
    """SIGCHLD of several processes, each in its own private instance, read
    by a background thread (for `lesson --trace` and `scan --trace`).

    Use as a context manager: leaving it (normally, by an exception, by
    Ctrl-C or SIGTERM) stops the reader and removes every instance.
    `attach(pid)` starts a trace; `counts()` gives the totals so far;
    `measure()` gives the totals with durations and detaches everything.

    The thread drains each `trace_pipe` every `tick_s`, so a long window
    does not overflow the ring buffer; one lock serialises it with the
    caller (SignalTrace is not thread-safe).
    """

    def __init__(self, tracefs: str | os.PathLike[str] | None = None, *,
                 signum: int = signal.SIGCHLD, tick_s: float = TICK_S,
                 on_attach: Callable[[int, str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.tracefs = tracefs
        self.signum = signum
        self.tick_s = tick_s
        self.on_attach = on_attach
        self.clock = clock
        self._traces: dict[int, SignalTrace] = {}
        self._started: dict[int, float] = {}
        self.attached: list[int] = []      # every PID ever attached, in order
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stack: ExitStack | None = None

    def __enter__(self) -> SigchldTracer:
        self._stack = ExitStack()
        self._stack.enter_context(sigterm_ends_trace())
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            self.close()
        finally:
            if self._stack is not None:
                self._stack.close()
                self._stack = None

    def attach(self, pid: int) -> bool:
        """Start tracing `pid`; False if it is gone. Raises TracefsError."""
        tr = SignalTrace(pid, self.signum, tracefs=self.tracefs)
        try:
            tr.start()
        except TraceTargetGone:
            return False
        with self._lock:
            self._traces[pid] = tr
            self._started[pid] = self.clock()
            self.attached.append(pid)
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._drain, name="reaper-doctor-trace",
                                            daemon=True)
            self._thread.start()
        if self.on_attach is not None:
            self.on_attach(pid, str(tr.instance))
        return True

    @property
    def pids(self) -> list[int]:
        return sorted(self._traces)

    def _drain(self) -> None:
        while not self._stop.wait(self.tick_s):
            with self._lock:
                for tr in self._traces.values():
                    try:
                        tr.read()
                    except OSError:
                        pass  # the caller's own read() will say what is wrong

    def counts(self) -> dict[int, SignalCounts]:
        """{pid: counts since its attach}, after draining every pipe."""
        with self._lock:
            for tr in self._traces.values():
                tr.read()
            return {pid: tr.totals for pid, tr in self._traces.items()}

    def measure(self) -> dict[int, dict[str, float]]:
        """{pid: {"generated", "merged", "delivered", "ignored", "lost_events",
        "duration_s"}}; then stop: every instance is removed."""
        totals = self.counts()
        now = self.clock()
        out = {pid: {"generated": c.generated, "merged": c.merged, "delivered": c.delivered,
                     "ignored": c.ignored, "lost_events": c.lost_events,
                     "duration_s": round(now - self._started[pid], 3)}
               for pid, c in totals.items()}
        self.close()
        return out

    def close(self) -> None:
        """Stop the reader and remove every instance (idempotent). Raises the
        first TracefsError after trying them all."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error: TracefsError | None = None
        with self._lock:
            traces, self._traces = self._traces, {}
            self._started = {}
        for tr in traces.values():
            try:
                tr.close()
            except TracefsError as e:
                error = error or e
        if error is not None:
            raise error
