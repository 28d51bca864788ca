"""Limit rules: RLIMIT_NOFILE, RLIMIT_NPROC and the pids cgroup near their ceiling."""

from __future__ import annotations

from typing import Iterable

from ..model import Finding, LimitUsage, NprocUsage, PidsCgroup, Severity, Snapshot
from .findings import finding

WARN_RATIO = 0.80
ERROR_RATIO = 0.95


def _limit_severity(usage: LimitUsage) -> Severity | None:
    ratio = usage.ratio
    if ratio is None or ratio < WARN_RATIO:
        return None
    return Severity.ERROR if ratio >= ERROR_RATIO else Severity.WARNING


def limit_findings(snap: Snapshot) -> Iterable[Finding]:
    """RD301 for each process of the tree, RD302 and RD303 for the target."""
    for pid, usage in sorted(snap.nofile.items()):
        yield from nofile_findings(pid, usage)
    if snap.nproc:
        yield from nproc_findings(snap.target, snap.nproc, len(snap.zombies))
    if snap.pids_cgroup:
        yield from pids_cgroup_findings(snap.target, snap.pids_cgroup)


def nofile_findings(pid: int, usage: LimitUsage) -> Iterable[Finding]:
    """RD301: `pid`'s open descriptors near its soft RLIMIT_NOFILE."""
    severity = _limit_severity(usage)
    if severity:
        yield finding(
            "RD301", pid,
            f"PID {pid} has {usage.used} of {usage.soft} descriptors open "
            f"({usage.ratio:.0%} of ulimit -n): at the limit accept() and open() fail with "
            "EMFILE; find what is not closed (reaper-doctor watch shows the rate)",
            severity, used=usage.used, soft=usage.soft, hard=usage.hard,
            ratio=round(usage.ratio or 0, 3))


def nproc_findings(pid: int, nproc: NprocUsage, zombies: int) -> Iterable[Finding]:
    """RD302: the tasks of `pid`'s real UID near its soft RLIMIT_NPROC
    (`zombies`: how many of them are zombies of the tree looked at)."""
    severity = _limit_severity(nproc) if nproc.enforced else None
    if severity:
        yield finding(
            "RD302", pid,
            f"UID {nproc.uid} runs {nproc.used} of {nproc.soft} tasks ({nproc.ratio:.0%} of "
            f"ulimit -u; threads and zombies count, {zombies} zombies in this tree): at the "
            "limit fork() fails with EAGAIN; reap children and end idle threads",
            severity, uid=nproc.uid, used=nproc.used, soft=nproc.soft, hard=nproc.hard,
            zombies_in_tree=zombies, ratio=round(nproc.ratio or 0, 3))


def pids_cgroup_findings(pid: int, cg: PidsCgroup) -> Iterable[Finding]:
    """RD303: `pid`'s pids cgroup near its pids.max."""
    if not cg.max or cg.current is None:
        return
    usage = LimitUsage(used=cg.current, soft=cg.max, hard=cg.max)
    severity = _limit_severity(usage)
    if severity:
        yield finding(
            "RD303", pid,
            f"the pids cgroup {cg.path} holds {cg.current} of {cg.max} tasks "
            f"({usage.ratio:.0%} of pids.max): at the limit fork() fails with EAGAIN, "
            "even for root; reap zombies and end idle threads",
            severity, path=cg.path, current=cg.current, max=cg.max, refusals=cg.refusals,
            ratio=round(usage.ratio or 0, 3))
