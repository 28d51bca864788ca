"""Snapshots in, findings out: small pure functions, no I/O, no clock.

"Persist" (DESIGN.md): the same PID -- the same process, so the same
start time too -- is a zombie in two samples at least `grace_s` apart.
Comparing counts instead of PIDs would flag every healthy fork server,
whose zombies come and go.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Collection, Iterable, Mapping, Protocol, Sequence

from .catalog import CODES
from .model import (
    WATCH_SERIES, FdCounts, FdTable, Finding, LimitUsage, ProcessInfo, Severity, Snapshot, SocketFd,
    WatchLimits, WatchSample,
)
from .containers import describe_place
from .procfs import ExitStatus

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


# RD201. A per-connection worker holds one connection; two or more accepted
# sockets still in CLOSE_WAIT after the grace window -- or one, in a process
# that forks (it hands connections to children and should keep none) -- is
# the leak. One could be a handler still busy with a client that half-closed.
CLOSE_WAIT_MIN = 2
# Accepted sockets shut down (TCP CLOSE, in no table) but still open: a
# listening process may briefly hold a few closed sockets (an outgoing
# connection reset by its peer, a pool); ten that persist is a leak.
CLOSED_TCP_MIN = 10
# RD203 from scan: the count rises in every interval by at least this much,
# and by at least FD_GROWTH_TOTAL over the window (connections come and go).
FD_GROWTH_STEP = 3
FD_GROWTH_TOTAL = 10
# RD203 from watch, judged over the whole run: a least-squares slope > 0
# that explains the samples (R^2) and a fitted growth of at least
# FD_GROWTH_TOTAL descriptors, over at least WATCH_MIN_SAMPLES samples.
WATCH_MIN_R2 = 0.8
WATCH_MIN_SAMPLES = 3


def diagnose(samples: Sequence[Snapshot], *, grace_s: float,
             fd_series: Sequence[FdCounts] = ()) -> list[Finding]:
    """All findings from the samples of one target, oldest first.

    With one sample (`--grace 0`) there is no persistence check: every
    zombie, CLOSE_WAIT socket and queued connection present counts.
    `fd_series`: light samples (descriptor counts) across the window,
    the full samples' counts included, for RD203.
    """
    earlier, later = samples[0], samples[-1]
    leaks = [*close_wait_findings(earlier, later), *fd_growth_findings(fd_series, later.nofile)]
    found = [*zombie_findings(earlier, later, grace_s), *leaks,
             *inherited_listener_findings(earlier, later),
             *accept_backlog_findings(earlier, later, leaks=leaks),
             *limit_findings(later), *pid1_findings(later)]
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


def namespace_inits(snap: Snapshot) -> set[int]:
    """The processes of `snap` that are PID 1 of a PID namespace below the
    host's: every orphan of their namespace comes to them."""
    inits = {p.pid for p in snap.processes.values() if p.is_ns_init}
    if snap.target_parent is not None and snap.target_parent.is_ns_init:
        inits.add(snap.target_parent.pid)
    return inits


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
        return _init_not_reaping(parent, seen, evidence)
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


def _init_not_reaping(init: ProcessInfo, seen: str, evidence: dict[str, object]) -> Finding:
    """RD104: the fix is an init, not the parent's SIGCHLD handling."""
    command = " ".join(init.cmdline) if init.cmdline else init.name
    where = describe_place(True, init.container)
    return finding("RD104", init.pid,
                   f"{seen}; it is {where} (command: {_clip(command)}), and every orphan of "
                   "the namespace comes to it, but it does not reap them: run an init as "
                   "PID 1 (docker run --init, podman run --init, tini or dumb-init as "
                   "ENTRYPOINT; Kubernetes: shareProcessNamespace: true), or make the program "
                   "reap with os.waitpid(-1, os.WNOHANG) in a loop",
                   **evidence, **_namespace_evidence(init))


def pid1_findings(snap: Snapshot) -> Iterable[Finding]:
    """RD105: PID 1 of a namespace that neither catches nor blocks SIGTERM
    (nor waits for it in sigtimedwait). Judged by the masks, not by the
    name: an init may run under another one (podman-init)."""
    for p in sorted(snap.processes.values(), key=lambda p: p.pid):
        if not (p.is_ns_init and p.sigterm in ("default", "ignored")):
            continue
        command = " ".join(p.cmdline) if p.cmdline else p.name
        handling = "ignores SIGTERM" if p.sigterm == "ignored" else "has no SIGTERM handler"
        yield finding(
            "RD105", p.pid,
            f"PID {p.pid} ({p.name}) is {describe_place(True, p.container)}, and {handling} "
            f"(command: {_clip(command)}): the kernel drops a SIGTERM sent to it from "
            "outside, so docker stop, podman stop or kubectl delete waits out its grace period "
            "and then kills; run an init that forwards signals (--init, tini), or handle "
            "SIGTERM in the program", **_namespace_evidence(p))


def _namespace_evidence(p: ProcessInfo) -> dict[str, object]:
    c = p.container
    return dict(ns_pid=p.ns_pid, pid_ns=p.pid_ns, sigterm=p.sigterm or "unknown",
                command=list(p.cmdline) if p.cmdline else None,
                container=c._asdict() if c else None)


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


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
            f = f._replace(message=f"{f.message}; {measured_sigchld_text(m)}",
                           evidence={**f.evidence, "measured": dict(m)})
        out.append(f)
    return out


# Descriptors


def _listening_ports(snap: Snapshot) -> set[int]:
    """TCP ports some process of the tree listens on."""
    return {s.local[1] for fds in snap.fds.values() for s in fds.listeners
            if s.proto.startswith("tcp")}


def _accepted(fds: FdTable, ports: set[int]) -> list[SocketFd]:
    """Connected TCP sockets whose local port is a listening port of the
    tree: connections that came in through accept()."""
    return [s for s in fds.sockets if s.proto.startswith("tcp") and s.state != "LISTEN"
            and s.local[1] in ports]


def close_wait_findings(earlier: Snapshot, later: Snapshot) -> Iterable[Finding]:
    """RD201: accepted sockets a process keeps open after the peer closed.

    Persistence as for zombies: the same socket (inode) held by the same
    process in both samples. Two kinds of evidence: sockets in CLOSE_WAIT
    on a port the tree listens on; and TCP sockets in no socket table
    (shut down, so invisible to ss and psutil) held by a listening process.
    """
    ports = _listening_ports(later)
    for pid, fds in sorted(later.fds.items()):
        info = later.processes.get(pid)
        before = earlier.fds.get(pid)
        if info is None or before is None:
            continue
        if earlier is not later:
            was = earlier.processes.get(pid)
            if was is None or was.identity != info.identity:
                continue
        old_cw = {s.inode for s in before.sockets if s.state == "CLOSE_WAIT"}
        waiting = [s for s in _accepted(fds, ports)
                   if s.state == "CLOSE_WAIT" and s.inode in old_cw]
        old_closed = {inode for _, inode in before.closed_tcp}
        closed = [(fd, inode) for fd, inode in fds.closed_tcp if inode in old_closed]
        own_ports = sorted({s.local[1] for s in fds.listeners if s.proto.startswith("tcp")})
        cw_min = 1 if pid in later.parent_pids else CLOSE_WAIT_MIN
        report_cw = len(waiting) >= cw_min
        report_closed = bool(own_ports) and len(closed) >= CLOSED_TCP_MIN
        if not (report_cw or report_closed):
            continue
        yield _close_wait_finding(info, waiting, closed, own_ports or sorted(
            {s.local[1] for s in waiting}), cw_min, earlier, later)


def _close_wait_finding(info: ProcessInfo, waiting: list[SocketFd],
                        closed: list[tuple[int, int]], ports: list[int], cw_min: int,
                        earlier: Snapshot, later: Snapshot) -> Finding:
    parts = []
    evidence: dict[str, object] = {
        "close_wait": len(waiting), "close_wait_min": cw_min,
        "shut_down": len(closed), "shut_down_min": CLOSED_TCP_MIN,
        "listening_ports": ports,
        "persisted_s": round(later.taken_at - earlier.taken_at, 3),
        # Descriptors are allocated lowest-free first (POSIX), so the lowest
        # fd is the earliest-accepted socket still open: a stable proxy for
        # "oldest" that needs no timestamps.
        "oldest_by": "lowest fd",
    }
    if waiting:
        oldest = min(waiting, key=lambda s: s.fd)
        by_port = Counter(s.local[1] for s in waiting)
        port_text = ", ".join(f"port {p}" for p in sorted(by_port))
        parts.append(f"{len(waiting)} accepted socket{'s' if len(waiting) != 1 else ''} "
                     f"in CLOSE_WAIT on {port_text} (oldest fd {oldest.fd}, "
                     f"peer {oldest.remote[0]}:{oldest.remote[1]})")
        evidence.update(
            close_wait_by_port={str(p): n for p, n in sorted(by_port.items())},
            oldest_fd=oldest.fd, oldest_peer=f"{oldest.remote[0]}:{oldest.remote[1]}",
            fds=sorted(s.fd for s in waiting)[:MAX_EVIDENCE_PIDS])
    if len(closed) >= CLOSED_TCP_MIN:
        parts.append(f"{len(closed)} accepted sockets already shut down but still open "
                     f"(in no socket table: ss and psutil cannot see them; oldest fd "
                     f"{closed[0][0]}; reported from {CLOSED_TCP_MIN})")
        evidence.update(shut_down_oldest_fd=closed[0][0],
                        shut_down_fds=[fd for fd, _ in closed][:MAX_EVIDENCE_PIDS])
    # The advice fits what the process does: a forking server hands each
    # connection to a child and must close its own copy; a process that
    # never forked serves the connection itself and never closes it.
    if info.pid in later.parent_pids or info.pid in earlier.parent_pids:
        forks = "children in its tree"
    elif info.has_reaped_children:
        forks = "children it has reaped"
    else:
        forks = None
    evidence["forks"] = forks
    held = f"PID {info.pid} ({info.name}) holds " + " and ".join(parts)
    if forks:
        advice = (f"it forks ({forks}) and keeps its own copy of each connection it hands "
                  "to a child; close that copy in the parent right after fork()")
    else:
        advice = ("it has never forked, and it never closes a connection once served; "
                  "close each accepted socket when its request is done")
    return finding("RD201", info.pid, f"{held}: {advice}", **evidence)


def inherited_listener_findings(earlier: Snapshot, later: Snapshot) -> Iterable[Finding]:
    """RD202: live per-connection children hold their parent's listening
    socket (the same inode) and never accept on it.

    Not for pre-fork pools, whose workers accept on the listener by design.
    A pool is pre-fork when any child holding the listener has no accepted
    connection of its own (an idle worker) in either sample, or holds other
    accepted connections than before (it accepted again by itself). A child
    per connection holds one connection for its whole life.
    """
    for ppid, parent_fds in sorted(later.fds.items()):
        for listener in parent_fds.listeners:
            port = listener.local[1]
            holders = [c for c in later.children_of(ppid)
                       if not c.is_zombie and c.pid in later.fds
                       and any(s.inode == listener.inode for s in later.fds[c.pid].listeners)]
            if not holders:
                continue
            if _looks_pre_fork(holders, listener.inode, port, earlier, later):
                continue
            pids = sorted(c.pid for c in holders)
            yield finding(
                "RD202", ppid,
                f"{len(holders)} live per-connection child{'ren' if len(holders) != 1 else ''} "
                f"of PID {ppid} hold a copy of its listening socket on port {port} that they "
                "never accept on: close the listening socket in the child right after fork()",
                port=port, inode=listener.inode, children=len(holders),
                pids=pids[:MAX_EVIDENCE_PIDS])


def _looks_pre_fork(holders: list[ProcessInfo], inode: int, port: int,
                    earlier: Snapshot, later: Snapshot) -> bool:
    for child in holders:
        now = {s.inode for s in _accepted(later.fds[child.pid], {port})}
        if not now:
            return True  # idle worker: it waits in accept()
        was_info = earlier.processes.get(child.pid)
        was_fds = earlier.fds.get(child.pid)
        if (earlier is later or was_info is None or was_info.identity != child.identity
                or was_fds is None):
            continue
        if not any(s.inode == inode for s in was_fds.listeners):
            continue
        before = {s.inode for s in _accepted(was_fds, {port})}
        if not before or (now - before):
            return True  # idle before, or a connection it accepted since
    return False


def accept_backlog_findings(earlier: Snapshot, later: Snapshot,
                            leaks: Iterable[Finding] = ()) -> Iterable[Finding]:
    """RD401: a listening socket whose accept queue is non-empty in the
    first and the last sample.

    Where the queued connections are visible (established, inode 0, in
    the socket table) at least one of them must be queued in both samples:
    a busy server whose queue turns over is accepting, only behind.

    A process at its descriptor limit cannot accept (EMFILE): its queue is
    a symptom of what fills the table, so the finding says so and names
    RD301 and the descriptor leaks found (`leaks`: RD201, RD203 findings).
    """
    leak_codes: dict[int, set[str]] = {}
    for f in leaks:
        leak_codes.setdefault(f.pid, set()).add(f.code)
    seen: set[int] = set()
    first: dict[int, SocketFd] = {}
    for fds in earlier.fds.values():
        for s in fds.listeners:
            first.setdefault(s.inode, s)
    for pid in later.processes:           # parents first: the topmost holder reports
        fds = later.fds.get(pid)
        if fds is None:
            continue
        for s in fds.listeners:
            if s.inode in seen or not s.rx_queue:
                continue
            seen.add(s.inode)
            before = first.get(s.inode)
            if before is None or not before.rx_queue:
                continue
            peers_then = earlier.accept_queue_peers.get(s.inode)
            peers_now = later.accept_queue_peers.get(s.inode)
            waited = None
            if earlier is not later and peers_then and peers_now:
                waited = len(peers_then & peers_now)
                if not waited:
                    continue
            yield _backlog_finding(pid, s, before, waited, later.taken_at - earlier.taken_at,
                                   later.nofile.get(pid), sorted(leak_codes.get(pid, ())))


def _backlog_finding(pid: int, now: SocketFd, then: SocketFd, waited: int | None,
                     elapsed_s: float, nofile: LimitUsage | None = None,
                     leak_codes: Sequence[str] = ()) -> Finding:
    port = now.local[1]
    backlog = now.backlog if now.backlog is not None else then.backlog
    full = backlog is not None and now.rx_queue > backlog
    of = f" of a backlog of {backlog}" if backlog is not None else ""
    text = (f"the accept queue of port {port} holds {now.rx_queue} connection"
            f"{'s' if now.rx_queue != 1 else ''}{of}" + (" (full: new SYNs are dropped)"
                                                         if full else ""))
    if waited:
        text += f"; {waited} waited the whole {elapsed_s:.1f} s"
    # accept() needs a free descriptor below the soft limit: with none,
    # it fails with EMFILE and the connection stays queued (linux-facts 7).
    at_limit = bool(nofile and nofile.used is not None and nofile.soft
                    and nofile.used >= nofile.soft)
    if at_limit and nofile is not None:
        see = ", ".join(["RD301", *leak_codes])
        advice = (f"PID {pid} is at its descriptor limit ({nofile.used} of {nofile.soft}, "
                  "ulimit -n), so accept() fails with EMFILE and connections stay queued; "
                  f"the queue is a symptom: fix what fills the descriptor table (see {see})")
    else:
        advice = (f"PID {pid} is not accepting (a blocking handler in the accept loop); "
                  "handle each connection concurrently (fork, thread, selectors) and "
                  "return to accept()")
    return finding(
        "RD401", pid, f"{text}: {advice}",
        port=port, inode=now.inode, queue=now.rx_queue, queue_first=then.rx_queue,
        backlog=backlog, full=full, waited_whole_window=waited,
        persisted_s=round(elapsed_s, 3), at_fd_limit=at_limit, leaks=list(leak_codes))


def fd_growth_findings(series: Sequence[FdCounts],
                       nofile: Mapping[int, LimitUsage]) -> Iterable[Finding]:
    """RD203 from scan: the descriptor count of a process rises in every
    interval by at least FD_GROWTH_STEP, and by FD_GROWTH_TOTAL overall,
    over at least three samples."""
    if len(series) < 3:
        return
    pids = set(series[0].counts).intersection(*(s.counts for s in series[1:]))
    for pid in sorted(pids):
        counts = [s.counts[pid] for s in series]
        steps = [b - a for a, b in zip(counts, counts[1:])]
        total = counts[-1] - counts[0]
        if min(steps) < FD_GROWTH_STEP or total < FD_GROWTH_TOTAL:
            continue
        span_s = series[-1].taken_at - series[0].taken_at
        if span_s <= 0:
            continue
        rate = total / span_s
        usage = nofile.get(pid)
        soft = usage.soft if usage else None
        yield _fd_growth_finding(
            pid, rate, counts[-1], soft, samples=len(series), span_s=span_s,
            counts=counts, intervals_s=[round(b.taken_at - a.taken_at, 3)
                                        for a, b in zip(series, series[1:])],
            rule=f"rises >= {FD_GROWTH_STEP} in every interval and >= {FD_GROWTH_TOTAL} in total")


def _fd_growth_finding(pid: int, rate_per_s: float, now: int, soft: int | None,
                       **evidence: object) -> Finding:
    eta = eta_s(now, soft, rate_per_s)
    limit = (f"ulimit -n ({soft}) reached in about {_human_s(eta)}" if eta is not None
             else "no soft limit to reach" if soft is None else f"at ulimit -n ({soft})")
    return finding(
        "RD203", pid,
        f"open descriptors of PID {pid} grow steadily, {rate_per_s * 60:.0f} per minute; "
        f"{limit}: find what is opened and never closed (scan --list-fds shows them)",
        rate_per_s=round(rate_per_s, 3), rate_per_min=round(rate_per_s * 60, 1), fds=now,
        soft=soft, eta_s=None if eta is None else round(eta, 1), **evidence)


def eta_s(now: float | None, limit: int | None, rate_per_s: float) -> float | None:
    """Seconds until `now` reaches `limit` at `rate_per_s`; None when not
    growing, unknown, or unlimited; 0 when already there."""
    if now is None or limit is None or rate_per_s <= 0:
        return None
    return max(0.0, (limit - now) / rate_per_s)


def _human_s(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# ----------------------------------------------------------------------------
# watch: judged over the whole run


def linear_fit(ts: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares slope (y units per t unit) and R^2 of ys over ts.

    R^2 is 1.0 for a flat series (it is explained perfectly); slope 0 and
    R^2 0 with fewer than two distinct times.
    """
    n = len(ts)
    if n < 2:
        return 0.0, 0.0
    mt, my = sum(ts) / n, sum(ys) / n
    stt = sum((t - mt) ** 2 for t in ts)
    if stt == 0:
        return 0.0, 0.0
    sty = sum((t - mt) * (y - my) for t, y in zip(ts, ys))
    syy = sum((y - my) ** 2 for y in ys)
    slope = sty / stt
    r2 = 1.0 if syy == 0 else (sty * sty) / (stt * syy)
    return slope, r2


def watch_fd_growth(pid: int, samples: Sequence[WatchSample],
                    soft: int | None) -> Finding | None:
    """RD203 from watch: descriptors grow over the whole run -- slope > 0,
    R^2 >= WATCH_MIN_R2, fitted growth >= FD_GROWTH_TOTAL over at least
    WATCH_MIN_SAMPLES samples. Fluctuating counts (connections coming and
    going) have a low R^2 or a small fitted growth."""
    points = [(s.t_s, s.fds) for s in samples if s.fds is not None]
    if len(points) < WATCH_MIN_SAMPLES:
        return None
    ts, ys = [p[0] for p in points], [float(p[1]) for p in points]  # type: ignore[arg-type]
    slope, r2 = linear_fit(ts, ys)
    span = ts[-1] - ts[0]
    growth = slope * span
    if slope <= 0 or r2 < WATCH_MIN_R2 or growth < FD_GROWTH_TOTAL:
        return None
    now = points[-1][1]
    return _fd_growth_finding(
        pid, slope, int(now or 0), soft, samples=len(points), span_s=round(span, 3),
        r2=round(r2, 3), fitted_growth=round(growth, 1),
        first=points[0][1], last=now,
        rule=f"least-squares slope > 0, R^2 >= {WATCH_MIN_R2}, fitted growth >= "
             f"{FD_GROWTH_TOTAL} fds over >= {WATCH_MIN_SAMPLES} samples")


def watch_rates(samples: Sequence[WatchSample]) -> dict[str, float | None]:
    """Growth per minute of each series: the least-squares slope over the
    samples that have a value; None with fewer than two."""
    rates: dict[str, float | None] = {}
    for name in WATCH_SERIES:
        points = [(s.t_s, getattr(s, name)) for s in samples if getattr(s, name) is not None]
        if len(points) < 2:
            rates[name] = None
            continue
        slope, _ = linear_fit([t for t, _ in points], [float(v) for _, v in points])
        rates[name] = round(slope * 60, 3)
    return rates


def watch_etas(samples: Sequence[WatchSample], rates: Mapping[str, float | None],
               limits: WatchLimits) -> dict[str, float | None]:
    """Seconds until each soft limit at the fitted rate, from the last
    value: None when the series does not grow (slope <= 0), the limit is
    unlimited or unknown, or (nproc) not enforced."""
    def last(name: str) -> int | None:
        values = [getattr(s, name) for s in samples if getattr(s, name) is not None]
        return values[-1] if values else None

    def eta(name: str, limit: int | None) -> float | None:
        rate = rates.get(name)
        value = eta_s(last(name), limit, (rate or 0.0) / 60)
        return None if value is None else round(value, 1)

    return {"nofile": eta("fds", limits.nofile),
            "nproc": eta("tasks", limits.nproc) if limits.nproc_enforced else None,
            "pids_cgroup": eta("pids_cgroup", limits.pids_cgroup)}
