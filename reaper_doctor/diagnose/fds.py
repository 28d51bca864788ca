"""Descriptor rules: CLOSE_WAIT leaks, inherited listeners, full accept
queues, growing descriptor counts."""

from __future__ import annotations

from collections import Counter
from typing import Collection, Iterable, Mapping, Sequence

from ..model import (
    FdCounts,
    FdTable,
    Finding,
    HolderLook,
    LimitUsage,
    ProcessInfo,
    Snapshot,
    SocketFd,
)
from .findings import MAX_EVIDENCE_PIDS, finding

# RD201. A per-connection worker holds one connection; two or more accepted
# sockets still in CLOSE_WAIT after the grace window -- or one, in a process
# that forks (it hands connections to children and should keep none) -- is
# the leak. One could be a handler still busy with a client that half-closed.
CLOSE_WAIT_MIN = 2
# RD201's evidence that the process forks (`forks`), strongest first.
FORKS_IN_TREE = "children in its tree"
FORKS_REAPED_NOW = "children reaped during the scan"
FORKS_HANDLER = "children reaped, SIGCHLD caught"
FORKS_REAPED_SOMETIME = "children reaped, maybe before exec"
# Accepted sockets shut down (TCP CLOSE, in no table) but still open: a
# listening process may briefly hold a few closed sockets (an outgoing
# connection reset by its peer, a pool); ten that persist is a leak.
CLOSED_TCP_MIN = 10
# RD401, where the samples looked at the listener's holders: one of them on
# a CPU for this share of the window is busy in its accept loop. A fork
# server starved of CPU, accepting as fast as it is let, uses a few percent.
BUSY_CPU_SHARE = 0.25
# RD203 from scan: the count rises in every interval by at least this much,
# and by at least FD_GROWTH_TOTAL over the window (connections come and go).
FD_GROWTH_STEP = 3
FD_GROWTH_TOTAL = 10


def _listening_ports(snap: Snapshot) -> set[int]:
    """TCP ports some process of the tree listens on."""
    return {s.local[1] for fds in snap.fds.values() for s in fds.listeners
            if s.proto.startswith("tcp")}


def _accepted(fds: FdTable, ports: set[int]) -> list[SocketFd]:
    """Connected TCP sockets whose local port is a listening port of the
    tree: connections that came in through accept()."""
    return [s for s in fds.sockets if s.proto.startswith("tcp") and s.state != "LISTEN"
            and s.local[1] in ports]


def close_wait_findings(earlier: Snapshot, later: Snapshot,
                        forking: Collection[int] | None = None) -> Iterable[Finding]:
    """RD201: accepted sockets a process keeps open after the peer closed.

    `forking`: the processes that have children, when the snapshots do not
    hold them (the census); by default, the parents within the snapshot.

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
        cw_min = 1 if pid in (later.parent_pids if forking is None else forking) \
            else CLOSE_WAIT_MIN
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
    forks = _forks(info, earlier, later)
    evidence["forks"] = forks
    held = f"PID {info.pid} ({info.name}) holds " + " and ".join(parts)
    either = ("if it forks per connection, close the parent's copy right after fork(); "
              "if it serves connections itself, close each one when its request is done")
    if forks == FORKS_IN_TREE:
        advice = ("it forks and keeps its own copy of each connection it hands to a child; "
                  "close the parent's copy right after fork()")
    elif forks == FORKS_REAPED_NOW:
        advice = f"it reaped children during the scan, so it forks: {either}"
    elif forks == FORKS_HANDLER:
        advice = f"it catches SIGCHLD and children were reaped in it, so it forks: {either}"
    elif forks:
        advice = ("children were reaped in this process (by it, or by a wrapper that ran "
                  f"commands before exec()ing it): {either}")
    else:
        advice = ("it shows no sign of forking (no child in its tree, none ever waited for): "
                  "close each accepted socket when its request is done")
    return finding("RD201", info.pid, f"{held}: {advice}", **evidence)


def _forks(info: ProcessInfo, earlier: Snapshot, later: Snapshot) -> str | None:
    """The evidence that `info` forks, strongest first. Children in the
    tree prove it; so does stat cminflt (faults of reaped children) rising
    between the samples. cminflt > 0 alone does not: it survives exec(),
    so a wrapper's reaped commands count as well; with a SIGCHLD handler,
    which exec() resets, this program itself expects children."""
    if info.pid in later.parent_pids or info.pid in earlier.parent_pids:
        return FORKS_IN_TREE
    if not info.child_faults:
        return None
    was = earlier.processes.get(info.pid)
    if was is not None and was.identity == info.identity and \
            info.child_faults > was.child_faults:
        return FORKS_REAPED_NOW
    return FORKS_HANDLER if info.sigchld == "caught" else FORKS_REAPED_SOMETIME


def inherited_listener_findings(earlier: Snapshot, later: Snapshot) -> Iterable[Finding]:
    """RD202: live per-connection children hold their parent's listening
    socket (the same inode) and never accept on it.

    Persistence as for zombies: only a child that held the listener in both
    samples counts. A fork server's child holds it from fork() until it
    closes it, which on a starved CPU can be when the sample looks.

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
                       if not c.is_zombie and _holds(later, c, listener.inode)
                       and _holds(earlier, c, listener.inode)]
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


def _holds(snap: Snapshot, child: ProcessInfo, inode: int) -> bool:
    """Whether `child` (the same process) held listener `inode` in `snap`."""
    info, fds = snap.processes.get(child.pid), snap.fds.get(child.pid)
    return (info is not None and info.identity == child.identity and fds is not None
            and any(s.inode == inode for s in fds.listeners))


def _looks_pre_fork(holders: list[ProcessInfo], inode: int, port: int,
                    earlier: Snapshot, later: Snapshot) -> bool:
    """`holders` held listener `inode` in both samples."""
    for child in holders:
        now = {s.inode for s in _accepted(later.fds[child.pid], {port})}
        before = {s.inode for s in _accepted(earlier.fds[child.pid], {port})}
        if not now or not before or (now - before):
            return True  # an idle worker waits in accept(), or it accepted since
    return False


def accept_backlog_findings(earlier: Snapshot, later: Snapshot,
                            leaks: Iterable[Finding] = (),
                            between: Sequence[Mapping[int, int]] = (),
                            looks: Sequence[Mapping[int, HolderLook]] = ()) -> Iterable[Finding]:
    """RD401: a listening socket whose accept queue stays non-empty: in the
    first and the last sample, and in each light sample between them that
    read it (`between`: {listener inode: queue length} per light sample;
    `looks`: {listener inode: its holders} per light sample).

    The rule rests on the queue's length, not on which connections wait:
    a server that takes one connection at a time turns its queue over and
    still leaves it full (on a busy CPU, no single connection need wait
    the whole window). How many did wait it is evidence, when visible.

    A queue that never empties may also belong to a server that accepts
    but is starved of CPU. Where the samples looked at the holders, the
    rule wants them stuck elsewhere: asleep with the queue non-empty in at
    least half the samples (a queued connection wakes a task waiting in
    accept()), or on a CPU for BUSY_CPU_SHARE of the window (work in the
    accept loop). A holder running or waiting for a CPU in the other
    samples, and barely using one, is behind, not stuck.

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
        table = later.fds.get(pid)
        if table is None:
            continue
        for s in table.listeners:
            if s.inode in seen or not s.rx_queue:
                continue
            seen.add(s.inode)
            before = first.get(s.inode)
            if before is None or not before.rx_queue:
                continue
            lengths = [before.rx_queue, *(q[s.inode] for q in between if s.inode in q)]
            if earlier is not later:
                lengths.append(s.rx_queue)
            if min(lengths) == 0:
                continue  # it emptied in between: the server accepts
            held = [earlier.queue_holders.get(s.inode),
                    *(h.get(s.inode) for q, h in zip(between, looks) if s.inode in q)]
            if earlier is not later:
                held.append(later.queue_holders.get(s.inode))
            asleep, cpu_share = _holders_stuck(held, later.taken_at - earlier.taken_at)
            if asleep is not None and asleep * 2 < len(lengths) \
                    and (cpu_share is None or cpu_share < BUSY_CPU_SHARE):
                continue  # running or waiting for a CPU, and barely on one: behind
            peers_then = earlier.accept_queue_peers.get(s.inode)
            peers_now = later.accept_queue_peers.get(s.inode)
            waited = None
            if earlier is not later and peers_then and peers_now:
                waited = len(peers_then & peers_now)
            yield _backlog_finding(pid, s, before, waited, later.taken_at - earlier.taken_at,
                                   later.nofile.get(pid), sorted(leak_codes.get(pid, ())),
                                   lengths, asleep, cpu_share)


def _holders_stuck(held: Sequence[HolderLook | None],
                   elapsed_s: float) -> tuple[int | None, float | None]:
    """From the looks at a listener's holders, first sample to last: in how
    many samples every holder slept (None: never looked), and the largest
    share of the window one holder spent on a CPU (None: not measured)."""
    seen = [h for h in held if h is not None]
    if not seen:
        return None, None
    first, last = held[0], held[-1]
    share = None
    if first is not None and last is not None and len(held) > 1 and elapsed_s > 0:
        share = max(((last.cpu_s[p] - first.cpu_s[p]) / elapsed_s
                     for p in first.cpu_s if p in last.cpu_s), default=None)
    return sum(h.asleep for h in seen), None if share is None else round(share, 3)


def _backlog_finding(pid: int, now: SocketFd, then: SocketFd, waited: int | None,
                     elapsed_s: float, nofile: LimitUsage | None = None,
                     leak_codes: Sequence[str] = (), lengths: Sequence[int] = (),
                     asleep: int | None = None, cpu_share: float | None = None) -> Finding:
    port = now.local[1]
    backlog = now.backlog if now.backlog is not None else then.backlog
    full = backlog is not None and now.rx_queue > backlog
    of = f" of a backlog of {backlog}" if backlog is not None else ""
    text = (f"the accept queue of port {port} holds {now.rx_queue} connection"
            f"{'s' if now.rx_queue != 1 else ''}{of}" + (" (full: new SYNs are dropped)"
                                                         if full else ""))
    if len(lengths) > 1:
        text += f"; non-empty in all {len(lengths)} samples over {elapsed_s:.1f} s"
    if waited:
        text += f" ({waited} waited the whole time)"
    # accept() needs a free descriptor below the soft limit: with none,
    # it fails with EMFILE and the connection stays queued.
    at_limit = bool(nofile and nofile.used is not None and nofile.soft
                    and nofile.used >= nofile.soft)
    if at_limit and nofile is not None:
        see = ", ".join(["RD301", *leak_codes])
        advice = (f"PID {pid} is at its descriptor limit ({nofile.used} of {nofile.soft}, "
                  "ulimit -n), so accept() fails with EMFILE and connections stay queued; "
                  f"the queue is a symptom: fix what fills the descriptor table (see {see})")
    elif asleep == 0 and cpu_share is not None:
        advice = (f"PID {pid} ran on a CPU {cpu_share:.0%} of the time and never emptied it "
                  "(CPU-bound work in the accept loop); handle each connection concurrently "
                  "(fork, thread, selectors) and return to accept()")
    else:
        advice = (f"PID {pid} is not accepting (a blocking handler in the accept loop); "
                  "handle each connection concurrently (fork, thread, selectors) and "
                  "return to accept()")
    return finding(
        "RD401", pid, f"{text}: {advice}",
        port=port, inode=now.inode, queue=now.rx_queue, queue_first=then.rx_queue,
        backlog=backlog, full=full, waited_whole_window=waited,
        queue_samples=list(lengths), holders_asleep=asleep, holders_cpu_share=cpu_share,
        persisted_s=round(elapsed_s, 3), at_fd_limit=at_limit, leaks=list(leak_codes))


def fd_growth_findings(series: Sequence[FdCounts],
                       nofile: Mapping[int, LimitUsage]) -> Iterable[Finding]:
    """RD203 from scan: the descriptor count of a process rises in every
    interval by at least FD_GROWTH_STEP, and by FD_GROWTH_TOTAL overall,
    over at least three samples."""
    if len(series) < 3:
        return
    first, last = series[0].counts, series[-1].counts
    # The total first (one pass over the newest counts): few processes grow.
    grown = [pid for pid, n in last.items() if n - first.get(pid, n) >= FD_GROWTH_TOTAL]
    for pid in sorted(grown):
        if not all(pid in s.counts for s in series[1:-1]):
            continue
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
