"""`scan` for people: the tree, zombies, descriptors, limits, verdict.

One screen even for 2,000 zombies and 20,000 descriptors: identical
siblings collapse to one line with a count (as pstree does), descriptors
are counts by kind and the top few, never a line per fd.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Iterable

import click

from ..diagnose.coverage import coverage
from ..diagnose.zombies import PID1_GRACE_S, exit_status_describer
from ..model import (
    FdTable,
    Finding,
    LimitUsage,
    MachineCensus,
    NofileUsage,
    ProcessInfo,
    Report,
    Severity,
    Snapshot,
    SocketHolder,
    TargetReport,
    ZombieParent,
    describe_place,
)
from ..model.kernel import ExitStatus
from ..parse.containers import is_known_init
from .common import (
    OWN_NAMESPACE_NOTE, address_text, children_map, command_line, pid_list, safe,
    sampling_phrase, state_word, zombie_groups,
)
from .width import DEFAULT_WIDTH, fill, fit_table, join_fitted

SEVERITY_COLORS = {Severity.ERROR: "red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}
MAX_LIVE_LINES = 30   # live siblings shown one per line before they are summarised
MAX_LISTENERS = 5     # listening sockets shown
MAX_SOCKET_LINES = 5
MAX_UID_PORTS = 5     # ports of another UID's CLOSE_WAIT sockets named (sock_diag)  # TCP connections of the target shown one per line


def render_text(report: Report, *, color: bool = False, width: int = DEFAULT_WIDTH) -> str:
    """The report for a terminal `width` columns wide."""
    style = _styler(color)
    if report.machine is not None:
        return render_census(report, style, width)
    return "\n\n".join(render_target(t, style, width) for t in report.targets) + "\n"


MAX_CENSUS_ROWS = 8
MAX_CENSUS_FINDINGS = 8


def render_census(report: Report, style: Callable[..., str], width: int = DEFAULT_WIDTH) -> str:
    """`scan` with no PID, on one screen: tables capped, a finding's first clause each."""
    m = report.machine
    assert m is not None
    pids = LimitUsage(m.tasks, m.pid_max, m.pid_max) if m.pid_max else None
    files = LimitUsage(m.files_open, m.file_max, m.file_max) if m.file_max else None
    head = [join_fitted([
        style("Machine census", bold=True) + f": {m.processes} processes, {m.tasks} tasks",
        sampling_phrase(m.samples, m.elapsed_s)], width), join_fitted([
        f"PIDs {m.tasks} of {_num(m.pid_max)} (kernel.pid_max{', ' + _pct(pids) if pids else ''})",
        f"open files {_num(m.files_open)} of {_num(m.file_max)} "
        f"(fs.file-max{', ' + _pct(files) if files else ''})"], width)]
    if not m.pid_namespace_is_host:
        head.append(style(fill(OWN_NAMESPACE_NOTE, width), fg="yellow"))
    parts = ["\n".join(head)]

    leaking = [p for p in m.zombie_parents if not p.is_reaper]
    if leaking:
        # How many were zombies at both samples: a column only where it
        # tells something the zombie count does not.
        persisted = m.samples > 1 and any(p.persistent != p.zombies for p in leaking)
        rows = [[_who(p), p.zombies,
                 *([p.persistent] if persisted else []), p.sigchld or "unknown",
                 p.verdict or "-"] for p in leaking[:MAX_CENSUS_ROWS]]
        more = _more(len(leaking), "parents")
        if m.samples == 1:
            when = " (one sample: persistence not checked)"
        elif not persisted:
            when = ", every one a zombie at both samples"
        else:
            when = ""
        headers = ["parent", "zombies", *(["in both samples"] if persisted else []),
                   "SIGCHLD", "verdict"]
        parts.append(fill(f"Zombies: {sum(p.zombies for p in leaking)} under {len(leaking)} "
                          f"parent{'s' if len(leaking) != 1 else ''}{when}", width, hang="  ")
                     + "\n" + fit_table(rows, headers, width) + more)
    else:
        parts.append("Zombies: none held by a live parent")
    orphans = [p for p in m.zombie_parents if p.is_reaper]
    title = "Orphaned zombies (waiting on PID 1 or a subreaper):"
    if orphans:
        parts.append(join_fitted(
            [f"{p.zombies} on {_who(p)}"
             + (f" ({p.verdict})" if p.verdict else "") for p in orphans[:MAX_CENSUS_ROWS]],
            width, sep=", ", indent=title + " ", hang="  "))
    else:
        parts.append(fill(f"{title} none", width, hang="  "))

    namespaces = f"{m.netns_read} network namespace{'s' if m.netns_read != 1 else ''} read"
    if m.netns_unreadable:
        namespaces += (f"; that of {m.netns_unreadable} process"
                       f"{'es' if m.netns_unreadable != 1 else ''} could not be read, their "
                       "sockets are seen only where they share ours")
    if m.socket_holders:
        rows = [[_who(h), h.close_wait or "-",
                 ", ".join(f"{q.port}: {q.queue}" + (f" of {q.backlog}" if q.backlog else "")
                           for q in h.listeners) or "-",
                 " ".join(h.verdicts) or "-"] for h in m.socket_holders[:MAX_CENSUS_ROWS]]
        parts.append(fill(f"Descriptor leaks ({namespaces})", width, hang="  ") + "\n"
                     + fit_table(rows, ["process", "CLOSE_WAIT", "accept queue", "verdict"],
                                 width)
                     + _more(len(m.socket_holders), "processes"))
    elif not m.close_wait_unattributed:
        parts.append(fill(f"Descriptor leaks: no CLOSE_WAIT socket on a listening port, no "
                          f"accept queue waiting ({namespaces})", width, hang="  "))
    else:
        parts.append(fill(f"Descriptor leaks ({namespaces})", width, hang="  "))
    if m.close_wait_unattributed:
        n = m.close_wait_unattributed
        parts[-1] += "\n" + style(fill(
            f"{n} CLOSE_WAIT socket{'s' if n != 1 else ''} on a listening port held by a "
            "process whose descriptors could not be read (another user's: run as root with "
            "CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE)", width, hang="  "), fg="yellow")

    if m.nofile_top:
        rows = [[_who(r), r.used, r.soft, f"{r.ratio:.0%}"]
                for r in m.nofile_top]
        note = f" ({m.nofile_unreadable} not readable)" if m.nofile_unreadable else ""
        parts.append(f"Nearest ulimit -n (top {len(m.nofile_top)}){note}\n" + fit_table(
            rows, ["process", "open fds", "soft limit", "use"], width))

    if m.uids:
        rows = []
        for u in m.uids[:MAX_CENSUS_ROWS]:
            note = _pct(LimitUsage(u.tasks, u.soft, u.hard)) if u.enforced else "not enforced (UID 0)"
            if u.soft_min is not None and u.soft_min != u.soft:
                note += f"; lowest {u.soft_min} (PID {u.soft_min_pid})"
            rows.append([u.uid, u.tasks, u.processes, _num(u.soft), note])
        parts.append(fill("Tasks per UID vs ulimit -u (the most common soft limit of its "
                          "processes)", width, hang="  ") + "\n"
                     + fit_table(rows, ["uid", "tasks", "processes", "soft", "use"], width)
                     + _more(len(m.uids), "UIDs"))

    if m.pids_cgroups:
        rows = [[safe(c.path or "?"), _num(c.current), _num(c.max),
                 _pct(LimitUsage(c.current, c.max, c.max))
                 + (f" ({c.refusals} forks refused)" if c.refusals else "")]
                for c in m.pids_cgroups]
        parts.append("pids cgroups nearest pids.max\n" + fit_table(
            rows, ["cgroup", "tasks", "pids.max", "use"], width))
    else:
        parts.append("pids cgroups: none has a pids.max")

    if m.containers:
        parts.append(_containers(m, width))

    findings = [f for t in report.targets for f in t.findings]
    if not findings:
        parts.append(style("Findings: none", fg="green"))
    else:
        ranked = sorted(findings, key=lambda f: (-f.severity.rank, f.code, f.pid))
        lines = [f"Findings: {len(findings)} (reaper-doctor scan PID for the whole tree)"]
        for f in ranked[:MAX_CENSUS_FINDINGS]:
            sev = style(f.severity.value.upper().ljust(7), fg=SEVERITY_COLORS[f.severity],
                        bold=True)
            lines.append(fill(f"{f.code} {f.slug} (PID {f.pid}) {_short(f)}", width,
                              indent="  " + " " * 8, hang=" " * 10).replace(" " * 10, f"  {sev} ", 1))
        if len(ranked) > MAX_CENSUS_FINDINGS:
            lines.append(f"  … {len(ranked) - MAX_CENSUS_FINDINGS} more (--json lists them all)")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def _containers(m: MachineCensus, width: int) -> str:
    """Each PID namespace below ours, and each known container, with its PID 1."""
    rows = []
    for r in m.containers[:MAX_CENSUS_ROWS]:
        c = r.container
        if r.init_pid is None:
            init = "(shares the host's PID namespace)"
        else:
            command = " ".join(r.init_cmdline) if r.init_cmdline else (r.init_name or "?")
            init = f"{r.init_pid} {safe(command)[:40]}"
            init += f" (init: {r.init_name})" if r.init_is_known else " (not an init)"
        rows.append([c.short_id if c else "-", c.runtime if c else "-", init, r.processes,
                     r.zombies, " ".join(r.verdict) or "ok"])
    title = f"Containers and PID namespaces: {len(m.containers)}"
    return title + "\n" + fit_table(
        rows, ["container", "runtime", "PID 1 (host PID, command)", "processes", "zombies",
               "verdict"], width, disable_numparse=True) + _more(len(m.containers), "namespaces")


def _who(row: ZombieParent | NofileUsage | SocketHolder) -> str:
    """"1234 python3", and where it runs when that is a known container:
    "15241 sleep · podman 6de0bef0c70b"."""
    where = f" · {row.container.runtime} {row.container.short_id}" if row.container else ""
    return f"{row.pid} {safe(row.name or '?')}{where}"


def _more(total: int, what: str) -> str:
    return f"\n… {total - MAX_CENSUS_ROWS} more {what}" if total > MAX_CENSUS_ROWS else ""


def _short(f: Finding) -> str:
    """The first clause of a finding's message: the numbers, not the lesson."""
    return safe(f.message).split(";")[0].split(": ")[0]


def _styler(color: bool) -> Callable[..., str]:
    if color:
        return click.style
    return lambda text, **_: text


def render_target(t: TargetReport, style: Callable[..., str], width: int = DEFAULT_WIDTH) -> str:
    snap = t.snapshot
    me = snap.processes[t.pid]
    parts = [_headline(t, me, style, width), _tree(snap, width), _zombies(snap, width),
             _descriptors(snap, width), _fd_list(snap, width), _limits(snap, width),
             _findings(t, style, width), _unreadable(snap, width)]
    return "\n\n".join(p for p in parts if p)


def _headline(t: TargetReport, me: ProcessInfo, style: Callable[..., str], width: int) -> str:
    facts = [state_word(me), f"uid {me.uid}" if me.uid is not None else "uid ?"]
    if me.is_kernel_thread:
        facts.insert(0, "kernel thread")
    if me.age_s is not None:
        facts.append(f"up {_duration(me.age_s)}")
    about = f"({', '.join(facts)})"
    # The command line gets what the PID and the facts leave of the line.
    room = max(20, width - len(f"PID {me.pid}    {about}"))
    line = join_fitted([style(f"PID {me.pid}", bold=True), command_line(me, room), about],
                       width, sep="  ", hang="  ")
    sampling = sampling_phrase(t.samples, t.elapsed_s)
    if t.samples > 1 and t.pid1_wait:
        sampling += f" (--grace {t.grace_s:g}; zombies of PID 1 get {PID1_GRACE_S:g} s)"
    extra = [f"SIGCHLD {me.sigchld or 'unknown'}", f"parent {me.ppid}", sampling]
    if t.gone:
        extra.append(style("the process exited during the scan", fg="yellow"))
    where = _place(me)
    return line + "\n" + join_fitted(extra, width, hang="  ") + (
        "\n" + fill(where, width) if where else "")


def _place(info: ProcessInfo) -> str | None:
    """"PID 1 of its PID namespace, in podman container a1df1d9cf5b3", or
    "PID 7 in its PID namespace"; for PID 1 also how it takes SIGTERM."""
    in_ns = info.ns_pid if info.ns_pid is not None and info.ns_pid != info.pid else None
    where = describe_place(info.is_ns_init, info.container, in_ns)
    if where and info.is_ns_init:
        known = "a known init" if is_known_init(info.name) else "not a known init"
        where += f" ({known}; SIGTERM {info.sigterm or 'unknown'})"
    return where


def _node_label(info: ProcessInfo) -> str:
    in_ns = f" (ns PID {info.ns_pid})" if info.ns_pid not in (None, info.pid) else ""
    bits = [f"{info.pid}{in_ns} {safe(info.name)}"]
    if info.is_zombie:
        bits.append("<defunct>")
        if info.exit_status:
            bits.append(info.exit_status.describe())
    else:
        bits.append(f"[{info.state}]")
        if info.num_fds is not None:
            bits.append(f"fds {info.num_fds}")
        if info.sigchld and info.sigchld != "default":
            bits.append(f"SIGCHLD {info.sigchld}")
        if info.is_ns_init and info.container is not None:
            bits.append(f"· {info.container.describe()}")
    return " ".join(bits)


def _tree(snap: Snapshot, width: int = DEFAULT_WIDTH) -> str:
    kids = children_map(snap)
    describe = exit_status_describer()
    lines = ["Process tree", _tree_line(_node_label(snap.processes[snap.target]), "",
                                        "│  " if kids.get(snap.target) else "   ", width)]

    # Depth first with a stack of row iterators, not a call per level: a
    # chain of forks can be thousands of processes deep.
    stack = [(iter(_rows_with_last(snap.target, kids, describe)), "")]
    while stack:
        rows, prefix = stack[-1]
        row = next(rows, None)
        if row is None:
            stack.pop()
            continue
        label, child, last = row
        below = "   " if last else "│  "
        has_kids = child is not None and bool(kids.get(child.pid))
        lines.append(_tree_line(label, prefix + ("└─ " if last else "├─ "),
                                prefix + below + ("│  " if has_kids else "   "), width))
        if child is not None:
            stack.append((iter(_rows_with_last(child.pid, kids, describe)),
                          prefix + ("   " if last else "│  ")))
    return "\n".join(lines)


def _tree_line(label: str, lead: str, hang: str, width: int) -> str:
    """A node of the tree, wrapped under itself when long. A tree too deep
    to leave room for the label is drawn unwrapped (its prefix alone may be
    wider than the terminal)."""
    if len(lead) + len(label) <= width or width - len(hang) < 20:
        return lead + label
    return fill(label, width, indent=lead, hang=hang)


def _rows_with_last(pid: int, kids: dict[int, list[ProcessInfo]],
                    describe: Callable[[ExitStatus | None], str]
                    ) -> list[tuple[str, ProcessInfo | None, bool]]:
    rows = _collapsed_children(kids.get(pid, []), kids, describe)
    return [(label, child, i == len(rows) - 1) for i, (label, child) in enumerate(rows)]


def _collapsed_children(children: list[ProcessInfo], kids: dict[int, list[ProcessInfo]],
                        describe: Callable[[ExitStatus | None], str]
                        ) -> list[tuple[str, ProcessInfo | None]]:
    """Rows for one parent's children: zombies collapsed by (name, exit status),
    childless live siblings of the same name collapsed when there are many.
    `describe`: an exit_status_describer() shared by the whole tree."""
    rows: list[tuple[str, ProcessInfo | None]] = []
    zombies: dict[tuple[str, str], list[int]] = {}
    leaves: dict[tuple[str, str], list[ProcessInfo]] = {}
    for child in children:
        if child.is_zombie:
            status = describe(child.exit_status)
            zombies.setdefault((child.name, status), []).append(child.pid)
        elif child.pid not in kids and len(children) > MAX_LIVE_LINES:
            leaves.setdefault((child.name, child.state), []).append(child)
        else:
            rows.append((_node_label(child), child))
    for (name, state), group in leaves.items():
        if len(group) == 1:
            rows.append((_node_label(group[0]), None))
            continue
        fds = [c.num_fds for c in group if c.num_fds is not None]
        fd_range = f" fds {min(fds)}–{max(fds)}" if fds and min(fds) != max(fds) else (
            f" fds {fds[0]}" if fds else "")
        rows.append((f"{len(group)} × {safe(name)} [{state}]{fd_range} "
                     f"(pids {pid_list(c.pid for c in group)})", None))
    for (name, status), pids in sorted(zombies.items(), key=lambda kv: -len(kv[1])):
        if len(pids) == 1:
            rows.append((f"{pids[0]} {safe(name)} <defunct> {status}", None))
        else:
            rows.append((f"{len(pids)} × {safe(name)} <defunct> {status} "
                         f"(pids {pid_list(pids)})", None))
    return rows


def _zombies(snap: Snapshot, width: int = DEFAULT_WIDTH) -> str:
    groups = zombie_groups(snap)
    if not groups:
        return "Zombies: none"
    rows = []
    for g in groups:
        statuses = ", ".join(f"{s} ×{n}" if n > 1 else s for s, n in g.exit_statuses.items())
        rows.append([f"{g.ppid} {safe(g.parent_name or '?')}", g.count, statuses,
                     g.sigchld or "unknown"])
    total = sum(g.count for g in groups)
    return f"Zombies: {total}\n" + fit_table(
        rows, ["parent", "zombies", "exit statuses", "parent's SIGCHLD"], width,
        disable_numparse=False)


def _descriptors(snap: Snapshot, width: int = DEFAULT_WIDTH) -> str:
    if not snap.fds:
        return ""
    lines = []
    ordered = sorted(snap.fds.items(), key=lambda kv: (kv[0] != snap.target, -kv[1].open))
    shown = ordered[:8]
    for pid, fds in shown:
        lines.append(f"  {pid} {safe(snap.processes[pid].name)}: {_fd_summary(fds)}")
    if len(ordered) > len(shown):
        rest = ordered[len(shown):]
        lines.append(f"  … {len(rest)} more processes, {sum(f.open for _, f in rest)} descriptors")
    target_fds = snap.fds.get(snap.target)
    if target_fds and target_fds.top_paths:
        top = ", ".join(f"{safe(p)}" + (f" ×{n}" if n > 1 else "") for p, n in target_fds.top_paths)
        lines.append(f"  top files ({snap.target}): {top}")
    listeners = {s.inode: (pid, s) for pid, fds in reversed(ordered) for s in fds.listeners}
    for pid, s in list(listeners.values())[:MAX_LISTENERS]:
        backlog = f" of backlog {s.backlog}" if s.backlog is not None else ""
        holders = sum(1 for fds in snap.fds.values() if any(x.inode == s.inode for x in fds.listeners))
        shared = f", held by {holders} processes" if holders > 1 else ""
        lines.append(f"  listening {address_text(s.local)} ({s.proto}, PID {pid}): "
                     f"accept queue {s.rx_queue}{backlog}{shared}")
    if target_fds:
        conns = [s for s in target_fds.sockets if s.proto.startswith("tcp") and s.state != "LISTEN"]
        for s in conns[:MAX_SOCKET_LINES]:
            lines.append(f"  fd {s.fd} {s.proto} {address_text(s.local)} → {address_text(s.remote)} {s.state}")
        if len(conns) > MAX_SOCKET_LINES:
            lines.append(f"  … {len(conns) - MAX_SOCKET_LINES} more TCP connections "
                         "(all of them: scan --list-fds)")
    return "\n".join(["Descriptors", *(fill(line, width, hang="      ") for line in lines)])


def _fd_list(snap: Snapshot, width: int = DEFAULT_WIDTH) -> str:
    """`scan --list-fds`: every descriptor of every process that has one, the
    target first, a line each; a socket with what its table says of it."""
    tables = sorted(((pid, fds) for pid, fds in snap.fds.items() if fds.listed),
                    key=lambda kv: (kv[0] != snap.target, kv[0]))
    if not tables:
        return ""
    lines = ["Descriptor list"]
    for pid, fds in tables:
        info = snap.processes.get(pid)
        lines.append(f"  {pid} {safe(info.name) if info else '?'}: "
                     f"{len(fds.listed)} descriptor{'s' if len(fds.listed) != 1 else ''}")
        digits = len(str(fds.listed[-1][0]))
        inet = {s.fd: s for s in fds.sockets}
        closed = {fd for fd, _ in fds.closed_tcp}
        unlisted = {fd for fd, _ in fds.unlisted_socket_fds}
        for fd, link in fds.listed:
            text = safe(link)
            s = inet.get(fd)
            if s is not None:
                text += f" {s.proto} {address_text(s.local)}"
                text += f" {s.state}" if s.state == "LISTEN" else \
                    f" → {address_text(s.remote)} {s.state}"
            elif fd in closed:
                text += " TCP shut down but open (in no socket table)"
            elif fd in unlisted:
                text += " (in no socket table)"
            lines.append(fill(f"{fd:>{digits}}  {text}", width, indent="    ",
                              hang=" " * (digits + 6)))
    return "\n".join(lines)


def _fd_summary(fds: FdTable) -> str:
    # No-break spaces keep "tcp 9" on one line when the summary wraps.
    kinds = " · ".join(f"{kind}\xa0{n}" for kind, n in
                       sorted(fds.by_kind.items(), key=lambda kv: (-kv[1], kv[0])))
    text = f"{fds.open} open" + (f" — {kinds}" if kinds else "")
    states = Counter(s.state for s in fds.sockets if s.proto.startswith("tcp"))
    if states:
        text += "; TCP\xa0" + ", ".join(f"{st}\xa0{n}" for st, n in states.most_common())
    if fds.unlisted_socket_fds:
        text += f"; {len(fds.unlisted_socket_fds)} sockets in no socket table"
        if fds.closed_tcp:
            text += f" ({len(fds.closed_tcp)} TCP shut down but open: invisible to ss)"
    return text


def _pct(usage: LimitUsage) -> str:
    return "" if usage.ratio is None else f"{usage.ratio:.0%}"


def _num(value: int | None) -> str:
    return "unlimited" if value is None else str(value)


def _limits(snap: Snapshot, width: int = DEFAULT_WIDTH) -> str:
    rows: list[list[object]] = []
    nofile = snap.nofile.get(snap.target)
    if nofile:
        used = "unreadable" if nofile.used is None else nofile.used
        rows.append(["open files (ulimit -n)", used, _num(nofile.soft),
                     _num(nofile.hard), _pct(nofile)])
    worst_child = max((u for pid, u in snap.nofile.items() if pid != snap.target and u.ratio),
                      key=lambda u: u.ratio or 0, default=None)
    if worst_child and worst_child.ratio and worst_child.ratio >= 0.5:
        pid = next(p for p, u in snap.nofile.items() if u is worst_child)
        rows.append([f"open files of {pid}", worst_child.used, _num(worst_child.soft),
                     _num(worst_child.hard), _pct(worst_child)])
    if snap.nproc:
        n = snap.nproc
        note = _pct(n) if n.enforced else f"{_pct(n)} (not enforced for UID {n.uid})"
        rows.append([f"tasks of UID {n.uid} (ulimit -u)", _num(n.used), _num(n.soft),
                     _num(n.hard), note])
    cg = snap.pids_cgroup
    if cg:
        if cg.max:
            usage = LimitUsage(cg.current, cg.max, cg.max)
            note = _pct(usage) + (f" ({cg.refusals} forks refused)" if cg.refusals else "")
            rows.append([f"pids cgroup {cg.path}", _num(cg.current), cg.max, "", note])
        else:
            rows.append(["pids cgroup", _num(cg.current) if cg.current is not None else "",
                         "no limit", "", ""])
    if snap.pid_max:
        usage = LimitUsage(snap.pids_in_use, snap.pid_max, snap.pid_max)
        rows.append(["PIDs in use (pid_max)", _num(snap.pids_in_use), snap.pid_max, "",
                     _pct(usage)])
    if not rows:
        return ""
    # The row names stay whole; the notes in "use" wrap.
    return "Limits\n" + fit_table(rows, ["", "used", "soft", "hard", "use"], width, last=[0])


def _findings(t: TargetReport, style: Callable[..., str], width: int = DEFAULT_WIDTH) -> str:
    if t.gone and not t.findings:
        return "Findings: none (the process exited before a second sample)"
    gaps = coverage(t.snapshot)
    if not t.findings and gaps is None:
        return style("Findings: none", fg="green") + " — no leak seen" + (
            f" over {t.elapsed_s:.1f} s" if t.samples > 1 else "")
    if not t.findings:
        lines = [style("Findings: none seen, but the scan is incomplete", fg="yellow",
                       bold=True)]
    else:
        lines = [f"Findings: {len(t.findings)}"]
        lines += [_finding_line(f, style, width) for f in t.findings]
        lines.append(explained_line(sorted({f.code for f in t.findings}), width))
    if gaps is not None:
        lines.append(fill("Incomplete: could not read " + "; ".join(gaps.missing)
                          + f", so {' '.join(gaps.unchecked)} went unchecked; "
                          + gaps.to_complete, width, hang="  ").replace(
            "Incomplete:", style("Incomplete:", fg="yellow", bold=True), 1))
    waiting = sorted(t.snapshot.close_wait_of_uid.items(), key=lambda kv: (-kv[1], kv[0]))
    if waiting:
        uid = t.snapshot.processes[t.pid].uid
        ports = ", ".join(f"{n} on port {port}" for port, n in waiting[:MAX_UID_PORTS])
        more = f" and {len(waiting) - MAX_UID_PORTS} more ports" if len(waiting) > \
            MAX_UID_PORTS else ""
        lines.append(fill(f"sock_diag (open to any user) shows sockets of UID {uid} in "
                          f"CLOSE_WAIT on ports where UID {uid} listens: {ports}{more}; some "
                          "may be this process's (RD201), which its descriptors would tell",
                          width, hang="  "))
    return "\n".join(lines)


def explained_line(codes: Iterable[str], width: int = DEFAULT_WIDTH) -> str:
    """"Explained: reaper-doctor explain RD101, ..." wrapped under itself."""
    return join_fitted([f"reaper-doctor explain {c}" for c in codes], width, sep=", ",
                       indent="Explained: ", hang=" " * 11)


def _finding_line(f: Finding, style: Callable[..., str], width: int = DEFAULT_WIDTH) -> str:
    """A finding: its severity, code, slug and PID, then the message wrapped
    with a hanging indent."""
    sev = style(f.severity.value.upper().ljust(7), fg=SEVERITY_COLORS[f.severity], bold=True)
    return f"  {sev} {f.code} {f.slug} (PID {f.pid})\n" + fill(safe(f.message), width,
                                                              indent=" " * 10)


def _unreadable(snap: Snapshot, width: int = DEFAULT_WIDTH) -> str:
    if not snap.unreadable:
        return ""
    lines = ["Could not read"]
    for u in snap.unreadable[:10]:
        lines.append(fill(f"PID {u.pid} {u.field}: {safe(u.reason)}", width, indent="  ",
                          hang="    "))
    if len(snap.unreadable) > 10:
        lines.append(f"  … and {len(snap.unreadable) - 10} more")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"
