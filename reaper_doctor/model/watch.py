"""`watch`: its light samples, the limits they approach, its report."""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, NamedTuple

from .report import exit_code

if TYPE_CHECKING:
    from .report import Finding

class WatchSample(NamedTuple):
    """One `watch` sample. None: not readable (or no such limit)."""

    t_s: float                 # seconds since the first sample
    zombies: int               # zombies in the target's tree
    fds: int | None            # open descriptors of the target
    close_wait: int | None     # CLOSE_WAIT sockets on the tree's listening ports
    tasks: int | None          # tasks of the target's real UID
    pids_cgroup: int | None    # pids.current of the target's pids cgroup


WATCH_SERIES = ("zombies", "fds", "close_wait", "tasks", "pids_cgroup")


class WatchLimits(NamedTuple):
    """The limits `watch` counts down to, read once at the start."""

    nofile: int | None = None          # soft RLIMIT_NOFILE of the target
    nproc: int | None = None           # soft RLIMIT_NPROC of its real UID
    nproc_enforced: bool = True        # False for UID 0 / CAP_SYS_RESOURCE
    pids_cgroup: int | None = None     # pids.max; None: no limit


class WatchReport(NamedTuple):
    """What `watch` saw over its run and what it makes of it."""

    pid: int
    name: str
    interval_s: float
    samples: tuple[WatchSample, ...]
    limits: WatchLimits
    rates_per_min: Mapping[str, float | None]   # least-squares slope of each series
    eta_s: Mapping[str, float | None]           # "nofile" "nproc" "pids_cgroup"
    findings: tuple[Finding, ...]
    ended: str                                  # "duration" | "interrupted" | "target-exited" (as trace)
    listen_ports: tuple[int, ...] = ()

    @property
    def exit_code(self) -> int:
        return exit_code(self.findings)
