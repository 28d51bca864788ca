"""The process table and the target's tree: ppid, real UID, threads and
state of every process, the stat lines of a tree, children and new PIDs."""

from __future__ import annotations

import os
from typing import (
    Iterable,
    Iterator,
    NamedTuple,
    Sequence,
)

from ..model.process import TaskBrief
from ..model.snapshot import HolderLook
from ..parse import containers, procfs
from . import proc
from .cache import ProcessCache
from .own import has_children, last_pid  # noqa: F401  (re-exported)
from .proc import (
    ProcessGone,
    check_gone,
    map_io,
    read_bytes,
    read_proc_files,
    read_small_or_none,
    read_text,
)


def read_stat(pid: int) -> procfs.StatLine | None:
    """The stat line of `pid`, or None if it is gone."""
    try:
        return procfs.parse_stat(read_bytes(f"{proc.ROOT}/{pid}/stat"))
    except OSError:
        return None


def exit_status_hidden(pid: int) -> bool:
    """Whether the kernel hides the exit status of zombie `pid` from us.

    /proc/PID/stat shows the status only to a reader that may ptrace-read
    the process (PTRACE_MODE_READ_FSCREDS), and 0 to anyone else: another
    user without CAP_SYS_PTRACE, root without it (`capsh
    --drop=cap_sys_ptrace`), a setuid program's zombie. The links in
    /proc/PID/ns pass the same check first and refuse with EACCES, so one
    readlink asks the kernel itself instead of guessing from UIDs."""
    try:
        os.readlink(f"{proc.ROOT}/{pid}/ns/pid")
    except PermissionError:
        return True
    except OSError:
        pass   # allowed, and the link is gone (or no namespaces here)
    return False


# Task states of a thread that neither runs nor is about to: it sleeps
# interruptibly (waits for an event, a timer, a lock) or is stopped.
ASLEEP_STATES = frozenset("STt")


def look_at_holders(pids: Iterable[int]) -> HolderLook | None:
    """Whether every task of the live processes `pids` is asleep, and the
    CPU time of each; None when none of them is left to read. One stat
    read per process, one per thread when it has several."""
    asleep, cpu_s = True, {}
    ticks = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        st = read_stat(pid)
        if st is None or st.state == "Z":
            continue
        cpu_s[pid] = st.cpu_ticks / ticks
        if asleep and st.threads > 1:
            asleep = all(state in ASLEEP_STATES for state in _thread_states(pid))
        elif asleep:
            asleep = st.state in ASLEEP_STATES
    return HolderLook(asleep=asleep, cpu_s=cpu_s) if cpu_s else None


def _thread_states(pid: int) -> list[str]:
    """The state letter of each live thread of `pid` (exiting ones left out)."""
    try:
        tids = os.listdir(f"{proc.ROOT}/{pid}/task")
    except OSError:
        return []
    states = []
    for tid in tids:
        try:
            st = procfs.parse_stat(read_bytes(f"{proc.ROOT}/{pid}/task/{tid}/stat"))
        except OSError:
            continue
        if st.state not in "ZX":
            states.append(st.state)
    return states


def stat_lines() -> Iterator[procfs.StatLine]:
    """The stat line of every process; those that exit mid-walk are skipped."""
    for entry in os.listdir(proc.ROOT):
        if entry.isdigit():
            line = read_stat(int(entry))
            if line is not None:
                yield line


def child_states(ppid: int) -> dict[int, str]:
    """{pid: state letter} of the children of `ppid`."""
    return {st.pid: st.state for st in stat_lines() if st.ppid == ppid}


def session_members(sid: int) -> list[procfs.StatLine]:
    """The processes (live or zombie) in session `sid`."""
    return [st for st in stat_lines() if st.session == sid]


def session_members_below(sid: int, ancestor: int) -> list[procfs.StatLine]:
    """session_members(sid) among `ancestor` and its descendants, walked down
    the children files: the cost follows that tree, not the machine (a
    whole /proc walk takes a tenth of a second per 4,000 processes).

    Complete when every member descends from `ancestor`: a session started
    by `ancestor` whose orphans return to it (a child subreaper). Without
    children files (CONFIG_PROC_CHILDREN off), the whole /proc walk."""
    found: list[procfs.StatLine] = []
    seen: set[int] = set()
    level = [ancestor]
    while level:
        below: list[int] = []
        for pid in level:
            if pid in seen:
                continue
            seen.add(pid)
            st = read_stat(pid)
            if st is None:
                continue  # gone since its parent listed it
            if st.session == sid:
                found.append(st)
            if st.state == "Z" and st.threads <= 1:
                continue  # a zombie has no children left
            try:
                children = task_children(pid)
            except (ProcessGone, OSError):
                continue
            if children is None:
                return session_members(sid)
            below.extend(children)
        level = below
    return found


def status_field(raw: bytes, key: bytes) -> bytes | None:
    start = raw.find(key)
    if start < 0:
        return None
    start += len(key)
    end = raw.find(b"\n", start)
    return raw[start:end if end >= 0 else None].strip()


def process_table(*, details: bool = False,
                  cache: ProcessCache | None = None) -> dict[int, TaskBrief]:
    """ppid, real uid, threads and state of every process, from one read of
    each /proc/<pid>/status (searched, not fully parsed: this runs over
    thousands of processes).

    RLIMIT_NPROC counts tasks per *real* UID, and the only
    per-process source of the real UID is `status` (the owner of /proc/<pid>
    is the effective UID, and root for non-dumpable processes), so every
    process's status is read once: the cheapest correct way.

    With `cache` (censuses one after another), a process whose real UID
    and NSpid line were read lately has its /proc/<pid>/stat read instead
    (cheaper to make and to parse, and it has the fields that change):
    its real UID is taken from the cache, read again every few censuses
    (setuid(2) is rare after start-up), and its fd_size is None (unknown).
    """
    with os.scandir(proc.ROOT) as listing:   # d_ino comes with the listing, at no cost
        found = [(int(e.name), e.inode()) for e in listing if e.name.isdigit()]
    kept: dict[int, tuple[int | None, tuple[int, ...]]] = {}
    if cache is not None and details:
        kept = cache.get_many("identity", found)
    fresh = [pid for pid, _ in found if pid not in kept]
    raws = dict(zip(fresh, read_proc_files(fresh, "status")))
    if kept:
        warm = [pid for pid, _ in found if pid in kept]
        raws.update(zip(warm, read_proc_files(warm, "stat")))
    table: dict[int, TaskBrief] = {}
    for pid, ino in found:
        raw = raws[pid]
        if raw is None:
            continue  # exited since listdir
        identity = kept.get(pid)
        if identity is not None:
            brief = _brief_of_stat(raw, identity, ino)
        else:
            brief = _brief_of(raw, details=details, ino=ino)
            if brief is not None and cache is not None and details:
                cache.put("identity", pid, ino, (brief.uid, brief.nspid))
        if brief is not None:
            table[pid] = brief
    return table


def _brief_of(raw: bytes, *, details: bool = False, ino: int | None = None) -> TaskBrief | None:
    """A TaskBrief from the text of /proc/<pid>/status, searched for the few
    lines it needs; None without a PPid line."""
    ppid = status_field(raw, b"\nPPid:")
    if ppid is None:
        return None
    threads = status_field(raw, b"\nThreads:")
    uid = status_field(raw, b"\nUid:")
    state = status_field(raw, b"\nState:")
    if not details:
        return TaskBrief(int(ppid), int(uid.split()[0]) if uid else None,
                         int(threads) if threads else 1, state[:1].decode() if state else "?")
    name = status_field(raw, b"Name:")
    size = status_field(raw, b"\nFDSize:")
    return TaskBrief(
        int(ppid), int(uid.split()[0]) if uid else None, int(threads) if threads else 1,
        state[:1].decode() if state else "?",
        procfs.unescape_status_name(name.decode("utf-8", "replace")) if name else None,
        int(size) if size else None, ino,
        containers.parse_nspid(status_field(raw, b"\nNSpid:") or b""))


def _brief_of_stat(raw: bytes, identity: tuple[int | None, tuple[int, ...]],
                   ino: int) -> TaskBrief | None:
    """A TaskBrief from /proc/<pid>/stat and the real UID and NSpid kept
    for the process; None if the line cannot be parsed."""
    try:
        close = raw.rindex(b")")
        rest = raw[close + 2:].split(None, 18)   # rest[0] is field 3 (state)
        return TaskBrief(int(rest[1]), identity[0], int(rest[17]), rest[0].decode(),
                         raw[raw.index(b"(") + 1:close].decode("utf-8", "replace"),
                         None, ino, identity[1])
    except (ValueError, IndexError):
        return None


def descendants(table: dict[int, TaskBrief], root: int) -> list[int]:
    """`root` and every process below it, parents before children."""
    children: dict[int, list[int]] = {}
    for pid, brief in table.items():
        children.setdefault(brief.ppid, []).append(pid)
    order, stack = [], [root]
    seen = set()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        order.append(pid)
        stack.extend(sorted(children.get(pid, ()), reverse=True))
    return order


class ProcessTree(NamedTuple):
    """The target's tree as one sample read it, and the machine around it."""

    order: list[int]                       # the target and its descendants, parents first
    stats: dict[int, procfs.StatLine]      # the stat line of each of them
    table: dict[int, TaskBrief]            # every process on the machine (nproc, PIDs in use)
    statuses: dict[int, bytes]             # raw status read on the way (live members)


def read_tree(target: int, *, machine: bool = True) -> ProcessTree:
    """The target's descendants, and ppid, real UID and threads of every
    process on the machine (with `machine` False, of the tree's members
    only: `add_machine` reads the rest later). Raises ProcessGone if the
    target does not exist.

    Where the kernel has /proc/<pid>/task/<tid>/children (CONFIG_PROC_CHILDREN)
    the tree is walked down from the target and each member is read once
    (its stat); only the processes outside the tree and the live members
    have their status read, for the real UID. Otherwise every process's
    status is read and the tree found from the PPid lines.
    """
    if not os.path.exists(f"{proc.ROOT}/{target}/task/{target}/children"):
        if not os.path.exists(f"{proc.ROOT}/{target}"):
            raise ProcessGone(target)
        return _tree_from_table(target)
    stats: dict[int, procfs.StatLine] = {}
    kids: dict[int, list[int]] = {}
    level = [target]
    while level:   # breadth first: each level's stat files are read as one batch
        below: list[int] = []
        for pid, raw in zip(level, read_proc_files(level, "stat")):
            if raw is None:
                if pid == target:
                    raise ProcessGone(target)
                continue  # exited since its parent listed it
            st = stats[pid] = procfs.parse_stat(raw)
            if st.state == "Z" and st.threads <= 1:
                continue  # a zombie's children went to a reaper when it exited
            try:
                found = task_children(pid) or []
            except ProcessGone:
                found = []
            kids[pid] = sorted(c for c in set(found) if c not in stats)
            below.extend(kids[pid])
        level = below
    order, stack, members = [], [target], set()
    while stack:
        pid = stack.pop()
        if pid in stats and pid not in members:  # a child reparented mid-walk is listed twice
            members.add(pid)
            order.append(pid)
            stack.extend(reversed(kids.get(pid, ())))
    others = _outside(members) if machine else []
    live = [pid for pid in order if stats[pid].state != "Z"]
    raws = read_proc_files([*others, *live], "status")
    table = _briefs(others, raws)
    statuses = {pid: raw for pid, raw in zip(live, raws[len(others):]) if raw is not None}
    for pid in live:
        st = stats[pid]
        brief = _brief_of(statuses[pid]) if pid in statuses else None
        table[pid] = TaskBrief(st.ppid, brief.uid if brief else None, st.threads, st.state)
    zombies = [pid for pid in order if stats[pid].state == "Z"]
    for pid, uid in zip(zombies, _zombie_uids(zombies, stats, table)):
        st = stats[pid]
        table[pid] = TaskBrief(st.ppid, uid, st.threads, st.state)
    return ProcessTree(order=order, stats=stats, table=table, statuses=statuses)


def add_machine(tree: ProcessTree) -> None:
    """Complete `tree.table` (read by read_tree with `machine` False) with
    every process outside it. Reading the tree's own files first keeps them
    close together in time: on a machine of thousands of processes, the rest
    takes a good part of a second."""
    others = _outside(tree.table.keys())
    tree.table.update(_briefs(others, read_proc_files(others, "status")))


def _outside(members: Iterable[int]) -> list[str]:
    inside = set(members)
    return [e for e in os.listdir(proc.ROOT) if e.isdigit() and int(e) not in inside]


def _briefs(entries: list[str], raws: Sequence[bytes | None]) -> dict[int, TaskBrief]:
    table: dict[int, TaskBrief] = {}
    for entry, raw in zip(entries, raws):
        brief = _brief_of(raw) if raw is not None else None
        if brief is not None:
            table[int(entry)] = brief
    return table


def _zombie_uids(zombies: list[int], stats: dict[int, procfs.StatLine],
                 table: dict[int, TaskBrief]) -> list[int | None]:
    """The real UID of each of `zombies`, cheaply (`table` holds their parents).

    A zombie's status costs as much to read as its stat. The owner of
    /proc/<pid> (one stat() call) is its effective UID; it is taken as the
    real one when it matches the parent's real UID, the common case. When
    it does not (a set-user-ID child such as sudo or ping, exiting with
    real and effective UIDs apart) the status is read: those zombies count
    against their real UID's RLIMIT_NPROC. Missed: a child that changed
    its real UID alone to something else, then exited.
    """
    uids = map_io(_dir_owner, zombies)
    for i, (pid, owner) in enumerate(zip(zombies, uids)):
        parent = table.get(stats[pid].ppid)
        if owner is None or parent is None or owner != parent.uid:
            raw = read_small_or_none(f"{proc.ROOT}/{pid}/status")
            brief = _brief_of(raw) if raw is not None else None
            uids[i] = brief.uid if brief is not None else None
    return uids


def _dir_owner(pid: int) -> int | None:
    try:
        return os.stat(f"{proc.ROOT}/{pid}").st_uid
    except OSError:
        return None


def _tree_from_table(target: int) -> ProcessTree:
    """read_tree without children files: every status, then the members' stat."""
    table = process_table()
    if target not in table:
        raise ProcessGone(target)
    order: list[int] = []
    stats: dict[int, procfs.StatLine] = {}
    members = descendants(table, target)
    for pid, raw in zip(members, read_proc_files(members, "stat")):
        if raw is not None:
            stats[pid] = procfs.parse_stat(raw)
            order.append(pid)
        elif pid == target:
            raise ProcessGone(target)
    return ProcessTree(order=order, stats=stats, table=table, statuses={})


def pids_since(last: int | None, now: int | None, pid_max: int,
               most: int) -> list[int] | None:
    """The PIDs allocated after the reading `last` of last_pid() up to the
    reading `now`, in allocation order (the counter wraps at `pid_max` and
    starts again above 1); None when either reading is missing or there
    are more than `most` (a walk of every process is cheaper then). The
    processes created between the two readings are among them."""
    if last is None or now is None:
        return None
    if now >= last:
        new = range(last + 1, now + 1)
        wrapped: range = range(0)
    else:  # the PID counter wrapped around pid_max
        new, wrapped = range(last + 1, pid_max), range(1, now + 1)
    if len(new) + len(wrapped) > most:
        return None
    return [*new, *wrapped]


def task_children(pid: int) -> list[int] | None:
    """Children of every thread of `pid` from /proc/<pid>/task/*/children;
    None when the kernel lacks it (CONFIG_PROC_CHILDREN is off)."""
    try:
        tids = os.listdir(f"{proc.ROOT}/{pid}/task")
    except OSError as e:
        check_gone(pid, e)
        raise
    found: list[int] = []
    for tid in tids:
        try:
            found.extend(procfs.parse_children(read_text(f"{proc.ROOT}/{pid}/task/{tid}/children")))
        except FileNotFoundError:
            if not os.path.exists(f"{proc.ROOT}/{pid}/task/{tid}"):
                continue  # the thread ended since listdir
            return None
        except OSError:
            continue
    return found


def child_stats(pid: int, candidates: Iterable[int] | None = None) -> dict[int, procfs.StatLine]:
    """The stat lines of `pid`'s children (live and zombie), read among
    `candidates`, or among every process when None (a /proc walk: about
    20 us per process on the machine, so callers narrow it when they can)."""
    if candidates is None:
        candidates = (int(e) for e in os.listdir(proc.ROOT) if e.isdigit())
    found: dict[int, procfs.StatLine] = {}
    for child in candidates:
        try:
            st = procfs.parse_stat(read_bytes(f"{proc.ROOT}/{child}/stat"))
        except (OSError, ValueError):
            continue  # no such PID, or gone since
        if st.ppid == pid:
            found[child] = st
    return found


def read_brief(pid: int) -> TaskBrief | None:
    """The TaskBrief of one process; None if it is gone or `pid` names a
    thread (/proc/TID exists, hidden, for every thread)."""
    try:
        raw = read_bytes(f"{proc.ROOT}/{pid}/status")
    except OSError:
        return None
    tgid = status_field(raw, b"\nTgid:")
    if tgid is None or int(tgid) != pid:
        return None
    return _brief_of(raw)
