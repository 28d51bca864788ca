"""Snapshots in, findings out: small pure functions, no I/O, no clock.

"Persist" (DESIGN.md): the same PID -- the same process, so the same
start time too -- is a zombie in two samples at least `grace_s` apart.
Comparing counts instead of PIDs would flag every healthy fork server,
whose zombies come and go.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Collection, Iterable, Mapping, Protocol, Sequence

from .catalog import CODES
from .model import Finding, LimitUsage, ProcessInfo, Severity, Snapshot

# PID 1 on some machines reaps orphans only every ~1-2 s (linux-facts 8):
# its zombies must persist longer before they count.
PID1_GRACE_S = 3.0
WARN_RATIO = 0.80
ERROR_RATIO = 0.95
MAX_EVIDENCE_PIDS = 50


def finding(code: str, pid: int, message: str, severity: Severity | None = None,
            **evidence: object) -> Finding:
    meta = CODES[code]
    return Finding(code=code, slug=meta.slug, severity=severity or Severity(meta.severity),
                   pid=pid, message=message, evidence=evidence)


def diagnose(samples: Sequence[Snapshot], *, grace_s: float) -> list[Finding]:
    """All findings from the samples of one target, oldest first.

    With one sample (`--grace 0`) there is no persistence check: every
    zombie present counts.
    """
    earlier, later = samples[0], samples[-1]
    found = [*zombie_findings(earlier, later, grace_s), *limit_findings(later)]
    return sorted(found, key=lambda f: (f.pid, f.code))


def persistent_zombies(earlier: Snapshot, later: Snapshot, grace_s: float,
                       slow_reapers: Collection[int] = (1,)) -> list[ProcessInfo]:
    """Zombies of `later` that were already zombies in `earlier`. Those whose
    parent is in `slow_reapers` (PID 1, subreapers) must persist for
    PID1_GRACE_S at least."""
    zombies = later.zombies
    if earlier is later:
        return zombies
    elapsed = later.taken_at - earlier.taken_at
    if elapsed + 1e-9 < grace_s:
        return []
    before = {z.identity for z in earlier.zombies}
    return [z for z in zombies
            if z.identity in before and (z.ppid not in slow_reapers or elapsed >= PID1_GRACE_S)]


def zombie_findings(earlier: Snapshot, later: Snapshot, grace_s: float,
                    slow_reapers: Collection[int] = (1,)) -> Iterable[Finding]:
    by_parent: dict[int, list[ProcessInfo]] = {}
    for z in persistent_zombies(earlier, later, grace_s, slow_reapers):
        by_parent.setdefault(z.ppid, []).append(z)
    elapsed = later.taken_at - earlier.taken_at
    for ppid, zombies in sorted(by_parent.items()):
        parent = later.processes.get(ppid)
        if parent is None and later.target_parent and later.target_parent.pid == ppid:
            parent = later.target_parent
        yield _zombie_finding(ppid, parent, zombies, later, elapsed)


def _zombie_finding(ppid: int, parent: ProcessInfo | None, zombies: list[ProcessInfo],
                    later: Snapshot, elapsed_s: float) -> Finding:
    disposition = parent.sigchld if parent else None
    statuses = Counter(z.exit_status.describe() if z.exit_status else "hidden" for z in zombies)
    pids = sorted(z.pid for z in zombies)
    all_now = sum(1 for z in later.zombies if z.ppid == ppid)
    who = f"PID {ppid}" + (f" ({parent.name})" if parent else "")
    count = len(zombies)
    noun = "zombie child" if count == 1 else "zombie children"
    seen = f"{count} {noun} of {who} persist" + (f" over {elapsed_s:.1f} s" if elapsed_s else "")
    evidence = dict(
        ppid=ppid, count=count, zombies_now=all_now, sigchld=disposition or "unknown",
        sigchld_pending=bool(parent and parent.sigchld_pending),
        exit_statuses=dict(statuses.most_common()), pids=pids[:MAX_EVIDENCE_PIDS],
        persisted_s=round(elapsed_s, 3))
    if disposition == "blocked":
        pending = " (a SIGCHLD is pending)" if parent and parent.sigchld_pending else ""
        return finding("RD103", ppid,
                       f"{seen}; SIGCHLD is blocked in the parent{pending} and nothing waits: "
                       "unblock SIGCHLD, or wait for it (sigtimedwait) and then loop "
                       "waitpid(-1, WNOHANG) until it returns 0", **evidence)
    if disposition == "caught":
        return finding("RD102", ppid,
                       f"{seen} although the parent catches SIGCHLD: its handler reaps fewer "
                       "children than exit (signals that arrive together merge into one); "
                       "loop os.waitpid(-1, os.WNOHANG) in the handler until it returns 0",
                       **evidence)
    why = {"default": "SIGCHLD is default and nothing calls waitpid",
           "ignored": "SIGCHLD is now ignored, but these exited before and were never waited for",
           None: "the parent's SIGCHLD disposition could not be read and nothing waits"}
    return finding("RD101", ppid,
                   f"{seen}; {why.get(disposition, why[None])}: reap them with "
                   "os.waitpid(-1, os.WNOHANG) in a loop (in a SIGCHLD handler or the "
                   "server loop)", **evidence)


def _limit_severity(usage: LimitUsage) -> Severity | None:
    ratio = usage.ratio
    if ratio is None or ratio < WARN_RATIO:
        return None
    return Severity.ERROR if ratio >= ERROR_RATIO else Severity.WARNING


def limit_findings(snap: Snapshot) -> Iterable[Finding]:
    for pid, usage in sorted(snap.nofile.items()):
        severity = _limit_severity(usage)
        if severity:
            yield finding(
                "RD301", pid,
                f"PID {pid} has {usage.used} of {usage.soft} descriptors open "
                f"({usage.ratio:.0%} of ulimit -n): at the limit accept() and open() fail with "
                "EMFILE; find what is not closed (reaper-doctor watch shows the rate)",
                severity, used=usage.used, soft=usage.soft, hard=usage.hard,
                ratio=round(usage.ratio or 0, 3))
    nproc = snap.nproc
    if nproc and nproc.enforced:
        severity = _limit_severity(nproc)
        if severity:
            zombies = len(snap.zombies)
            yield finding(
                "RD302", snap.target,
                f"UID {nproc.uid} runs {nproc.used} of {nproc.soft} tasks ({nproc.ratio:.0%} of "
                f"ulimit -u; threads and zombies count, {zombies} zombies in this tree): at the "
                "limit fork() fails with EAGAIN; reap children and end idle threads",
                severity, uid=nproc.uid, used=nproc.used, soft=nproc.soft, hard=nproc.hard,
                zombies_in_tree=zombies, ratio=round(nproc.ratio or 0, 3))
    cg = snap.pids_cgroup
    if cg and cg.max and cg.current is not None:
        usage = LimitUsage(used=cg.current, soft=cg.max, hard=cg.max)
        severity = _limit_severity(usage)
        if severity:
            yield finding(
                "RD303", snap.target,
                f"the pids cgroup {cg.path} holds {cg.current} of {cg.max} tasks "
                f"({usage.ratio:.0%} of pids.max): at the limit fork() fails with EAGAIN, "
                "even for root; reap zombies and end idle threads",
                severity, path=cg.path, current=cg.current, max=cg.max, refusals=cg.refusals,
                ratio=round(usage.ratio or 0, 3))


# ----------------------------------------------------------------------------
# Kernel signal counts (issue 7): `trace`, and `scan --trace`


class SignalTally(Protocol):
    """What these functions read of tracefs.SignalCounts (no tracefs import here)."""

    generated: int
    merged: int
    delivered: int
    ignored: int


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


def trace_findings(pid: int, counts: SignalTally, *, disposition: str | None,
                   zombies_persisting: int, zombies_left: int,
                   children_exited: int) -> list[Finding]:
    """Findings of a SIGCHLD trace of `pid`: RD101/RD102/RD103 when zombies
    persist (`zombies_persisting` of the `zombies_left`, older than the grace)."""
    if zombies_persisting == 0:
        return []
    c, z = counts, zombies_persisting
    evidence = {"generated": c.generated, "merged": c.merged, "delivered": c.delivered,
                "ignored": c.ignored, "children_exited": children_exited,
                "zombies_left": zombies_left, "sigchld": disposition}
    if disposition == "blocked":
        return [finding("RD103", pid, f"SIGCHLD is blocked: {c.generated} sent, "
                        f"{c.delivered} delivered; {z} zombies left", **evidence)]
    if disposition == "caught" or c.delivered > 0:
        return [finding("RD102", pid, f"{c.merged} of {c.generated} SIGCHLD merged; "
                        f"the handler ran {_times(c.delivered)}; {z} zombies left: the "
                        "handler reaps one child per signal; loop waitpid(-1, WNOHANG)",
                        **evidence)]
    if disposition == "default":
        return [finding("RD101", pid, f"SIGCHLD is not caught and nobody calls waitpid: "
                        f"{z} zombies left", **evidence)]
    return []


def measured_sigchld_text(m: Mapping[str, float]) -> str:
    """"measured: 53 of 64 SIGCHLD merged, 11 delivered in 2.0 s" from `scan --trace` counts."""
    generated, merged, delivered = (int(m.get(k, 0)) for k in ("generated", "merged",
                                                                 "delivered"))
    during = f" in {m['duration_s']:.1f} s" if "duration_s" in m else ""
    if generated == 0:
        text = f"measured: no SIGCHLD sent{during} (no child exited while traced)"
    else:
        text = (f"measured: {merged} of {generated} SIGCHLD merged, "
                f"{delivered} delivered{during}")
    if m.get("lost_events"):
        text += f" (the ring buffer dropped {int(m['lost_events'])} events: counts are low)"
    return text


def with_measured_sigchld(findings: Iterable[Finding],
                          measured: Mapping[int, Mapping[str, float]]) -> list[Finding]:
    """`findings`, each RD102 of a parent in `measured` ({pid: {"generated",
    "merged", "delivered", ...}} from `scan --trace`) with those counts added
    to its evidence (`measured`) and its message."""
    out = []
    for f in findings:
        m = measured.get(f.pid)
        if f.code == "RD102" and m is not None:
            f = replace(f, message=f"{f.message}; {measured_sigchld_text(m)}",
                        evidence={**f.evidence, "measured": dict(m)})
        out.append(f)
    return out
