"""`reaper-doctor trace PID`: signal tracepoint counts beside /proc facts.

`run_trace` drives a `tracefs.SignalTrace` and a `ChildWatch` (children of
the target seen in /proc), then `trace_findings` / `trace_verdict` judge the
result with no I/O, and `render_text` / `render_json` turn it into text.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from .collect import child_states, read_stat, sigchld_of
from .diagnose import trace_findings as diagnose_trace
from .model import Finding, Severity
from .render.json import finding_document
from .tracefs import SignalCounts, SignalTrace, TracefsError, TraceTargetGone, signal_name

SCHEMA = "reaper-doctor/trace/1"
TICK_S = 0.1          # how often the pipe is drained and /proc looked at


# ---------------------------------------------------------------- /proc
# (read through collect.py, the package's one /proc reader)


def target_alive(pid: int) -> bool:
    """False once `pid` is gone or a zombie (it exited; its parent has not reaped it)."""
    st = read_stat(pid)
    return st is not None and st.state not in ("Z", "X", "x")


class ChildWatch:
    """Children of a process followed across polls of /proc.

    A child counts as exited when it is seen alive and later seen as a
    zombie or not at all. A child that is born and reaped between two polls
    is never seen: `exited` is a lower bound (the signal counts are not).
    """

    def __init__(self, pid: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.pid = pid
        self.clock = clock
        self.alive: set[int] = set()
        self.zombie_since: dict[int, float] = {}   # zombie child -> first seen as one
        self.zombies_before: int | None = None     # zombies at the first poll
        self.exited = 0
        self.reaped = 0                            # zombies or live children that vanished

    def poll(self) -> bool:
        """Look again; False (and nothing updated) once the target itself is gone."""
        states = child_states(self.pid)
        if not target_alive(self.pid):
            return False
        now = self.clock()
        zombies = {p for p, s in states.items() if s == "Z"}
        if self.zombies_before is None:
            self.zombies_before = len(zombies)
        for p in self.alive - set(states):
            self.exited += 1
            self.reaped += 1
        for p in self.alive & zombies:
            self.exited += 1
        self.reaped += len(set(self.zombie_since) - zombies)
        self.zombie_since = {p: self.zombie_since.get(p, now) for p in zombies}
        self.alive = set(states) - zombies
        return True

    @property
    def zombies(self) -> int:
        return len(self.zombie_since)

    def persistent_zombies(self, grace_s: float) -> int:
        """Zombies seen as zombies for at least `grace_s` (DESIGN.md: "persist")."""
        now = self.clock()
        return sum(1 for t in self.zombie_since.values() if now - t >= grace_s)


# ----------------------------------------------------------------- model


@dataclass(frozen=True)
class TraceSample:
    """One interval: signal counts in it, /proc counts at its end."""

    t_s: float
    counts: SignalCounts
    children_exited: int      # during this interval
    zombies: int              # at its end

    def as_dict(self) -> dict[str, Any]:
        c = self.counts
        return {"t_s": round(self.t_s, 3), "generated": c.generated, "merged": c.merged,
                "delivered": c.delivered, "ignored": c.ignored,
                "children_exited": self.children_exited, "zombies": self.zombies}


@dataclass(frozen=True)
class TraceResult:
    """Everything one trace saw. `ended`: "duration", "interrupted" or "target-exited"."""

    pid: int
    signum: int
    duration_s: float
    interval_s: float
    counts: SignalCounts
    children_exited: int
    zombies_left: int
    zombies_persisting: int          # of zombies_left, those older than grace_s
    zombies_before: int
    disposition: str | None          # SIGCHLD disposition at the end (or the start)
    ended: str
    grace_s: float
    instance: str
    samples: tuple[TraceSample, ...] = field(default_factory=tuple)

    @property
    def signal(self) -> str:
        return signal_name(self.signum)


# ------------------------------------------------------------------ run


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While tracing, SIGTERM/SIGHUP end the trace like Ctrl-C, so the
    instance is removed (a default SIGTERM would skip every `finally`)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def run_trace(pid: int, signum: int = signal.SIGCHLD, *, duration_s: float | None = None,
              interval_s: float = 1.0, grace_s: float = 1.0, tracefs: str | None = None,
              on_start: Callable[[SignalTrace], None] | None = None,
              on_sample: Callable[[TraceSample], None] | None = None,
              on_target_exit: Callable[[float], None] | None = None,
              clock: Callable[[], float] = time.monotonic) -> TraceResult:
    """Trace `signum` for `pid` until `duration_s` (None: until Ctrl-C or the
    target exits). Raises tracefs.TracefsError before anything starts."""
    watch = ChildWatch(pid, clock)
    if not watch.poll():
        raise TraceTargetGone(f"no process with PID {pid}")
    disposition = sigchld_of(pid)
    samples: list[TraceSample] = []
    ended = "duration"
    with _sigterm_as_interrupt(), SignalTrace(pid, signum, tracefs=tracefs) as tr:
        instance = str(tr.instance)
        t0 = clock()
        last_t, last_exited = t0, watch.exited
        next_sample = t0 + interval_s

        def sample(now: float) -> None:
            nonlocal last_t, last_exited
            s = TraceSample(t_s=now - t0, counts=tr.take_interval(),
                            children_exited=watch.exited - last_exited, zombies=watch.zombies)
            last_t, last_exited = now, watch.exited
            samples.append(s)
            if on_sample is not None:
                on_sample(s)

        try:
            if on_start is not None:
                on_start(tr)
            while True:
                now = clock()
                end = t0 + duration_s if duration_s is not None else None
                if end is not None and now >= end:
                    break
                wake = min(next_sample, now + TICK_S, end if end is not None else now + TICK_S)
                time.sleep(max(0.0, wake - now))  # the tick of a sampler, not a wait
                tr.read()
                now = clock()
                if not watch.poll():
                    ended = "target-exited"
                    if on_target_exit is not None:
                        on_target_exit(now - t0)
                    break
                if now >= next_sample:
                    sample(now)
                    next_sample += interval_s * max(1, int((now - next_sample) // interval_s) + 1)
        except KeyboardInterrupt:
            ended = "interrupted"
        end_t = clock()
        tr.read()
        if ended != "target-exited":
            watch.poll()
            disposition = sigchld_of(pid) or disposition
        if end_t - last_t > 0.05 or not samples:
            sample(end_t)
        totals = tr.totals
    return TraceResult(
        pid=pid, signum=signum, duration_s=end_t - t0, interval_s=interval_s, counts=totals,
        children_exited=watch.exited, zombies_left=watch.zombies,
        zombies_persisting=watch.persistent_zombies(grace_s),
        zombies_before=watch.zombies_before or 0, disposition=disposition, ended=ended,
        grace_s=grace_s, instance=instance, samples=tuple(samples))


# ------------------------------------------ several traces, in the background


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
        self._stack.enter_context(_sigterm_as_interrupt())
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


# ------------------------------------------------------------- diagnose


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


def trace_findings(r: TraceResult) -> list[Finding]:
    """Findings of a SIGCHLD trace: RD101/RD102/RD103 when zombies persist
    (judged by `diagnose.trace_findings`)."""
    if r.signum != signal.SIGCHLD:
        return []
    return diagnose_trace(r.pid, r.counts, disposition=r.disposition,
                          zombies_persisting=r.zombies_persisting,
                          zombies_left=r.zombies_left, children_exited=r.children_exited)


def trace_verdict(r: TraceResult) -> str:
    """One line saying what the numbers mean."""
    c, name = r.counts, r.signal
    gone = f"PID {r.pid} exited during the trace; " if r.ended == "target-exited" else ""
    lost = (f" (the ring buffer dropped {c.lost_events} events: counts are low)"
            if c.lost_events else "")
    if c.generated == 0 and c.delivered == 0:
        what = " (no child exited, stopped or continued)" if r.signum == signal.SIGCHLD else ""
        return f"{gone}no {name} was sent to PID {r.pid} in {r.duration_s:.1f} s{what}{lost}"
    if r.signum != signal.SIGCHLD:
        return (f"{gone}{c.generated} {name} sent, {c.merged} merged into one already pending, "
                f"{c.ignored} ignored, {c.delivered} delivered{lost}")
    found = trace_findings(r)
    if found:
        code, z = found[0].code, r.zombies_persisting
        if code == "RD102":
            body = (f"{c.merged} of {c.generated} SIGCHLD merged; the handler ran "
                    f"{_times(c.delivered)}; {z} zombies left: a wait-once handler")
        elif code == "RD103":
            body = (f"{c.generated} SIGCHLD sent while blocked, {c.merged} merged, "
                    f"{c.delivered} delivered; {z} zombies left: SIGCHLD blocked, never waited")
        else:
            body = (f"{c.generated} SIGCHLD sent and {c.ignored} discarded (no handler); "
                    f"{z} zombies left: nobody calls waitpid")
        return f"{gone}{body} — see `reaper-doctor explain {code}`{lost}"
    if r.disposition == "ignored":
        return (f"{gone}{c.generated} SIGCHLD sent and ignored (SIG_IGN): the kernel reaps "
                f"the children itself; 0 zombies left{lost}")
    young = (f" ({r.zombies_left} younger than {r.grace_s:g} s, still being reaped)"
             if r.zombies_left else "")
    return (f"{gone}{c.generated} SIGCHLD sent, {c.merged} merged, the handler ran "
            f"{_times(c.delivered)}, and every child that exited was reaped: 0 zombies "
            f"left{young} — healthy (a waitpid loop reaps all per signal){lost}")


def exit_code(findings: list[Finding]) -> int:
    """0: no finding of severity warning or worse; 1: at least one (DESIGN.md)."""
    return 1 if any(f.severity.rank >= Severity.WARNING.rank for f in findings) else 0


# --------------------------------------------------------------- render


def result_document(r: TraceResult) -> dict[str, Any]:
    """The `reaper-doctor/trace/1` JSON document (contract keys first)."""
    c = r.counts
    return {
        "schema": SCHEMA, "pid": r.pid, "signal": r.signal,
        "duration_s": round(r.duration_s, 3),
        "generated": c.generated, "merged": c.merged, "delivered": c.delivered,
        "ignored": c.ignored, "children_exited": r.children_exited,
        "zombies_left": r.zombies_left,
        "findings": [finding_document(f) for f in trace_findings(r)],
        "queued": c.queued, "overflow_fail": c.overflow_fail, "lose_info": c.lose_info,
        "other_result": c.other_result, "lost_events": c.lost_events,
        "zombies_persisting": r.zombies_persisting, "zombies_before": r.zombies_before,
        "grace_s": r.grace_s, "sigchld": r.disposition, "ended": r.ended,
        "interval_s": r.interval_s, "instance": r.instance,
        "verdict": trace_verdict(r),
        "samples": [s.as_dict() for s in r.samples],
    }


def render_json(r: TraceResult) -> str:
    return json.dumps(result_document(r), indent=2)


SAMPLE_HEADER = (f"{'t_s':>7}  {'generated':>9}  {'merged':>6}  {'delivered':>9}  "
                 f"{'ignored':>7}  {'exited':>6}  {'zombies':>7}")


def render_sample(s: TraceSample) -> str:
    c = s.counts
    return (f"{s.t_s:7.1f}  {c.generated:9d}  {c.merged:6d}  {c.delivered:9d}  "
            f"{c.ignored:7d}  {s.children_exited:6d}  {s.zombies:7d}")


def render_text(r: TraceResult) -> str:
    """The summary printed at the end (the interval lines are printed as they come)."""
    from tabulate import tabulate

    c = r.counts
    rows = [
        ("generated", c.generated, f"{r.signal} sent to PID {r.pid}"),
        ("merged", c.merged, "already pending: merged, never seen on its own"),
        ("delivered", c.delivered, "dequeued by the process (handler runs)"),
        ("ignored", c.ignored, "discarded by the disposition"),
    ]
    if c.overflow_fail or c.lose_info or c.other_result:
        rows.append(("other", c.overflow_fail + c.lose_info + c.other_result,
                     f"overflow_fail {c.overflow_fail}, lose_info {c.lose_info}"))
    if r.signum == signal.SIGCHLD:
        rows += [("children exited", r.children_exited, "seen in /proc"),
                 ("zombies left", r.zombies_left,
                  f"at the end ({r.zombies_before} before the trace)")]
    ended = {"duration": "duration reached", "interrupted": "interrupted",
             "target-exited": "the target exited"}[r.ended]
    head = (f"PID {r.pid}: {r.signal} for {r.duration_s:.1f} s ({ended}); "
            f"SIGCHLD disposition {r.disposition or 'unknown'}")
    lines = [head, tabulate(rows, tablefmt="plain", colalign=("left", "right", "left")),
             f"verdict: {trace_verdict(r)}"]
    if c.lost_events:
        lines.append(f"warning: the ring buffer dropped {c.lost_events} events")
    return "\n".join(lines)
