"""`reaper-doctor trace PID`: signal tracepoint counts beside /proc facts.

`run_trace` drives a SignalTrace and a ChildWatch (children of the target
seen in /proc); diagnose/trace.py judges the result, render/trace.py
turns it into text or JSON."""

from __future__ import annotations

import signal
import time
from typing import Callable

from ..collect.process import disposition_of
from ..collect.tasks import child_states, read_stat
from ..model.trace import TraceResult, TraceSample
from ..system.tracefs import SignalTrace, TraceTargetGone
from ..system.tracers import TICK_S, sigterm_ends_trace

# (read through collect/, the package's one /proc reader)


def target_alive(pid: int) -> bool:
    """False once `pid` is gone or a zombie (it exited; its parent has not reaped it)."""
    st = read_stat(pid)
    return st is not None and st.state not in ("Z", "X", "x")


class ChildWatch:
    """Children of a process followed across polls of /proc.

    A child counts as exited when it shows up as a zombie that was not
    there at the first poll (seen alive before or not), or when it is seen
    alive and then not at all (reaped between two polls). A child born and
    reaped between two polls is never seen: `exited` is a lower bound (the
    signal counts are not).
    """

    def __init__(self, pid: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.pid = pid
        self.clock = clock
        self.alive: set[int] = set()
        self.zombie_since: dict[int, float] = {}   # zombie child -> first seen as one
        self.zombies_before: int | None = None     # zombies at the first poll
        self.old_zombies: set[int] = set()         # those zombies: exited before the trace
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
            self.old_zombies = set(zombies)
        vanished = self.alive - set(states)        # exited and reaped since the last look
        self.exited += len(vanished)
        self.reaped += len(vanished)
        self.exited += len(zombies - set(self.zombie_since) - self.old_zombies)
        self.reaped += len(set(self.zombie_since) - zombies)
        self.zombie_since = {p: self.zombie_since.get(p, now) for p in zombies}
        self.alive = set(states) - zombies
        return True

    @property
    def zombies(self) -> int:
        return len(self.zombie_since)

    def persistent_zombies(self, grace_s: float) -> int:
        """Zombies seen as zombies for at least `grace_s`: those that persist."""
        now = self.clock()
        return sum(1 for t in self.zombie_since.values() if now - t >= grace_s)


def run_trace(pid: int, signum: int = signal.SIGCHLD, *, duration_s: float | None = None,
              interval_s: float = 1.0, grace_s: float = 1.0, tracefs: str | None = None,
              on_start: Callable[[SignalTrace], None] | None = None,
              on_sample: Callable[[TraceSample], None] | None = None,
              on_target_exit: Callable[[float], None] | None = None,
              clock: Callable[[], float] = time.monotonic) -> TraceResult:
    """Trace `signum` for `pid` until `duration_s` (None: until Ctrl-C or the
    target exits). Raises tracefs.TracefsError before anything starts."""
    # The children are looked at only while the tracepoints count, and the
    # counts read after each look: every exit the watch counts was traced,
    # so children_exited <= generated (missed children only widen the gap).
    if not target_alive(pid):
        raise TraceTargetGone(f"no process with PID {pid}")
    watch = ChildWatch(pid, clock)
    disposition = disposition_of(pid, signum)
    samples: list[TraceSample] = []
    ended = "duration"
    with sigterm_ends_trace(), SignalTrace(pid, signum, tracefs=tracefs) as tr:
        if not watch.poll():
            raise TraceTargetGone(f"no process with PID {pid}")
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
                alive = watch.poll()
                tr.read()
                now = clock()
                if not alive:
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
        if ended != "target-exited":
            watch.poll()
            disposition = disposition_of(pid, signum) or disposition
        tr.read()
        if end_t - last_t > 0.05 or not samples:
            sample(end_t)
        totals = tr.totals
    return TraceResult(
        pid=pid, signum=signum, duration_s=end_t - t0, interval_s=interval_s, counts=totals,
        children_exited=watch.exited, zombies_left=watch.zombies,
        zombies_persisting=watch.persistent_zombies(grace_s),
        zombies_before=watch.zombies_before or 0, disposition=disposition, ended=ended,
        grace_s=grace_s, instance=instance, samples=tuple(samples))
