"""Sample a process over time: the `watch` use case.

One full sample at the start (limits, the tree's listening ports, the
pids cgroup), then one light sample per interval (collect.watch_sample:
no descriptor link is read, so the cost does not grow with the target's
fds). Only reads: the target is never signalled.
"""

from __future__ import annotations

import time
from typing import Callable

from ..collect.proc import ProcessGone, require_procfs
from ..collect.snapshot import collect_snapshot
from ..collect.watch import TreeTracker, plan_watch, watch_sample
from ..diagnose.watch import watch_etas, watch_fd_growth, watch_rates
from ..model import WatchLimits, WatchReport, WatchSample


def watch(pid: int, *, interval_s: float = 1.0, duration_s: float | None = None,
          on_start: Callable[[str, WatchLimits], None] = lambda name, limits: None,
          on_sample: Callable[[WatchSample], None] = lambda sample: None,
          sleep: Callable[[float], None] = time.sleep) -> WatchReport:
    """Sample `pid` every `interval_s` for `duration_s` (None: until
    Ctrl-C), then summarise.

    Ctrl-C (KeyboardInterrupt) ends the run with its summary; so does the
    target exiting. Raises ProcessGone only if the target does not exist
    at the start, ProcUnavailable where there is no /proc.
    """
    require_procfs("watch")
    # The tree's descriptors are read once, for its listening ports: about
    # 0.1 s for a target with 20,000 fds, never again.
    first = collect_snapshot(pid)
    me = first.processes[pid]
    if me.is_zombie:
        raise ProcessGone(pid)
    plan = plan_watch(first)
    nofile = first.nofile.get(pid)
    nproc = first.nproc
    cg = first.pids_cgroup
    limits = WatchLimits(nofile=nofile.soft if nofile else None,
                         nproc=nproc.soft if nproc else None,
                         nproc_enforced=bool(nproc and nproc.enforced),
                         pids_cgroup=cg.max if cg else None)
    tracker = TreeTracker(pid, me.uid)
    on_start(me.name, limits)
    samples: list[WatchSample] = []
    ended = "duration"
    t0 = time.monotonic()
    try:
        k = 0
        while True:
            try:
                sample = watch_sample(plan, tracker, t0)
            except ProcessGone:
                ended = "target-exited"
                break
            samples.append(sample)
            on_sample(sample)
            k += 1
            due = t0 + k * interval_s
            now = time.monotonic()
            if now > due:           # late (a busy machine): skip the missed slots
                k = int((now - t0) / interval_s) + 1
                due = t0 + k * interval_s
            if duration_s is not None and due - t0 > duration_s + 1e-9:
                break
            sleep(due - time.monotonic())
    except KeyboardInterrupt:
        ended = "interrupted"
    rates = watch_rates(samples)
    growth = watch_fd_growth(pid, samples, limits.nofile)
    return WatchReport(pid=pid, name=me.name, interval_s=interval_s, samples=tuple(samples),
                       limits=limits, rates_per_min=rates,
                       eta_s=watch_etas(samples, rates, limits),
                       findings=(growth,) if growth else (), ended=ended,
                       listen_ports=tuple(sorted(plan.listen_ports)))

