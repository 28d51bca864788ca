"""One process: its stat, command line, SIGCHLD disposition, limits and
RLIMIT_NPROC usage, read within one sample's context."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from typing import (
    TYPE_CHECKING,
)

from ..parse import procfs

if TYPE_CHECKING:
    import threading
from typing import TYPE_CHECKING

from ..model import Container, NprocUsage, ProcessInfo, Unreadable
from . import proc
from .namespaces import NamespaceView, namespace_fields, zombie_namespace_fields
from .proc import ProcessGone, check_gone, read_bytes, read_small, read_text
from .tasks import exit_status_hidden, read_stat

if TYPE_CHECKING:
    from .sockets import _SocketRows
    from .tasks import TaskBrief

CAP_SYS_ADMIN = 21
CAP_SYS_RESOURCE = 24


# ----------------------------------------------------------------------------
# One process


@dataclass
class SampleContext:
    """What one sample shares across processes: clock, tables, errors."""

    uptime_s: float
    clock_ticks: int
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
    container_of_cgroup: dict[bytes, Container | None] = field(default_factory=dict)

    def note(self, pid: int, what: str, err: BaseException | str) -> None:
        reason = err if isinstance(err, str) else _reason(err)
        self.unreadable.append(Unreadable(pid, what, reason))


def _reason(err: BaseException) -> str:
    if isinstance(err, PermissionError):
        return "permission denied"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror.lower()
    return str(err) or type(err).__name__


def new_context(with_fd_list: bool = False) -> SampleContext:
    try:
        uptime_s = float(read_text(f"{proc.ROOT}/uptime").split()[0])
    except OSError:
        uptime_s = 0.0
    return SampleContext(uptime_s=uptime_s, clock_ticks=os.sysconf("SC_CLK_TCK"),
                    my_uid=os.geteuid(),
                    with_fd_list=with_fd_list)


def read_process(pid: int, ctx: SampleContext, brief: TaskBrief | None,
                 *, wants_sigchld: bool, stat: procfs.StatLine | None = None,
                 parent: ProcessInfo | None = None) -> ProcessInfo:
    """Read one process (from `stat` when the caller has read its stat
    already). A zombie takes its namespace and container from `parent`.
    Raises ProcessGone if it has vanished."""
    base = f"{proc.ROOT}/{pid}"
    st = stat
    if st is None:
        try:
            st = procfs.parse_stat(read_small(f"{base}/stat"))
        except OSError as e:
            check_gone(pid, e)
            raise ProcessGone(pid) from e   # unreadable stat: nothing to report on
    uid = brief.uid if brief else None
    is_zombie = st.state == "Z"
    exit_status = None
    if is_zombie:
        hidden = st.exit_code == 0 and exit_status_hidden(pid)
        exit_status = procfs.decode_wait_status(st.exit_code, hidden)  # lru_cache: positional keys are cheaper
    cmdline: tuple[str, ...] | None = None
    num_fds: int | None = None
    sigchld: str | None = None
    pending = False
    if not is_zombie:
        try:
            raw = read_bytes(f"{base}/cmdline")
            cmdline = tuple(a.decode("utf-8", "replace") for a in raw.rstrip(b"\0").split(b"\0")) if raw else ()
        except OSError as e:
            check_gone(pid, e)
            ctx.note(pid, "cmdline", e)
        if wants_sigchld:
            sigchld, pending = _sigchld(pid, ctx, st.threads)
    age = None
    if ctx.uptime_s:
        age = max(0.0, ctx.uptime_s - st.start_ticks / ctx.clock_ticks)
    ns = zombie_namespace_fields(pid, parent) if is_zombie else namespace_fields(pid, ctx)
    # Positional, in field order: half the cost of keywords, once per process.
    return ProcessInfo(pid, st.ppid, st.comm, st.state, st.start_ticks, age, st.threads,
                       uid, cmdline, num_fds, exit_status, sigchld, pending,
                       bool(st.flags & procfs.PF_KTHREAD), st.child_faults, *ns)


def _sigchld(pid: int, ctx: SampleContext, threads: int,
             bit: int = procfs.SIGCHLD_BIT) -> tuple[str | None, bool]:
    """SIGCHLD disposition (or that of the signal of mask bit `bit`) from
    the status masks, and whether it is pending; SigBlk is per thread, so
    every task is checked when there is more than one."""
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
            for tid in os.listdir(f"{proc.ROOT}/{pid}/task"):
                text = read_text(f"{proc.ROOT}/{pid}/task/{tid}/status")
                if (procfs.parse_status(text).sig_blk or 0) & bit:
                    blocked = True
                    break
        except OSError:
            pass  # a thread exited mid-walk: the process-level mask still counts
    pending = bool((status.shd_pnd or 0) & bit)
    return procfs.sigchld_disposition(status, any_thread_blocks=blocked, bit=bit), pending


def _status_text(pid: int, ctx: SampleContext) -> str:
    """/proc/<pid>/status, as read earlier in this sample if it was."""
    raw = ctx.statuses.get(pid)
    return (raw if raw is not None else read_bytes(f"{proc.ROOT}/{pid}/status")).decode("utf-8", "replace")


def disposition_of(pid: int, signum: int = signal.SIGCHLD) -> str | None:
    """The disposition of signal `signum` (SIGCHLD by default) in `pid`
    ("blocked" in any thread, "ignored", "caught", "default"); None if it
    cannot be read."""
    st = read_stat(pid)
    if st is None:
        return None
    return _sigchld(pid, new_context(), st.threads, 1 << (signum - 1))[0]


# ----------------------------------------------------------------------------
# Limits


def read_limits(pid: int, ctx: SampleContext) -> dict[str, tuple[int | None, int | None]] | None:
    # /proc/<pid>/limits is 0444; psutil's rlimit() (prlimit) fails on other
    # users' processes without CAP_SYS_RESOURCE.
    try:
        return procfs.parse_limits(read_text(f"{proc.ROOT}/{pid}/limits"))
    except OSError as e:
        ctx.note(pid, "limits", e)
        return None


def nproc_usage(pid: int, target: ProcessInfo, table: dict[int, TaskBrief],
           limits: dict[str, tuple[int | None, int | None]] | None,
           ctx: SampleContext) -> NprocUsage | None:
    """Tasks (threads and zombies count) of the target's real UID against
    its soft RLIMIT_NPROC."""
    uid = target.uid
    if uid is None:
        return None
    used = sum(b.threads for b in table.values() if b.uid == uid)
    soft, hard = (limits or {}).get("Max processes", (None, None))
    enforced = uid != 0 and not has_cap_exemption(pid, ctx)
    return NprocUsage(used=used, soft=soft, hard=hard, uid=uid, enforced=enforced)


def has_cap_exemption(pid: int, ctx: SampleContext | None = None) -> bool:
    """CAP_SYS_ADMIN or CAP_SYS_RESOURCE: RLIMIT_NPROC is not enforced
    (kernel/fork.c). False when the status cannot be read. With `ctx`, a
    status read earlier in the sample serves."""
    try:
        text = _status_text(pid, ctx) if ctx else read_text(f"{proc.ROOT}/{pid}/status")
        cap_eff = procfs.parse_status(text).cap_eff or 0
    except OSError:
        return False
    return bool(cap_eff & ((1 << CAP_SYS_ADMIN) | (1 << CAP_SYS_RESOURCE)))


def describe_process(pid: int) -> ProcessInfo | None:
    """One process with its command line and age (zombies: exit status);
    None if it is gone."""
    try:
        return read_process(pid, new_context(), None, wants_sigchld=False)
    except ProcessGone:
        return None
