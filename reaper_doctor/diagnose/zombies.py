"""Zombie rules: which zombies persist, and RD101/RD102/RD103 by the parent's
SIGCHLD disposition."""

from __future__ import annotations

from collections import Counter
from typing import Callable, Collection, Iterable

from ..model import (
    Finding,
    ProcessInfo,
    Snapshot,
)
from ..model.kernel import ExitStatus
from .containers import init_not_reaping, namespace_inits
from .findings import MAX_EVIDENCE_PIDS, finding

# PID 1 on some machines reaps orphans only every ~1-2 s:
# its zombies must persist longer before they count.
PID1_GRACE_S = 3.0


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
    """RD101/RD102/RD103 by the parent's SIGCHLD handling, or RD104 when the
    parent is a namespace's PID 1 (a slow reaper, as PID 1 is)."""
    slow = {*slow_reapers, *namespace_inits(later)}
    by_parent: dict[int, list[ProcessInfo]] = {}
    for z in persistent_zombies(earlier, later, grace_s, slow):
        by_parent.setdefault(z.ppid, []).append(z)
    if not by_parent:
        return
    # Each parent's zombies now, persistent or not. With one sample every
    # zombie "persists": those are the groups themselves.
    zombies_now = ({ppid: len(zombies) for ppid, zombies in by_parent.items()}
                   if earlier is later else Counter(z.ppid for z in later.zombies))
    elapsed = later.taken_at - earlier.taken_at
    for ppid, zombies in sorted(by_parent.items()):
        parent = later.processes.get(ppid)
        if parent is None and later.target_parent and later.target_parent.pid == ppid:
            parent = later.target_parent
        yield _zombie_finding(ppid, parent, zombies, zombies_now[ppid], elapsed)


def _zombie_finding(ppid: int, parent: ProcessInfo | None, zombies: list[ProcessInfo],
                    all_now: int, elapsed_s: float) -> Finding:
    disposition = parent.sigchld if parent else None
    statuses = exit_status_counts(zombies)
    pids = sorted([z.pid for z in zombies])
    who = f"PID {ppid}" + (f" ({parent.name})" if parent else "")
    count = len(zombies)
    noun = "zombie child" if count == 1 else "zombie children"
    if elapsed_s:
        seen = f"{count} {noun} of {who} {'persists' if count == 1 else 'persist'} over {elapsed_s:.1f} s"
    else:   # one sample (--grace 0): seen once, persistence not checked
        seen = f"{count} {noun} of {who} in one sample"
    evidence = dict(
        ppid=ppid, count=count, zombies_now=all_now, sigchld=disposition or "unknown",
        sigchld_pending=bool(parent and parent.sigchld_pending),
        exit_statuses=statuses, pids=pids[:MAX_EVIDENCE_PIDS],
        persisted_s=round(elapsed_s, 3))
    if parent is not None and parent.is_ns_init:
        return init_not_reaping(parent, seen, evidence)
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


def exit_status_describer() -> Callable[[ExitStatus | None], str]:
    """ExitStatus.describe() ("hidden" for None), each distinct status
    described once: for the statuses of one snapshot (a finding, a render).

    A tree of 10,000 zombies holds a handful of distinct statuses, mostly
    shared objects (procfs.decode_wait_status is cached). They are keyed by
    id(), cheaper than hashing the tuple: the snapshot keeps every status
    alive while this is in use.
    """
    texts: dict[int, str] = {}

    def describe(status: ExitStatus | None) -> str:
        if status is None:
            return "hidden"
        text = texts.get(id(status))
        if text is None:
            text = texts[id(status)] = status.describe()
        return text

    return describe


def exit_status_counts(zombies: Iterable[ProcessInfo]) -> dict[str, int]:
    """{"exit 0": 412, "SIGKILL": 3, ...}: the zombies' exit statuses, most
    common first (ties in order of appearance)."""
    describe = exit_status_describer()
    return dict(Counter([describe(z.exit_status) for z in zombies]).most_common())
