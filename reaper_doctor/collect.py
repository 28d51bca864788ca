"""The sole reader of the operating system: /proc (and psutil elsewhere)
into a Snapshot.

Hot paths read /proc directly with os.open/os.read: psutil's children()
builds a Process object per child (3x a raw scan with 2,000 zombies),
its rlimit() fails on other users' processes without CAP_SYS_RESOURCE,
it has no signal masks, and net_connections() parses the whole socket
table once per process (linux-facts sections 2, 7, 10). Errors become
data: a field we may not read is recorded as Unreadable, a process that
vanishes mid-read is dropped from the sample.
"""

from __future__ import annotations

import gc
import heapq
import os
import socket
import stat as stat_mod
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Mapping, NamedTuple, Sequence, TypeVar

from . import containers, netlink, procfs

if TYPE_CHECKING:
    import threading
from .model import (
    FdCounts, FdDetail, FdTable, LimitUsage, NprocUsage, PidsCgroup, ProcessInfo, Snapshot,
    SocketFd, Unreadable, WatchSample,
)

PROC = "/proc"
T = TypeVar("T")
R = TypeVar("R")
CAP_SYS_ADMIN = 21
CAP_SYS_RESOURCE = 24


class ProcessGone(Exception):
    """The process does not exist (any more)."""

    def __init__(self, pid: int) -> None:
        super().__init__(f"no process with PID {pid}")
        self.pid = pid


def read_bytes(path: str) -> bytes:
    """Read a whole (proc) file with os.open/os.read: no buffering layers."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8", "replace")


def has_procfs() -> bool:
    return os.path.exists(f"{PROC}/self/stat")


# ----------------------------------------------------------------------------
# The process table


class TaskBrief(NamedTuple):
    """Just enough of every process on the machine: ppid, real uid, threads.
    `name` and `fd_size` (the FDSize line: the size of the descriptor
    table, an upper bound of the open count) are filled for the census."""

    ppid: int
    uid: int | None
    threads: int
    state: str
    name: str | None = None
    fd_size: int | None = None
    nspid: tuple[int, ...] = ()       # the NSpid line: its PID in each namespace, ours first


def read_stat(pid: int) -> procfs.StatLine | None:
    """The stat line of `pid`, or None if it is gone."""
    try:
        return procfs.parse_stat(read_bytes(f"{PROC}/{pid}/stat"))
    except OSError:
        return None


def stat_lines() -> Iterator[procfs.StatLine]:
    """The stat line of every process; those that exit mid-walk are skipped."""
    for entry in os.listdir(PROC):
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


def _brief_field(raw: bytes, key: bytes) -> bytes | None:
    start = raw.find(key)
    if start < 0:
        return None
    start += len(key)
    end = raw.find(b"\n", start)
    return raw[start:end if end >= 0 else None].strip()


def _read_small(path: str, size: int = 8192) -> bytes:
    """One open, one read, one close: enough for status, stat, limits
    (about 1.4 KB); a longer file is read to its end."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        raw = os.read(fd, size)
        if len(raw) < size:
            return raw
        chunks = [raw]
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------
# Many small reads at once

# Most of the cost of reading /proc is in the kernel (path lookup and
# formatting the file: ~10 us per status or stat file, ~5 us per fd
# readlink), and os.open/os.read/os.readlink release the GIL while it
# runs. With two CPUs, a second thread doing half of a long list of such
# calls overlaps that kernel time (~25% off 10,000 reads here); the
# Python-level work stays serial. Below PARALLEL_MIN items a thread costs
# more than it saves.
PARALLEL_MIN = 512


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def map_io(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """[fn(x) for x in items], in order, with the second half on another
    thread when the list is long and there is a second CPU. `fn` should
    turn expected errors into values; anything it raises is re-raised."""
    if len(items) < PARALLEL_MIN or _cpus() < 2:
        return [fn(x) for x in items]
    import threading

    half = len(items) // 2
    tail: list = []
    failure: list[BaseException] = []

    def work() -> None:
        try:
            tail.extend([fn(x) for x in items[half:]])
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            failure.append(e)

    worker = threading.Thread(target=work, name="reaper-doctor-io", daemon=True)
    worker.start()
    try:
        head = [fn(x) for x in items[:half]]
    finally:
        worker.join()
    if failure:
        raise failure[0]
    return head + tail


def _read_small_or_none(path: str) -> bytes | None:
    try:
        return _read_small(path)
    except OSError:
        return None


def read_proc_files(pids: Sequence[int | str], name: str) -> list[bytes | None]:
    """/proc/<pid>/<name> of each of `pids` (None: gone), through map_io.
    Our own entry is read again once map_io's thread has ended: read
    during it, our status and stat would count that thread."""
    raws = map_io(_read_small_or_none, [f"{PROC}/{pid}/{name}" for pid in pids])
    me = os.getpid()
    for i, pid in enumerate(pids):
        if int(pid) == me:
            raws[i] = _read_small_or_none(f"{PROC}/{pid}/{name}")
    return raws


def process_table(*, details: bool = False) -> dict[int, TaskBrief]:
    """ppid, real uid, threads and state of every process, from one read of
    each /proc/<pid>/status (searched, not fully parsed: this runs over
    thousands of processes).

    RLIMIT_NPROC counts tasks per *real* UID (linux-facts 6), and the only
    per-process source of the real UID is `status` (the owner of /proc/<pid>
    is the effective UID, and root for non-dumpable processes), so every
    process's status is read once: the cheapest correct way.
    """
    table: dict[int, TaskBrief] = {}
    entries = [e for e in os.listdir(PROC) if e.isdigit()]
    raws = read_proc_files(entries, "status")
    for entry, raw in zip(entries, raws):
        if raw is None:
            continue  # exited since listdir
        brief = _brief_of(raw, details=details)
        if brief is not None:
            table[int(entry)] = brief
    return table


def _brief_of(raw: bytes, *, details: bool = False) -> TaskBrief | None:
    """A TaskBrief from the text of /proc/<pid>/status, searched for the few
    lines it needs; None without a PPid line."""
    ppid = _brief_field(raw, b"\nPPid:")
    if ppid is None:
        return None
    threads = _brief_field(raw, b"\nThreads:")
    uid = _brief_field(raw, b"\nUid:")
    state = _brief_field(raw, b"\nState:")
    brief = TaskBrief(
        ppid=int(ppid), uid=int(uid.split()[0]) if uid else None,
        threads=int(threads) if threads else 1,
        state=state[:1].decode() if state else "?")
    if details:
        name = _brief_field(raw, b"Name:")
        size = _brief_field(raw, b"\nFDSize:")
        brief = brief._replace(
            name=procfs.unescape_status_name(name.decode("utf-8", "replace")) if name else None,
            fd_size=int(size) if size else None,
            nspid=containers.parse_nspid(_brief_field(raw, b"\nNSpid:") or b""))
    return brief


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


def read_tree(target: int) -> ProcessTree:
    """The target's descendants, and ppid, real UID and threads of every
    process on the machine. Raises ProcessGone if the target does not exist.

    Where the kernel has /proc/<pid>/task/<tid>/children (CONFIG_PROC_CHILDREN)
    the tree is walked down from the target and each member is read once
    (its stat); only the processes outside the tree and the live members
    have their status read, for the real UID. Otherwise every process's
    status is read and the tree found from the PPid lines.
    """
    if not os.path.exists(f"{PROC}/{target}/task/{target}/children"):
        if not os.path.exists(f"{PROC}/{target}"):
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
    others = [e for e in os.listdir(PROC) if e.isdigit() and int(e) not in members]
    live = [pid for pid in order if stats[pid].state != "Z"]
    raws = read_proc_files([*others, *live], "status")
    table: dict[int, TaskBrief] = {}
    for entry, raw in zip(others, raws):
        brief = _brief_of(raw) if raw is not None else None
        if brief is not None:
            table[int(entry)] = brief
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
            raw = _read_small_or_none(f"{PROC}/{pid}/status")
            brief = _brief_of(raw) if raw is not None else None
            uids[i] = brief.uid if brief is not None else None
    return uids


def _dir_owner(pid: int) -> int | None:
    try:
        return os.stat(f"{PROC}/{pid}").st_uid
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


# ----------------------------------------------------------------------------
# One process


@dataclass
class _Context:
    """What one sample shares across processes: clock, tables, errors."""

    uptime_s: float
    clock_ticks: int
    is_root: bool
    my_uid: int
    with_fd_list: bool = False
    unreadable: list[Unreadable] = field(default_factory=list)
    socket_tables: dict[str, _SocketRows] = field(default_factory=dict)
    unix_inodes: dict[str, set[int]] = field(default_factory=dict)
    # netns -> local port -> peers of connections not yet accepted
    unaccepted: dict[str, dict[int, set[tuple[str, int]]]] = field(default_factory=dict)
    backlogs: dict[int, int] | None = None      # LISTEN inode -> backlog; read lazily
    queue_peers: dict[int, frozenset[tuple[str, int]]] = field(default_factory=dict)
    statuses: dict[int, bytes] = field(default_factory=dict)  # raw status read this sample
    reading_sockets: threading.Thread | None = None  # reading the socket table ahead
    namespace_view: NamespaceView | None = None      # read once, when first needed
    # The cgroup file's text -> its container: the processes of one
    # container share one text, parsed once.
    container_of_cgroup: dict[bytes, containers.Container | None] = field(default_factory=dict)

    def note(self, pid: int, what: str, err: BaseException | str) -> None:
        reason = err if isinstance(err, str) else _reason(err)
        self.unreadable.append(Unreadable(pid, what, reason))


def _reason(err: BaseException) -> str:
    if isinstance(err, PermissionError):
        return "permission denied"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror.lower()
    return str(err) or type(err).__name__


def _new_context(with_fd_list: bool = False) -> _Context:
    try:
        uptime_s = float(read_text(f"{PROC}/uptime").split()[0])
    except OSError:
        uptime_s = 0.0
    return _Context(uptime_s=uptime_s, clock_ticks=os.sysconf("SC_CLK_TCK"),
                    is_root=os.geteuid() == 0, my_uid=os.geteuid(),
                    with_fd_list=with_fd_list)


def _read_process(pid: int, ctx: _Context, brief: TaskBrief | None,
                  *, wants_sigchld: bool, stat: procfs.StatLine | None = None,
                  parent: ProcessInfo | None = None) -> ProcessInfo:
    """Read one process (from `stat` when the caller has read its stat
    already). A zombie takes its namespace and container from `parent`.
    Raises ProcessGone if it has vanished."""
    base = f"{PROC}/{pid}"
    st = stat
    if st is None:
        try:
            st = procfs.parse_stat(_read_small(f"{base}/stat"))
        except (FileNotFoundError, ProcessLookupError):
            raise ProcessGone(pid) from None
        except OSError as e:
            raise ProcessGone(pid) from e
    uid = brief.uid if brief else None
    is_zombie = st.state == "Z"
    exit_status = None
    if is_zombie:
        # The kernel shows 0 to a reader that may not ptrace-read the zombie
        # (linux-facts 1): only root or the same UID can trust a 0.
        hidden = not ctx.is_root and uid is not None and uid != ctx.my_uid
        exit_status = procfs.decode_wait_status(st.exit_code, hidden)  # lru_cache: positional keys are cheaper
    cmdline: tuple[str, ...] | None = None
    num_fds: int | None = None
    sigchld: str | None = None
    pending = False
    if not is_zombie:
        try:
            raw = read_bytes(f"{base}/cmdline")
            cmdline = tuple(a.decode("utf-8", "replace") for a in raw.rstrip(b"\0").split(b"\0")) if raw else ()
        except (FileNotFoundError, ProcessLookupError):
            raise ProcessGone(pid) from None
        except OSError as e:
            ctx.note(pid, "cmdline", e)
        if wants_sigchld:
            sigchld, pending = _sigchld(pid, ctx, st.threads)
    age = None
    if ctx.uptime_s:
        age = max(0.0, ctx.uptime_s - st.start_ticks / ctx.clock_ticks)
    ns = _zombie_namespace(pid, parent) if is_zombie else _namespace(pid, ctx)
    # Positional, in field order: half the cost of keywords, once per process.
    return ProcessInfo(pid, st.ppid, st.comm, st.state, st.start_ticks, age, st.threads,
                       uid, cmdline, num_fds, exit_status, sigchld, pending,
                       bool(st.flags & procfs.PF_KTHREAD), st.child_faults > 0, *ns)


def _sigchld(pid: int, ctx: _Context, threads: int) -> tuple[str | None, bool]:
    """SIGCHLD disposition from the status masks; SigBlk is per thread, so
    every task is checked when there is more than one (linux-facts 2)."""
    try:
        status = procfs.parse_status(_status_text(pid, ctx))
    except OSError as e:
        ctx.note(pid, "sigchld", e)
        return None, False
    if not status.has_sig_masks:
        ctx.note(pid, "sigchld", "no Sig* lines in /proc/<pid>/status")
        return None, False
    blocked = False
    if threads > 1:
        try:
            for tid in os.listdir(f"{PROC}/{pid}/task"):
                text = read_text(f"{PROC}/{pid}/task/{tid}/status")
                if (procfs.parse_status(text).sig_blk or 0) & procfs.SIGCHLD_BIT:
                    blocked = True
                    break
        except OSError:
            pass  # a thread exited mid-walk: the process-level mask still counts
    pending = bool((status.shd_pnd or 0) & procfs.SIGCHLD_BIT)
    return procfs.sigchld_disposition(status, any_thread_blocks=blocked), pending


# ----------------------------------------------------------------------------
# PID namespaces and containers


class NamespaceView(NamedTuple):
    """Where the reader stands: its own PID namespace, and whether the /proc
    it reads belongs to the host's PID namespace."""

    own_pid_ns: int | None      # inode of our PID namespace; None: unreadable
    proc_is_host: bool          # False: /proc is a container's, and its PID 1 the container's init


def namespace_view() -> NamespaceView:
    """Our NSpid has one field when the /proc we read is our own namespace's
    (proc(5)); that namespace is the host's when its inode is the initial
    one. /proc/1/ns/pid itself may be unreadable, even to root."""
    own = _pid_ns("self")
    try:
        nspid = containers.parse_nspid(
            _brief_field(_read_small(f"{PROC}/self/status"), b"\nNSpid:") or b"")
    except OSError:
        nspid = ()
    in_own_proc = len(nspid) == 1
    return NamespaceView(own_pid_ns=own, proc_is_host=not (
        in_own_proc and own is not None and own != containers.HOST_PID_NS_INODE))


def _pid_ns(pid: int | str) -> int | None:
    try:
        return containers.parse_ns_inode(os.readlink(f"{PROC}/{pid}/ns/pid"))
    except OSError:
        return None


_NO_NAMESPACE = (None, None, False, None, None)


def _namespace(pid: int, ctx: _Context) -> tuple[int | None, int | None, bool,
                                                  containers.Container | None, str | None]:
    """(pid_ns, ns_pid, is_ns_init, container, sigterm) of a live process:
    its status (read once per sample), a readlink and its cgroup file."""
    raw = ctx.statuses.get(pid)
    try:
        if raw is None:
            raw = ctx.statuses[pid] = _read_small(f"{PROC}/{pid}/status")
    except OSError as e:
        ctx.note(pid, "namespace", e)
        return _NO_NAMESPACE
    nspid = containers.parse_nspid(_brief_field(raw, b"\nNSpid:") or b"")
    ns_pid = nspid[-1] if nspid else None
    if ctx.namespace_view is None:
        ctx.namespace_view = namespace_view()
    is_init = ns_pid == 1 and (len(nspid) > 1 or not ctx.namespace_view.proc_is_host)
    sigterm = _sigterm(pid, raw) if is_init else None
    return _pid_ns(pid), ns_pid, is_init, _container(pid, ctx), sigterm


def _zombie_namespace(pid: int, parent: ProcessInfo | None) -> tuple[
        int | None, int | None, bool, containers.Container | None, str | None]:
    """A zombie's namespace and container are its parent's; its own PID
    there is read only when the parent is in a namespace below ours (a
    host scan of 10,000 zombies reads no more)."""
    if parent is None:
        return _NO_NAMESPACE
    ns_pid = None
    if parent.ns_pid is not None and parent.ns_pid != parent.pid:
        try:
            nspid = containers.parse_nspid(
                _brief_field(_read_small(f"{PROC}/{pid}/status"), b"\nNSpid:") or b"")
            ns_pid = nspid[-1] if nspid else None
        except OSError:
            pass
    return parent.pid_ns, ns_pid, False, parent.container, None


def _container(pid: int, ctx: _Context) -> containers.Container | None:
    try:
        raw = _read_small(f"{PROC}/{pid}/cgroup")
    except OSError:
        return None
    known = ctx.container_of_cgroup
    if raw not in known:
        known[raw] = containers.container_from_cgroup(raw.decode("utf-8", "replace"))
    return known[raw]


def _sigterm(pid: int, status_raw: bytes) -> str | None:
    """SIGTERM disposition of a namespace's PID 1, from its status masks
    and, when neither caught nor blocked, its wchan: an init waiting in
    sigtimedwait shows the waited signals out of SigBlk meanwhile."""
    status = procfs.parse_status(status_raw.decode("utf-8", "replace"))
    found = containers.sigterm_disposition(status.sig_blk, status.sig_ign, status.sig_cgt)
    if found in ("default", "ignored"):
        try:
            wchan = read_text(f"{PROC}/{pid}/wchan")
        except OSError:
            return found
        found = containers.sigterm_disposition(
            status.sig_blk, status.sig_ign, status.sig_cgt,
            waits_for_signals=containers.waits_for_signals(wchan))
    return found


def _status_text(pid: int, ctx: _Context) -> str:
    """/proc/<pid>/status, as read earlier in this sample if it was."""
    raw = ctx.statuses.get(pid)
    return (raw if raw is not None else read_bytes(f"{PROC}/{pid}/status")).decode("utf-8", "replace")


def sigchld_of(pid: int) -> str | None:
    """The SIGCHLD disposition of `pid` ("blocked" in any thread, "ignored",
    "caught", "default"); None if it cannot be read."""
    st = read_stat(pid)
    if st is None:
        return None
    return _sigchld(pid, _new_context(), st.threads)[0]


# ----------------------------------------------------------------------------
# Descriptors


def _netns_key(pid: int) -> str:
    try:
        return os.readlink(f"{PROC}/{pid}/ns/net")
    except OSError:
        return f"pid:{pid}"


def _socket_table(pid: int, ctx: _Context) -> tuple[_SocketRows, set[int]]:
    """The inet and unix socket tables of `pid`'s network namespace, read
    once per namespace per sample and shared (linux-facts 10)."""
    if ctx.reading_sockets is not None:
        ctx.reading_sockets.join()   # read ahead (_read_socket_table_ahead)
        ctx.reading_sockets = None
    return _read_socket_table(pid, ctx)


# Listing a big fd directory is one long system call (~17 ms for 20,000
# descriptors) that leaves the other CPU idle: long enough to read the
# socket table on it, which most such tables will need.
SOCKETS_AHEAD_MIN_FDS = 1024


def _read_socket_table_ahead(pid: int, dir_fd: int, ctx: _Context) -> None:
    if ctx.reading_sockets is not None or _netns_key(pid) in ctx.socket_tables \
            or _cpus() < 2:
        return
    try:
        if os.fstat(dir_fd).st_size < SOCKETS_AHEAD_MIN_FDS:  # the count, on Linux >= 6.2
            return
    except OSError:
        return
    import threading

    def read_ahead() -> None:
        try:
            _read_socket_table(pid, ctx)
        except Exception:  # noqa: BLE001 - _socket_table reads it again and meets the error
            pass

    ctx.reading_sockets = threading.Thread(target=read_ahead, name="reaper-doctor-sockets",
                                           daemon=True)
    ctx.reading_sockets.start()


def _read_socket_table(pid: int, ctx: _Context) -> tuple[_SocketRows, set[int]]:
    key = _netns_key(pid)
    if key not in ctx.socket_tables:
        rows = _SocketRows()
        unaccepted: dict[int, set[tuple[str, int]]] = {}
        # TCP over sock_diag when the target shares our network namespace;
        # /proc/<pid>/net/tcp* otherwise, or if netlink is refused.
        tcp = _tcp_by_sock_diag(unaccepted) if key == _netns_key(os.getpid()) else None
        if tcp is not None:
            rows.dump, rows.diag = tcp
        for proto in (("udp", "udp6") if tcp is not None else ("tcp", "tcp6", "udp", "udp6")):
            try:
                text = read_text(f"{PROC}/{pid}/net/{proto}")
            except OSError:
                continue
            for row in procfs.parse_inet_table(text, proto):
                rows.parsed[row.inode] = row
            if proto.startswith("tcp"):
                for port, peers in procfs.parse_unaccepted(text).items():
                    unaccepted.setdefault(port, set()).update(peers)
        ctx.unaccepted[key] = unaccepted
        try:
            unix = procfs.parse_unix_inodes(read_text(f"{PROC}/{pid}/net/unix"))
        except OSError:
            unix = set()
        ctx.socket_tables[key] = rows
        ctx.unix_inodes[key] = unix
    return ctx.socket_tables[key], ctx.unix_inodes[key]


class _SocketRows(Mapping[int, procfs.SocketRow]):
    """A netns's TCP/UDP sockets by inode. Rows from sock_diag stay raw
    (an offset into the dump) until asked for: a process holds a few of
    the machine's sockets."""

    def __init__(self) -> None:
        self.parsed: dict[int, procfs.SocketRow] = {}
        self.dump = b""                     # a sock_diag dump's messages, joined
        self.diag: dict[int, int] = {}      # inode -> offset of its inet_diag_msg there

    def __getitem__(self, inode: int) -> procfs.SocketRow:
        row = self.rows((inode,))[0]
        if row is None:
            raise KeyError(inode)
        return row

    def rows(self, inodes: Iterable[int]) -> list[procfs.SocketRow | None]:
        """The row of each inode, None for one in no table; the dump's rows
        are decoded together (a process may hold thousands)."""
        inodes = list(inodes)
        parsed, offsets = self.parsed, self.diag
        todo = [inode for inode in inodes if inode not in parsed and inode in offsets]
        if todo:
            decoded = netlink.socket_rows(self.dump, [offsets[inode] for inode in todo])
            parsed.update(zip(todo, decoded))
        return [parsed.get(inode) for inode in inodes]

    def __iter__(self) -> Iterator[int]:
        yield from self.parsed
        yield from (inode for inode in self.diag if inode not in self.parsed)

    def __len__(self) -> int:
        return len(self.parsed) + sum(1 for inode in self.diag if inode not in self.parsed)


def _tcp_by_sock_diag(unaccepted: dict[int, set[tuple[str, int]]]
                      ) -> tuple[bytes, dict[int, int]] | None:
    """Every TCP socket of our network namespace that a descriptor can hold,
    from sock_diag: the dump's messages joined, and inode -> offset of its
    message there (into `unaccepted`, the connections waiting in accept
    queues). None if netlink is not available (the caller reads /proc)."""
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                           netlink.NETLINK_SOCK_DIAG) as nl:
            nl.settimeout(5.0)
            try:
                return _dump_tcp(nl, [netlink.any_family_dump_request(netlink.FILE_STATES)],
                                 unaccepted)
            except netlink.DiagError:  # a kernel without the older request
                unaccepted.clear()
                return _dump_tcp(nl, [netlink.dump_request(family, netlink.FILE_STATES)
                                      for family in (socket.AF_INET, socket.AF_INET6)], unaccepted)
    except OSError:
        return None


def _dump_tcp(nl: socket.socket, requests: list[bytes],
              unaccepted: dict[int, set[tuple[str, int]]]) -> tuple[bytes, dict[int, int]]:
    chunks: list[bytes] = []
    offsets: dict[int, int] = {}
    base = 0
    for request in requests:
        nl.send(request)
        done = False
        while not done:
            data = nl.recv(1 << 20)
            done = netlink.index_replies(data, offsets, unaccepted, base)
            chunks.append(data)
            base += len(data)
    return b"".join(chunks), offsets


def _path_kind(fd_path: str) -> str:
    try:
        mode = os.stat(fd_path).st_mode
    except OSError:
        return "file"
    if stat_mod.S_ISREG(mode):
        return "file"
    if stat_mod.S_ISDIR(mode):
        return "directory"
    if stat_mod.S_ISCHR(mode) or stat_mod.S_ISBLK(mode):
        return "device"
    if stat_mod.S_ISFIFO(mode):
        return "fifo"
    return "file"


TOP_PATHS = 5


def _socket_protocol(fd_path: str) -> str | None:
    """The protocol sockfs names for a socket fd ("TCP", "TCPv6", "NETLINK",
    ...) from the xattr system.sockprotoname; None where it cannot be read.
    Only asked for the few sockets that are in no table."""
    try:
        return os.getxattr(fd_path, "system.sockprotoname").rstrip(b"\0").decode()
    except (OSError, AttributeError):
        return None


def _backlogs(ctx: _Context) -> dict[int, int]:
    """LISTEN inode -> configured backlog, from one inet_diag dump per
    sample, only when some listener has a queue. Optional: any failure
    (no netlink, seccomp, other netns) leaves it empty, silently."""
    if ctx.backlogs is None:
        ctx.backlogs = {}
        for family in (socket.AF_INET, socket.AF_INET6):
            try:
                for row in inet_diag_dump(family, 1 << netlink.TCP_LISTEN):
                    ctx.backlogs[row.inode] = row.wqueue
            except OSError:
                continue
    return ctx.backlogs


def inet_diag_dump(family: int, states: int) -> list[netlink.DiagRow]:
    """TCP sockets of this process's network namespace in `states` (a bit
    mask of 1 << state), from NETLINK_SOCK_DIAG. Raises OSError."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                         netlink.NETLINK_SOCK_DIAG)
    try:
        sock.settimeout(2.0)
        sock.send(netlink.dump_request(family, states))
        rows: list[netlink.DiagRow] = []
        while True:
            batch, done = netlink.parse_replies(sock.recv(1 << 16))
            rows.extend(batch)
            if done:
                return rows
    finally:
        sock.close()


def _readlinks(dir_fd: int, names: Sequence[str]) -> list[str | OSError]:
    """os.readlink of each name in the directory `dir_fd`, or its error.
    Relative to an open directory the kernel resolves one path component
    per link instead of four (/proc, PID, fd, N): ~20% less time."""
    def one(name: str) -> str | OSError:
        try:
            return os.readlink(name, dir_fd=dir_fd)
        except OSError as e:
            return e

    return map_io(one, names)


def read_fds(pid: int, ctx: _Context) -> FdTable | None:
    """Every descriptor of `pid` by kind: one readlink per fd (about 5 us each)."""
    fd_dir = f"{PROC}/{pid}/fd"
    try:
        dir_fd = os.open(fd_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessGone(pid) from None
    except OSError as e:
        ctx.note(pid, "fds", e)
        return None
    try:
        return _read_fd_dir(pid, dir_fd, fd_dir, ctx)
    finally:
        os.close(dir_fd)


def _read_fd_dir(pid: int, dir_fd: int, fd_dir: str, ctx: _Context) -> FdTable | None:
    _read_socket_table_ahead(pid, dir_fd, ctx)
    try:
        names = os.listdir(dir_fd)
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessGone(pid) from None   # it exited since the open
    except OSError as e:
        ctx.note(pid, "fds", e)
        return None
    kinds: Counter[str] = Counter()
    paths: Counter[str] = Counter()
    sockets: list[SocketFd] = []
    unlisted: list[tuple[int, int]] = []
    closed_tcp: list[tuple[int, int]] = []
    listed: list[tuple[int, str]] = []
    socket_fds: list[tuple[int, int]] = []   # (fd, inode): looked up after the tally
    unreadable = 0
    kind_of: dict[str, str] = {}   # link text -> kind: one classification (and stat) per text
    with_list = ctx.with_fd_list
    # The links first (two threads on a big table: map_io), then the tally.
    links = _readlinks(dir_fd, names)
    for name, link in zip(names, links):
        if not isinstance(link, str):
            if not isinstance(link, FileNotFoundError):
                unreadable += 1
            continue  # FileNotFoundError: closed since listdir
        if with_list:
            listed.append((int(name), link))
        if link.startswith("socket:["):
            socket_fds.append((int(name), int(link[8:-1])))
            continue
        kind = kind_of.get(link)
        if kind is None:
            kind = procfs.fd_link_kind(link)[0]
            if kind == "path":
                kind = _path_kind(f"{fd_dir}/{name}")
            kind_of[link] = kind
        if kind == "file":
            paths[link] += 1
        kinds[kind] += 1
    if socket_fds:
        table, unix = _socket_table(pid, ctx)
        for (fd, inode), row in zip(socket_fds, table.rows(inode for _, inode in socket_fds)):
            if row is not None:
                kind = row.proto.rstrip("6")
                backlog = None
                if row.state == "LISTEN" and row.rx_queue:
                    backlog = _backlogs(ctx).get(inode)
                    peers = ctx.unaccepted.get(_netns_key(pid), {}).get(row.local[1], ())
                    ctx.queue_peers[inode] = frozenset(peers)
                sockets.append(SocketFd(fd, inode, row.proto, row.local, row.remote,
                                        row.state, row.rx_queue, row.tx_queue, backlog))
            elif inode in unix:
                kind = "unix"
            else:
                # A socket in no table: TCP CLOSE after shutdown(), or a
                # protocol we do not list (netlink, packet). Invisible to ss.
                kind = "socket"
                unlisted.append((fd, inode))
                if _socket_protocol(f"{fd_dir}/{fd}") in (None, "TCP", "TCPv6"):
                    closed_tcp.append((fd, inode))
            kinds[kind] += 1
    if unreadable:
        ctx.note(pid, "fd links", f"{unreadable} descriptor links unreadable (counted, kind unknown)")
        kinds["unknown"] += unreadable
    return FdTable(open=sum(kinds.values()), by_kind=dict(kinds),
                   top_paths=tuple(paths.most_common(TOP_PATHS)),
                   sockets=tuple(sorted(sockets, key=lambda s: s.fd)),
                   unlisted_socket_fds=tuple(sorted(unlisted)),
                   closed_tcp=tuple(sorted(closed_tcp)),
                   listed=tuple(sorted(listed)), unreadable_links=unreadable)


def count_fds(pid: int) -> int | None:
    """Open descriptors of `pid`, without reading a single link.

    Since Linux 6.2 stat(/proc/PID/fd).st_size is the count (a bitmap
    weight: O(1) in practice); older kernels say 0, so a 0 is checked with
    listdir (about 0.8 us per fd, linux-facts 10). Raises ProcessGone;
    None when the directory may not be read (another user's process).
    """
    path = f"{PROC}/{pid}/fd"
    try:
        size = os.stat(path).st_size
        return size if size > 0 else len(os.listdir(path))
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessGone(pid) from None
    except OSError:
        return None


def fd_counts(pids: "list[int] | tuple[int, ...] | set[int]") -> FdCounts:
    """A light sample: the open-descriptor count of each of `pids` still
    alive and readable (the vanished and the unreadable are left out)."""
    counts: dict[int, int] = {}
    for pid in pids:
        try:
            n = count_fds(pid)
        except ProcessGone:
            continue
        if n is not None:
            counts[pid] = n
    return FdCounts(taken_at=time.monotonic(), counts=counts)


# ----------------------------------------------------------------------------
# Limits


def _limits(pid: int, ctx: _Context) -> dict[str, tuple[int | None, int | None]] | None:
    # /proc/<pid>/limits is 0444; psutil's rlimit() (prlimit) fails on other
    # users' processes without CAP_SYS_RESOURCE (linux-facts 7).
    try:
        return procfs.parse_limits(read_text(f"{PROC}/{pid}/limits"))
    except OSError as e:
        ctx.note(pid, "limits", e)
        return None


def _nproc(pid: int, target: ProcessInfo, table: dict[int, TaskBrief],
           limits: dict[str, tuple[int | None, int | None]] | None,
           ctx: _Context) -> NprocUsage | None:
    """Tasks (threads and zombies count) of the target's real UID against
    its soft RLIMIT_NPROC (linux-facts 6)."""
    uid = target.uid
    if uid is None:
        return None
    used = sum(b.threads for b in table.values() if b.uid == uid)
    soft, hard = (limits or {}).get("Max processes", (None, None))
    enforced = uid != 0
    if enforced:
        try:
            cap_eff = procfs.parse_status(_status_text(pid, ctx)).cap_eff or 0
            if cap_eff & ((1 << CAP_SYS_ADMIN) | (1 << CAP_SYS_RESOURCE)):
                enforced = False
        except OSError:
            pass
    return NprocUsage(used=used, soft=soft, hard=hard, uid=uid, enforced=enforced)


def _cgroup_file_int(path: str) -> int | None:
    try:
        text = read_text(path).strip()
    except OSError:
        return None
    return None if text == "max" or not text.lstrip("-").isdigit() else int(text)


def pids_cgroup(pid: int, ctx: _Context) -> PidsCgroup | None:
    """The pids cgroup (v1 or v2) of `pid`, walking up to the mount root:
    the ancestor nearest its limit wins, as a limit anywhere above applies.
    A missing pids.max (the root cgroup) means no limit (linux-facts 9)."""
    try:
        lines = procfs.parse_cgroup(read_text(f"{PROC}/{pid}/cgroup"))
        mounts = procfs.parse_mountinfo(read_text(f"{PROC}/self/mountinfo"))
    except OSError as e:
        ctx.note(pid, "pids cgroup", e)
        return None
    directory = None
    for line in lines:
        if "pids" in line.controllers:  # v1
            for m in mounts:
                if m.fstype == "cgroup" and "pids" in m.super_options.split(","):
                    directory = _join_cgroup(m, line.path)
                    break
    if directory is None:
        for line in lines:
            if line.hierarchy == 0:  # v2 unified
                for m in mounts:
                    if m.fstype == "cgroup2":
                        candidate = _join_cgroup(m, line.path)
                        if _v2_has_pids(m.mount_point):
                            directory = candidate
                        break
    if directory is None:
        return PidsCgroup(path=None, current=None, max=None)
    best: PidsCgroup | None = None
    walk, mount_root = directory, directory
    while True:
        limit = _cgroup_file_int(f"{walk}/pids.max")
        current = _cgroup_file_int(f"{walk}/pids.current")
        if limit is not None and current is not None:
            candidate = PidsCgroup(path=walk, current=current, max=limit,
                                   refusals=_pids_refusals(walk))
            if best is None or (best.max and current / limit > (best.current or 0) / best.max):
                best = candidate
        if not os.path.exists(f"{walk}/pids.max") and walk != directory:
            break  # reached the root of the hierarchy
        parent = os.path.dirname(walk)
        if parent == walk or not os.path.exists(f"{parent}/cgroup.procs"):
            break
        walk = parent
    if best is None:
        current = _cgroup_file_int(f"{mount_root}/pids.current")
        return PidsCgroup(path=mount_root, current=current, max=None)
    return best


def _join_cgroup(mount: procfs.Mount, cgroup_path: str) -> str:
    rel = cgroup_path
    if mount.root != "/" and rel.startswith(mount.root):
        rel = rel[len(mount.root):]
    return os.path.normpath(mount.mount_point + "/" + rel.lstrip("/"))


def _v2_has_pids(mount_point: str) -> bool:
    try:
        return "pids" in read_text(f"{mount_point}/cgroup.controllers").split()
    except OSError:
        return False


def _pids_refusals(directory: str) -> int | None:
    try:
        for line in read_text(f"{directory}/pids.events").splitlines():
            key, _, value = line.partition(" ")
            if key == "max":
                return int(value)
    except (OSError, ValueError):
        pass
    return None


def _int_file(path: str) -> int | None:
    try:
        return int(read_text(path).split()[0])
    except (OSError, ValueError, IndexError):
        return None


# ----------------------------------------------------------------------------
# A whole sample


def collect_snapshot(target: int, *, with_fds: bool = True,
                     with_fd_list: bool = False) -> Snapshot:
    """One sample of `target` and all its descendants.

    Raises ProcessGone when the target itself does not exist. Descendants
    that vanish mid-sample are left out; fields we may not read are listed
    in `Snapshot.unreadable`.
    """
    if not has_procfs():
        from .collect_psutil import collect_snapshot_psutil

        return collect_snapshot_psutil(target)
    # A sample makes tens of thousands of small objects and no reference
    # cycles: the cyclic collector's passes over them are wasted (~4% of a
    # scan of 20,000 descriptors).
    collecting = gc.isenabled()
    gc.disable()
    ctx = _new_context(with_fd_list)
    try:
        return _collect_snapshot(target, ctx, with_fds=with_fds)
    finally:
        if ctx.reading_sockets is not None:
            ctx.reading_sockets.join()  # read ahead for a process that then vanished
        if collecting:
            gc.enable()


def _collect_snapshot(target: int, ctx: _Context, *, with_fds: bool) -> Snapshot:
    tree = read_tree(target)
    table = tree.table
    ctx.statuses = tree.statuses
    parents = {st.ppid for st in tree.stats.values()}
    processes: dict[int, ProcessInfo] = {}
    fds: dict[int, FdTable] = {}
    nofile: dict[int, LimitUsage] = {}
    target_limits = None
    for pid in tree.order:
        try:
            st = tree.stats[pid]
            info = _read_process(pid, ctx, table.get(pid), stat=st,
                                 wants_sigchld=pid == target or pid in parents,
                                 parent=processes.get(st.ppid))
            if pid == target:
                target_limits = _limits(pid, ctx)
            if not info.is_zombie and not info.is_kernel_thread:
                limits = target_limits if pid == target else _limits(pid, ctx)
                table_fds = read_fds(pid, ctx) if with_fds else None
                if table_fds is not None:
                    fds[pid] = table_fds
                    info = info._replace(num_fds=table_fds.open)
                soft, hard = (limits or {}).get("Max open files", (None, None))
                nofile[pid] = LimitUsage(used=info.num_fds, soft=soft, hard=hard)
        except ProcessGone:
            if pid == target:
                raise
            continue
        processes[pid] = info
    target_info = processes[target]
    target_parent = None
    if target_info.is_zombie and target_info.ppid > 0:
        try:
            target_parent = _read_process(target_info.ppid, ctx, table.get(target_info.ppid),
                                          wants_sigchld=True)
        except ProcessGone:
            pass
    return Snapshot(
        target=target, taken_at=time.monotonic(), processes=processes, fds=fds, nofile=nofile,
        nproc=_nproc(target, target_info, table, target_limits, ctx),
        pids_cgroup=pids_cgroup(target, ctx),
        pid_max=_int_file(f"{PROC}/sys/kernel/pid_max"),
        pids_in_use=sum(b.threads for b in table.values()),
        unreadable=tuple(_dedupe(ctx.unreadable)), target_parent=target_parent,
        accept_queue_peers=dict(ctx.queue_peers))


def _dedupe(items: list[Unreadable]) -> list[Unreadable]:
    seen, out = set(), []
    for item in items:
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


# ----------------------------------------------------------------------------
# The whole machine (`scan` with no PID): read here, judged in census.py


class MachineSample(NamedTuple):
    """One pass over every process on the machine."""

    taken_at: float                                   # time.monotonic()
    table: dict[int, TaskBrief]                       # every process (with names)
    zombies: dict[int, ProcessInfo]                   # every zombie
    sessions: dict[int, int]                          # zombie PID -> its session ID
    limits: dict[int, dict[str, tuple[int | None, int | None]]]  # live processes we could read
    fd_counts: dict[int, int]                         # processes whose descriptors were counted
    fds_skipped: int                                  # not counted: too far from the limit to rank
    fds_unreadable: int                               # not counted: permission denied
    pids_cgroups: list[PidsCgroup]                    # every pids cgroup with a pids.max
    file_nr: tuple[int, int, int] | None              # fs.file-nr: allocated, unused, file-max
    pid_max: int | None
    tasks: int                                        # tasks on the machine (each takes a PID)
    unreadable: list[Unreadable]
    namespaces: MachineNamespaces | None = None


def collect_machine(*, fd_top: int = 10, fd_floor: float = 0.8) -> MachineSample:
    """Every process, every zombie, every process's limits, and the
    descriptor counts of the processes that may be nearest their soft
    RLIMIT_NOFILE.

    Counting is skipped where it cannot change the answer: FDSize (the
    descriptor table's size) bounds the open count from above, so once
    `fd_top` processes are counted and no uncounted one could reach the
    `fd_top`-th ratio or `fd_floor` (the warning threshold), the rest are
    left out.
    """
    ctx = _new_context()
    taken_at = time.monotonic()
    table = process_table(details=True)
    zombies: dict[int, ProcessInfo] = {}
    sessions: dict[int, int] = {}
    limits: dict[int, dict[str, tuple[int | None, int | None]]] = {}
    for pid, brief in table.items():
        if brief.state == "Z":
            try:
                st = procfs.parse_stat(_read_small(f"{PROC}/{pid}/stat"))
                zombies[pid] = _read_process(pid, ctx, brief, wants_sigchld=False, stat=st)
                sessions[pid] = st.session
            except (OSError, ProcessGone, ValueError, IndexError):
                continue  # reaped since the table was read
        else:
            try:
                limits[pid] = procfs.parse_limits(_read_small(f"{PROC}/{pid}/limits").decode())
            except OSError:
                continue
    fd_counts, skipped, denied = _count_fds_nearest(table, limits, fd_top, fd_floor)
    try:
        file_nr: tuple[int, int, int] | None = procfs.parse_file_nr(
            read_text(f"{PROC}/sys/fs/file-nr"))
    except (OSError, ValueError):
        file_nr = None
    return MachineSample(
        taken_at=taken_at, table=table, zombies=zombies, sessions=sessions, limits=limits,
        fd_counts=fd_counts, fds_skipped=skipped, fds_unreadable=denied,
        pids_cgroups=pids_cgroups_with_limits(), file_nr=file_nr,
        pid_max=_int_file(f"{PROC}/sys/kernel/pid_max"),
        tasks=sum(b.threads for b in table.values()), unreadable=ctx.unreadable,
        namespaces=machine_namespaces(table))


class MachineNamespaces(NamedTuple):
    """PID namespaces and containers on the machine, as the census reads them."""

    view: NamespaceView
    inits: dict[int, int | None]     # host PID of each namespace's PID 1 -> its namespace
    members: dict[int, int]          # PID -> namespace, for processes in a namespace below ours
    containers: dict[int, containers.Container]  # live PID -> its container, where known


def machine_namespaces(table: dict[int, TaskBrief]) -> MachineNamespaces:
    """Namespaces from the NSpid lines already read (a readlink only for the
    processes below our namespace); containers from every live process's
    cgroup file, each distinct text parsed once."""
    view = namespace_view()
    inits: dict[int, int | None] = {}
    members: dict[int, int] = {}
    for pid, brief in table.items():
        nspid = brief.nspid
        if len(nspid) > 1:
            inode = _pid_ns(pid)
            if inode is not None:
                members[pid] = inode
        if nspid and nspid[-1] == 1 and (len(nspid) > 1 or not view.proc_is_host):
            inits[pid] = members.get(pid) or _pid_ns(pid)
    live = [pid for pid, brief in table.items() if brief.state != "Z"]
    parsed: dict[bytes, containers.Container | None] = {}
    found: dict[int, containers.Container] = {}
    for pid, raw in zip(live, read_proc_files(live, "cgroup")):
        if raw is None:
            continue
        if raw not in parsed:
            parsed[raw] = containers.container_from_cgroup(raw.decode("utf-8", "replace"))
        if parsed[raw] is not None:
            found[pid] = parsed[raw]  # type: ignore[assignment]
    return MachineNamespaces(view, inits, members, found)


def _count_fds_nearest(table: dict[int, TaskBrief],
                       limits: dict[int, dict[str, tuple[int | None, int | None]]],
                       top: int, floor: float) -> tuple[dict[int, int], int, int]:
    candidates = []
    for pid, lim in limits.items():
        soft = lim.get("Max open files", (None, None))[0]
        if not soft:
            continue  # unlimited: no ratio
        size = table[pid].fd_size
        candidates.append((size / soft if size is not None else float("inf"), pid))
    candidates.sort(reverse=True)
    counts: dict[int, int] = {}
    best: list[float] = []   # min-heap of the `top` highest ratios counted so far
    denied = 0
    for i, (bound, pid) in enumerate(candidates):
        if len(best) >= top and bound < floor and bound < best[0]:
            return counts, len(candidates) - i, denied
        try:
            count = len(os.listdir(f"{PROC}/{pid}/fd"))
        except PermissionError:
            denied += 1
            continue
        except OSError:
            continue  # gone
        counts[pid] = count
        ratio = count / limits[pid]["Max open files"][0]  # type: ignore[operator]
        if len(best) < top:
            heapq.heappush(best, ratio)
        elif ratio > best[0]:
            heapq.heapreplace(best, ratio)
    return counts, 0, denied


def pids_cgroups_with_limits() -> list[PidsCgroup]:
    """Every cgroup of the pids hierarchy (v1, or v2 with the pids controller)
    that has a numeric pids.max, with its pids.current."""
    try:
        mounts = procfs.parse_mountinfo(read_text(f"{PROC}/self/mountinfo"))
    except OSError:
        return []
    root = None
    for m in mounts:
        if m.fstype == "cgroup" and "pids" in m.super_options.split(","):
            root = m.mount_point
            break
    if root is None:
        for m in mounts:
            if m.fstype == "cgroup2" and _v2_has_pids(m.mount_point):
                root = m.mount_point
                break
    found: list[PidsCgroup] = []
    if root is None:
        return found
    for dirpath, _dirs, files in os.walk(root):
        if "pids.max" not in files:
            continue
        limit = _cgroup_file_int(f"{dirpath}/pids.max")
        current = _cgroup_file_int(f"{dirpath}/pids.current")
        if limit is not None and current is not None:
            found.append(PidsCgroup(path=dirpath, current=current, max=limit,
                                    refusals=_pids_refusals(dirpath)))
    return found


def cgroup_member(path: str) -> int | None:
    """A process in the cgroup at `path` or below it (the lowest PID found first)."""
    for dirpath, _dirs, _files in os.walk(path):
        try:
            pids = [int(x) for x in read_text(f"{dirpath}/cgroup.procs").split()]
        except (OSError, ValueError):
            continue
        if pids:
            return min(pids)
    return None


def resample_zombies(zombies: dict[int, ProcessInfo]) -> tuple[float, dict[int, ProcessInfo]]:
    """Read the stat of each of `zombies` again: those still zombies now."""
    ctx = _new_context()
    taken_at = time.monotonic()
    now: dict[int, ProcessInfo] = {}
    for pid, before in zombies.items():
        brief = TaskBrief(ppid=before.ppid, uid=before.uid, threads=1, state="Z")
        try:
            info = _read_process(pid, ctx, brief, wants_sigchld=False)
        except ProcessGone:
            continue
        if info.is_zombie:
            now[pid] = info
    return taken_at, now


def read_processes(pids: list[int], table: dict[int, TaskBrief]
                   ) -> tuple[dict[int, ProcessInfo], dict[int, int]]:
    """Each of `pids` in full (with its SIGCHLD disposition) and its session
    ID; processes that are gone are left out."""
    ctx = _new_context()
    infos: dict[int, ProcessInfo] = {}
    sessions: dict[int, int] = {}
    for pid in pids:
        try:
            st = procfs.parse_stat(_read_small(f"{PROC}/{pid}/stat"))
            infos[pid] = _read_process(pid, ctx, table.get(pid), wants_sigchld=True, stat=st)
            sessions[pid] = st.session
        except (OSError, ProcessGone, ValueError, IndexError):
            continue
    return infos, sessions


def collect_census_target(info: ProcessInfo, zombie_children: dict[int, ProcessInfo],
                          sample: MachineSample) -> Snapshot:
    """A Snapshot of one process the census has findings about: the process,
    its zombie children and its limits. Its descriptors are counted, not
    classified (a readlink per descriptor plus the socket table: 0.3-0.7 s
    for one process with 20,000), and its live descendants are not walked:
    `scan PID` does both."""
    ctx = _new_context()
    pid = info.pid
    processes: dict[int, ProcessInfo] = {**zombie_children}
    nofile: dict[int, LimitUsage] = {}
    limits = sample.limits.get(pid)
    if not info.is_zombie:
        if pid in sample.fd_counts:
            info = info._replace(num_fds=sample.fd_counts[pid])
        soft, hard = (limits or {}).get("Max open files", (None, None))
        nofile[pid] = LimitUsage(used=info.num_fds, soft=soft, hard=hard)
    processes[pid] = info
    return Snapshot(
        target=pid, taken_at=time.monotonic(), processes=processes, nofile=nofile,
        nproc=_nproc(pid, info, sample.table, limits, ctx), pids_cgroup=pids_cgroup(pid, ctx),
        pid_max=sample.pid_max, pids_in_use=sample.tasks,
        unreadable=tuple(_dedupe(ctx.unreadable)))


def has_cap_exemption(pid: int) -> bool:
    """CAP_SYS_ADMIN or CAP_SYS_RESOURCE: RLIMIT_NPROC is not enforced (kernel/fork.c)."""
    try:
        cap_eff = procfs.parse_status(read_text(f"{PROC}/{pid}/status")).cap_eff or 0
    except OSError:
        return False
    return bool(cap_eff & ((1 << CAP_SYS_ADMIN) | (1 << CAP_SYS_RESOURCE)))


# Light reads of one process, for the pytest plugin's before/after check.
# Each runs around every test: no process table, no socket tables.


def fd_links(pid: int) -> dict[int, str]:
    """{fd: link text} of every descriptor of `pid`: one listdir and one
    readlink per fd (about 5 us each). Raises ProcessGone."""
    fd_dir = f"{PROC}/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessGone(pid) from None
    links: dict[int, str] = {}
    for name in names:
        try:
            links[int(name)] = os.readlink(f"{fd_dir}/{name}")
        except OSError:
            continue  # closed since listdir (the listdir's own fd is one)
    return links


_WALL = 0x40000000  # __WALL (linux/wait.h): clone children too


def has_children() -> bool:
    """Whether this process has any child, live or zombie, in one syscall:
    waitid(P_ALL, WNOHANG | WNOWAIT) fails with ECHILD only when there is
    none, and WNOWAIT reaps nothing."""
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT | _WALL)
    except ChildProcessError:
        return False
    except OSError:
        return True  # cannot tell (EINVAL on an odd kernel): assume some, look
    return True


def last_pid() -> int | None:
    """The PID most recently allocated in our PID namespace (/proc/loadavg):
    every process created after a reading of it has a PID above it, until
    the PID counter wraps at pid_max."""
    try:
        return procfs.parse_loadavg_last_pid(read_text(f"{PROC}/loadavg"))
    except (OSError, ValueError, IndexError):
        return None


def task_children(pid: int) -> list[int] | None:
    """Children of every thread of `pid` from /proc/<pid>/task/*/children;
    None when the kernel lacks it (CONFIG_PROC_CHILDREN is off)."""
    try:
        tids = os.listdir(f"{PROC}/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessGone(pid) from None
    found: list[int] = []
    for tid in tids:
        try:
            found.extend(procfs.parse_children(read_text(f"{PROC}/{pid}/task/{tid}/children")))
        except FileNotFoundError:
            if not os.path.exists(f"{PROC}/{pid}/task/{tid}"):
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
        candidates = (int(e) for e in os.listdir(PROC) if e.isdigit())
    found: dict[int, procfs.StatLine] = {}
    for child in candidates:
        try:
            st = procfs.parse_stat(read_bytes(f"{PROC}/{child}/stat"))
        except (OSError, ValueError):
            continue  # no such PID, or gone since
        if st.ppid == pid:
            found[child] = st
    return found


def describe_process(pid: int) -> ProcessInfo | None:
    """One process with its command line and age (zombies: exit status);
    None if it is gone."""
    try:
        return _read_process(pid, _new_context(), None, wants_sigchld=False)
    except ProcessGone:
        return None


def describe_fds(pid: int, fds: Iterable[int]) -> list[FdDetail]:
    """Describe some descriptors of `pid`: kind, open mode and offset
    (fdinfo), socket addresses and state (the netns socket tables, read
    once), the other ends of pipes. Fds closed meanwhile are left out."""
    wanted = sorted(set(fds))
    links = fd_links(pid)
    ctx = _new_context()
    inet: dict[int, SocketFd] = {}
    unix: dict[int, procfs.UnixSocketRow] | None = None
    if any(links.get(fd, "").startswith("socket:") for fd in wanted):
        table = read_fds(pid, ctx)
        inet = {s.fd: s for s in table.sockets} if table else {}
        try:
            text = read_text(f"{PROC}/{pid}/net/unix")
            unix = {row.inode: row for row in procfs.parse_unix_table(text)}
        except OSError:
            unix = {}
    by_pipe: dict[int, list[int]] = {}
    for fd, link in links.items():
        kind, inode = procfs.fd_link_kind(link)
        if kind == "pipe" and inode is not None:
            by_pipe.setdefault(inode, []).append(fd)
    details = []
    for fd in wanted:
        link = links.get(fd)
        if link is None:
            continue
        kind, inode = procfs.fd_link_kind(link)
        mode = offset = None
        try:
            info = procfs.parse_fdinfo(read_text(f"{PROC}/{pid}/fdinfo/{fd}"))
            mode = procfs.describe_open_flags(info.flags) if info.flags is not None else None
            offset = info.pos
        except OSError:
            pass
        extra: dict[str, object] = {}
        if kind == "path":
            kind = _path_kind(f"{PROC}/{pid}/fd/{fd}")
        elif kind == "pipe" and inode is not None:
            extra["peer_fds"] = tuple(f for f in sorted(by_pipe.get(inode, ())) if f != fd)
        elif kind == "socket" and inode is not None:
            if fd in inet:
                extra["inet"] = inet[fd]
                kind = inet[fd].proto.rstrip("6")
            elif unix and inode in unix:
                extra["unix"] = unix[inode]
                kind = "unix"
            elif pid == os.getpid():
                extra["socket_family"] = _own_socket_family(fd)
        details.append(FdDetail(fd=fd, link=link, kind=kind, mode=mode, offset=offset,
                                **extra))  # type: ignore[arg-type]
    return details


def _own_socket_family(fd: int) -> str | None:
    """Family and type of one of our own sockets that no /proc table lists
    (an unbound TCP socket, netlink, packet): asked of the socket itself."""
    import socket

    try:
        sock = socket.socket(fileno=fd)  # detects family and type (SO_DOMAIN, SO_TYPE)
    except OSError:
        return None
    try:
        family = getattr(sock.family, "name", str(sock.family))
        kind = getattr(sock.type, "name", str(sock.type))
        return f"{family} {kind}"
    finally:
        sock.detach()  # the descriptor stays open: it belongs to the test


# watch: a light sample per interval


class WatchPlan(NamedTuple):
    """What one full sample at the start of `watch` tells the light ones."""

    target: int
    start_ticks: int                # with target: the same process, not a reused PID
    uid: int | None                 # real UID, for the task count
    listen_ports: frozenset[int]    # TCP ports the tree listened on at the start
    listen_families: tuple[int, ...] = (socket.AF_INET, socket.AF_INET6)
    same_netns: bool = False               # inet_diag (our netns) sees the target's sockets
    pids_cgroup_dir: str | None = None


def plan_watch(snap: Snapshot) -> WatchPlan:
    me = snap.processes[snap.target]
    ports = frozenset(s.local[1] for fds in snap.fds.values() for s in fds.listeners
                      if s.proto.startswith("tcp"))
    try:
        same = os.readlink(f"{PROC}/self/ns/net") == os.readlink(f"{PROC}/{snap.target}/ns/net")
    except OSError:
        same = False
    families = tuple(sorted({socket.AF_INET6 if s.proto == "tcp6" else socket.AF_INET
                             for fds in snap.fds.values() for s in fds.listeners}))
    cg = snap.pids_cgroup
    return WatchPlan(target=snap.target, start_ticks=me.start_ticks, uid=me.uid,
                     listen_ports=ports, listen_families=families, same_netns=same,
                     pids_cgroup_dir=cg.path if cg and cg.current is not None else None)


def read_brief(pid: int) -> TaskBrief | None:
    """The TaskBrief of one process; None if it is gone or `pid` names a
    thread (/proc/TID exists, hidden, for every thread)."""
    try:
        raw = read_bytes(f"{PROC}/{pid}/status")
    except OSError:
        return None
    tgid = _brief_field(raw, b"\nTgid:")
    if tgid is None or int(tgid) != pid:
        return None
    return _brief_of(raw)


class TreeTracker:
    """The target's tree and its user's task count, kept up to date at a
    cost that follows the tree and the fork rate, not the machine.

    A full process_table() pass costs ~30 us per process on the machine
    (0.4 s with 12,000 processes). Between full passes the tree is
    refreshed from its members' status files plus the PIDs allocated since
    the last sample (the last PID in /proc/loadavg): a new process is in
    the tree when its parent is. Full passes are spaced so that they take
    at most FULL_SCAN_SHARE of the time; the task count of the user, a
    machine-wide figure, is refreshed by them and carried in between.
    """

    FULL_SCAN_SHARE = 0.02
    MAX_PROBE = 4096          # more new PIDs than this: a full pass is cheaper

    def __init__(self, target: int, uid: int | None) -> None:
        self.target, self.uid = target, uid
        self.members: dict[int, TaskBrief] = {}
        self.tasks: int | None = None
        self.pid_max = _int_file(f"{PROC}/sys/kernel/pid_max") or 4194304
        self.next_full = 0.0
        self.last = None
        self.full()

    def full(self) -> None:
        started = time.monotonic()
        self.last = last_pid()
        table = process_table()
        self.members = {p: table[p] for p in descendants(table, self.target) if p in table}
        if self.uid is not None:
            self.tasks = sum(b.threads for b in table.values() if b.uid == self.uid)
        cost = time.monotonic() - started
        self.next_full = time.monotonic() + cost / self.FULL_SCAN_SHARE

    def refresh(self) -> None:
        if time.monotonic() >= self.next_full:
            self.full()
            return
        now_last = last_pid()
        if now_last is None or self.last is None:
            self.full()
            return
        if now_last >= self.last:
            new = range(self.last + 1, now_last + 1)
            wrapped: range = range(0)
        else:  # the PID counter wrapped around pid_max
            new, wrapped = range(self.last + 1, self.pid_max), range(1, now_last + 1)
        if len(new) + len(wrapped) > self.MAX_PROBE:
            self.full()
            return
        self.last = now_last
        members: dict[int, TaskBrief] = {}
        for pid in self.members:           # parents before children (descendants order)
            brief = read_brief(pid)
            if brief is not None and (pid == self.target or brief.ppid in members):
                members[pid] = brief
        for pid in (*new, *wrapped):       # allocation order: parents first
            if pid in members:
                continue
            brief = read_brief(pid)
            if brief is not None and brief.ppid in members:
                members[pid] = brief
        self.members = members

    @property
    def zombies(self) -> int:
        return sum(1 for pid, b in self.members.items() if b.state == "Z" and pid != self.target)


def watch_sample(plan: WatchPlan, tracker: TreeTracker, t0: float) -> WatchSample:
    """One light sample for `watch`. Its cost does not grow with the
    target's descriptors: the fd count is one stat() (count_fds),
    CLOSE_WAIT an inet_diag dump filtered by state in the kernel, the tree
    a TreeTracker refresh. No descriptor link is read.

    CLOSE_WAIT counts the sockets in that state on a port the tree
    listened on at the start (its accepted connections); None where the
    tables cannot be read. Raises ProcessGone when the target has exited
    (gone, a zombie, or its PID reused).
    """
    pid = plan.target
    try:
        st = procfs.parse_stat(read_bytes(f"{PROC}/{pid}/stat"))
    except OSError:
        raise ProcessGone(pid) from None
    if st.state in ("Z", "X") or st.start_ticks != plan.start_ticks:
        raise ProcessGone(pid)
    t_s = time.monotonic() - t0
    fds = count_fds(pid)
    tracker.refresh()
    current = (_cgroup_file_int(f"{plan.pids_cgroup_dir}/pids.current")
               if plan.pids_cgroup_dir else None)
    return WatchSample(t_s=t_s, zombies=tracker.zombies, fds=fds,
                       close_wait=close_wait_on_ports(pid, plan.listen_ports, plan.same_netns,
                                                      plan.listen_families),
                       tasks=tracker.tasks, pids_cgroup=current)


def close_wait_on_ports(pid: int, ports: frozenset[int], same_netns: bool,
                        families: tuple[int, ...] = (socket.AF_INET, socket.AF_INET6)
                        ) -> int | None:
    """TCP sockets in CLOSE_WAIT whose local port is one of `ports`: from
    inet_diag when `pid` shares our network namespace (the kernel filters
    by state, so the cost follows the CLOSE_WAIT count), else from
    /proc/PID/net/tcp{,6}. None when neither can be read."""
    if not ports:
        return 0
    if same_netns:
        try:
            # Each dump walks the whole established hash in the kernel
            # (~7 us per 10 sockets): only the families the tree listens on.
            return sum(1 for family in families
                       for row in inet_diag_dump(family, 1 << netlink.TCP_CLOSE_WAIT)
                       if row.local_port in ports)
        except OSError:
            pass
    total, read_any = 0, False
    for proto in ("tcp", "tcp6"):
        if (socket.AF_INET6 if proto == "tcp6" else socket.AF_INET) not in families:
            continue
        try:
            text = read_text(f"{PROC}/{pid}/net/{proto}")
        except OSError:
            continue
        read_any = True
        total += sum(1 for row in procfs.parse_inet_table(text, proto)
                     if row.state == "CLOSE_WAIT" and row.local[1] in ports)
    return total if read_any else None
