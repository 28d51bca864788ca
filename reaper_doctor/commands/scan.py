"""Sample, wait, sample again, diagnose: the `scan` use case.

The only module that sleeps: collect reads, diagnose judges, and this
decides when to read.
"""

from __future__ import annotations

import time
from typing import Callable, Mapping, Protocol, Sequence

from ..collect.fds import fd_counts
from ..collect.sockets import listen_queues, look_at_queued
from ..collect.proc import ProcessGone
from ..collect.snapshot import collect_snapshot, holders_of_queued
from ..diagnose import diagnose
from ..diagnose.containers import namespace_inits
from ..diagnose.trace import with_measured_sigchld
from ..diagnose.zombies import PID1_GRACE_S
from ..model import FdCounts, Report, Snapshot, TargetReport

# Light samples (descriptor counts only) between the two full samples:
# RD203 needs a count that rises in every interval over >= 3 samples.
LIGHT_SAMPLES = 2


class SignalTracer(Protocol):
    """What `scan --trace` needs of a tracer (trace.SigchldTracer; no tracefs here)."""

    def attach(self, pid: int) -> bool: ...        # start tracing SIGCHLD of pid
    def measure(self) -> Mapping[int, Mapping[str, float]]: ...  # counts; then stop


def scan(pids: Sequence[int], *, grace_s: float = 1.0, with_fd_list: bool = False,
         sleep: Callable[[float], None] = time.sleep,
         tracer: SignalTracer | None = None, trace_s: float = 0.0) -> Report:
    """Scan each target: one sample, then (grace_s > 0) another `grace_s`
    later, and diagnose each from its samples. Between them, LIGHT_SAMPLES
    descriptor counts of every live process of each tree, evenly spaced,
    for RD203, with the accept queues of its listeners that had one (RD401).

    With a `tracer` (`scan --trace S`), the window lasts at least `trace_s`
    and each parent that has zombies at the first sample and catches SIGCHLD
    is traced through it; its RD102 gets the kernel's counts.

    Raises ProcessGone if a target does not exist at the first sample; a
    target that exits before the second sample is reported from the first,
    marked gone.
    """
    if tracer is not None:
        grace_s = max(grace_s, trace_s)
    wait_s = grace_s
    measured: Mapping[int, Mapping[str, float]] = {}
    first = {pid: collect_snapshot(pid, with_fd_list=with_fd_list) for pid in pids}
    samples: dict[int, list[Snapshot]] = {pid: [snap] for pid, snap in first.items()}
    gone: set[int] = set()
    light: dict[int, list[FdCounts]] = {pid: [_counts_of(snap)] for pid, snap in first.items()}
    if grace_s > 0:
        slow = {1}.union(*(namespace_inits(snap) for snap in first.values()))
        if any(z.ppid in slow for snap in first.values() for z in snap.zombies):
            wait_s = max(wait_s, PID1_GRACE_S)  # PID 1 (any namespace's) reaps lazily
        traced_at = _attach_tracer(tracer, first)
        live = {pid: [p.pid for p in snap.processes.values() if not p.is_zombie]
                for pid, snap in first.items()}
        # RD401 needs the accept queue non-empty in every sample: follow
        # the listeners that have a queue now, and look at their holders.
        queued = {pid: holders_of_queued(snap.fds) for pid, snap in first.items()}
        for k in range(1, LIGHT_SAMPLES + 1):
            _sleep_until(first, wait_s * k / (LIGHT_SAMPLES + 1), sleep)
            for pid in pids:
                counts = fd_counts(live[pid])
                if queued[pid]:
                    queues = listen_queues(pid, queued[pid])
                    counts = counts._replace(queues=queues, holders=look_at_queued(
                        {i: h for i, h in queued[pid].items() if queues.get(i)}))
                light[pid].append(counts)
        _sleep_until(first, wait_s, sleep)
        if tracer is not None:
            remaining = traced_at + trace_s - time.monotonic() if traced_at else 0.0
            if remaining > 0:
                sleep(remaining)  # the trace itself lasts trace_s
            measured = tracer.measure()
        for pid in pids:
            try:
                later = collect_snapshot(pid, with_fd_list=with_fd_list)
            except ProcessGone:
                gone.add(pid)
                continue
            samples[pid].append(later)
            light[pid].append(_counts_of(later))
            if later.processes[pid].is_zombie and not first[pid].processes[pid].is_zombie:
                gone.add(pid)  # it exited between the samples; its zombie is still reported
    targets = []
    for pid in pids:
        snaps = samples[pid]
        # A target that vanished has one sample: too few to judge persistence.
        findings = (diagnose(snaps, grace_s=grace_s, fd_series=light[pid])
                    if len(snaps) > 1 or grace_s == 0 else [])
        findings = with_measured_sigchld(findings, measured)
        targets.append(TargetReport(pid=pid, snapshot=snaps[-1], findings=tuple(findings),
                                    samples=len(snaps), grace_s=grace_s, gone=pid in gone,
                                    elapsed_s=snaps[-1].taken_at - snaps[0].taken_at,
                                    pid1_wait=wait_s > grace_s))
    return Report(targets=tuple(targets))


def _attach_tracer(tracer: SignalTracer | None, first: dict[int, Snapshot]) -> float | None:
    """Trace every parent of a zombie that catches SIGCHLD (only they can get
    RD102: the zombies must be there at the first sample); when tracing
    began, None if nothing is traced."""
    if tracer is None:
        return None
    parents = {}
    for snap in first.values():
        for z in snap.zombies:
            parent = snap.processes.get(z.ppid) or snap.target_parent
            if parent is not None and parent.pid == z.ppid and parent.sigchld == "caught":
                parents[parent.pid] = parent
    attached = [pid for pid in sorted(parents) if tracer.attach(pid)]
    return time.monotonic() if attached else None


def _counts_of(snap: Snapshot) -> FdCounts:
    return FdCounts(taken_at=snap.taken_at,
                    counts={pid: fds.open for pid, fds in snap.fds.items()})


def _sleep_until(first: dict[int, Snapshot], wait_s: float,
                 sleep: Callable[[float], None]) -> None:
    # Measure from the first sample's time: collecting many targets takes a while.
    start = min(s.taken_at for s in first.values())
    remaining = start + wait_s - time.monotonic()
    if remaining > 0:
        sleep(remaining)


__all__ = ["scan", "ProcessGone", "SignalTracer"]
