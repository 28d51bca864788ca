"""Plain, frozen data: what a sample saw, and what the diagnosis found.

collect.py fills these; diagnose.py reads them; renderers turn them into
text. None of them does I/O.

Records are NamedTuples: defining one costs a sixth of a frozen dataclass
(import time is start-up time for a command-line tool: ~0.1 ms against
~0.6 ms each), and building one a quarter (a scan builds one per process
and per socket, tens of thousands). The few that need a cached property,
a subclass or a default factory are frozen dataclasses. Either way they
are immutable: change a NamedTuple with _replace(), a dataclass with
dataclasses.replace().
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from enum import Enum
from types import MappingProxyType
from typing import Mapping, NamedTuple

from .containers import Container
from .procfs import ExitStatus, UnixSocketRow


class Severity(str, Enum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def rank(self) -> int:
        return {"info": 0, "warning": 1, "error": 2}[self.value]


class ProcessInfo(NamedTuple):
    """One process of the scanned tree, as one sample saw it."""

    pid: int
    ppid: int
    name: str
    state: str                         # stat letter: R S D Z T ...
    start_ticks: int                   # with pid, identifies the process across samples
    age_s: float | None
    threads: int
    uid: int | None                    # real UID
    cmdline: tuple[str, ...] | None    # None: unreadable or a zombie
    num_fds: int | None                # None: unreadable (or not a live process)
    exit_status: ExitStatus | None = None  # zombies only
    sigchld: str | None = None         # "default" | "caught" | "ignored" | "blocked"; None: unread
    sigchld_pending: bool = False      # SIGCHLD pending process-wide (ShdPnd)
    is_kernel_thread: bool = False     # PF_KTHREAD: no descriptors, no ulimit -n
    has_reaped_children: bool = False  # it forked and waited for a child (stat cminflt > 0)
    # PID namespace and container. A zombie has its parent's namespace and
    # container, and ns_pid only where the parent is in a namespace below ours.
    pid_ns: int | None = None          # inode of /proc/PID/ns/pid; None: not read
    ns_pid: int | None = None          # its PID in its own namespace (last NSpid field)
    is_ns_init: bool = False           # PID 1 of a PID namespace other than the host's
    container: Container | None = None  # named by /proc/PID/cgroup; None: none known
    sigterm: str | None = None         # namespace inits only: "caught" | "blocked" |
                                       # "waited" | "ignored" | "default"; None: not read

    @property
    def is_zombie(self) -> bool:
        return self.state == "Z"

    @property
    def identity(self) -> tuple[int, int]:
        """(pid, start time): a reused PID is a different process."""
        return self.pid, self.start_ticks


class SocketFd(NamedTuple):
    """An open socket descriptor found in a socket table."""

    fd: int
    inode: int
    proto: str                 # "tcp", "tcp6", "udp", "udp6"
    local: tuple[str, int]
    remote: tuple[str, int]
    state: str                 # "LISTEN", "CLOSE_WAIT", ...
    rx_queue: int              # LISTEN: accept-queue length
    tx_queue: int
    backlog: int | None = None  # LISTEN: configured backlog (inet_diag); None: not read


@dataclass(frozen=True)
class FdTable:
    """The descriptors of one live process."""

    open: int
    by_kind: Mapping[str, int]                   # {"tcp": 9, "file": 2, "pipe": 1, ...}
    top_paths: tuple[tuple[str, int], ...] = ()  # most-opened regular files: (path, count)
    sockets: tuple[SocketFd, ...] = ()           # TCP/UDP sockets with state and addresses
    unlisted_socket_fds: tuple[tuple[int, int], ...] = ()  # (fd, inode) in no socket table
    # The unlisted sockets that are (or may be) TCP: sockfs names the
    # protocol (xattr system.sockprotoname); netlink, packet... are left out.
    # A TCP socket in no table is CLOSE: shut down, but its fd still open.
    closed_tcp: tuple[tuple[int, int], ...] = ()           # (fd, inode)
    listed: tuple[tuple[int, str], ...] = ()     # every (fd, link text), when asked for
    unreadable_links: int = 0                    # fds whose link we could not read

    @property
    def close_wait(self) -> int:
        return sum(1 for s in self.sockets if s.state == "CLOSE_WAIT")

    @cached_property
    def listeners(self) -> tuple[SocketFd, ...]:
        # Cached: diagnose and the renderers ask each table several times,
        # and the target's may hold thousands of sockets.
        return tuple(s for s in self.sockets if s.state == "LISTEN")


class FdDetail(NamedTuple):
    """One descriptor described for a person: what it is, how it was opened."""

    fd: int
    link: str                           # the /proc/<pid>/fd/<fd> link text
    kind: str                           # "file", "directory", "device", "fifo", "pipe",
                                        # "tcp", "udp", "unix", "socket", "eventfd", ...
    mode: str | None = None             # "r", "w, append, cloexec"; None: fdinfo unreadable
    offset: int | None = None           # file position (fdinfo "pos")
    inet: SocketFd | None = None        # TCP/UDP: addresses and state
    unix: UnixSocketRow | None = None   # unix socket: type, state, path
    socket_family: str | None = None    # a socket in no table: "AF_NETLINK", ... when known
    peer_fds: tuple[int, ...] = ()      # pipe: other fds of the process on the same pipe


@dataclass(frozen=True)
class LimitUsage:
    """Usage against a soft/hard resource limit; None means unlimited or unknown."""

    used: int | None
    soft: int | None
    hard: int | None

    @property
    def ratio(self) -> float | None:
        if self.used is None or not self.soft:
            return None
        return self.used / self.soft


@dataclass(frozen=True)
class NprocUsage(LimitUsage):
    """Tasks of a real UID against RLIMIT_NPROC. Not enforced for UID 0 (or
    with CAP_SYS_RESOURCE / CAP_SYS_ADMIN): kernel/fork.c."""

    uid: int | None = None
    enforced: bool = True


class PidsCgroup(NamedTuple):
    """The pids cgroup nearest its limit among the target's cgroup and its ancestors."""

    path: str | None
    current: int | None
    max: int | None             # None: no limit
    refusals: int | None = None  # pids.events "max N": forks refused


class Unreadable(NamedTuple):
    """A field a sample could not read, and why."""

    pid: int
    field: str
    reason: str


@dataclass(frozen=True)
class Snapshot:
    """One sample of a target and its descendants."""

    target: int
    taken_at: float                       # time.monotonic() seconds
    processes: Mapping[int, ProcessInfo]  # the target and all its descendants
    fds: Mapping[int, FdTable] = field(default_factory=dict)        # live processes
    nofile: Mapping[int, LimitUsage] = field(default_factory=dict)  # live processes
    nproc: NprocUsage | None = None
    pids_cgroup: PidsCgroup | None = None
    pid_max: int | None = None
    pids_in_use: int | None = None        # tasks on the machine (each takes a PID)
    unreadable: tuple[Unreadable, ...] = ()
    target_parent: ProcessInfo | None = None  # filled when the target is a zombie
    # Peers (host, port) of connections waiting in the accept queue of each
    # LISTEN socket (by inode) of the tree that had a non-empty queue:
    # established but not yet accept()ed, so inode 0 in /proc/net/tcp.
    accept_queue_peers: Mapping[int, frozenset[tuple[str, int]]] = field(default_factory=dict)

    @property
    def zombies(self) -> list[ProcessInfo]:
        return [p for p in self.processes.values() if p.is_zombie]

    @cached_property
    def parent_pids(self) -> frozenset[int]:
        """PIDs of the tree's processes that have children in the tree."""
        return frozenset(p.ppid for p in self.processes.values() if p.pid != self.target)

    def children_of(self, pid: int) -> list[ProcessInfo]:
        return [p for p in self.processes.values() if p.ppid == pid and p.pid != self.target]


class FdCounts(NamedTuple):
    """A light sample: open descriptors per live process, no links read."""

    taken_at: float                       # time.monotonic() seconds
    counts: Mapping[int, int]             # pid -> open fds


class WatchSample(NamedTuple):
    """One `watch` sample. None: not readable (or no such limit)."""

    t_s: float                 # seconds since the first sample
    zombies: int               # zombies in the target's tree
    fds: int | None            # open descriptors of the target
    close_wait: int | None     # CLOSE_WAIT sockets on the tree's listening ports
    tasks: int | None          # tasks of the target's real UID
    pids_cgroup: int | None    # pids.current of the target's pids cgroup


class Finding(NamedTuple):
    code: str                    # "RD101"
    slug: str                    # "zombie-leak"
    severity: Severity
    pid: int
    message: str                 # one line, names the fix
    evidence: Mapping[str, object] = MappingProxyType({})


class TargetReport(NamedTuple):
    """What a scan says about one target: its latest sample and the findings."""

    pid: int
    snapshot: Snapshot
    findings: tuple[Finding, ...]
    samples: int = 1
    grace_s: float = 0.0
    gone: bool = False           # the target exited during the scan
    elapsed_s: float = 0.0       # between the first and the last sample (0 with one)
    pid1_wait: bool = False      # the wait was stretched for zombies of PID 1 (PID1_GRACE_S)

    @property
    def worst(self) -> Severity | None:
        return max((f.severity for f in self.findings), key=lambda s: s.rank, default=None)


class ZombieParent(NamedTuple):
    """A process that holds zombie children, as the census saw it."""

    pid: int
    name: str | None
    uid: int | None
    sigchld: str | None
    zombies: int                 # zombie children in the latest sample
    persistent: int              # of those, how many persisted (all of them with one sample)
    is_reaper: bool              # PID 1 or a (presumed) subreaper: orphans wait on it
    verdict: str | None          # "RD101" | "RD102" | "RD103" | None (nothing persisted)


class NofileUsage(NamedTuple):
    """One process's open descriptors against its RLIMIT_NOFILE."""

    pid: int
    name: str | None
    uid: int | None
    used: int
    soft: int
    hard: int | None

    @property
    def ratio(self) -> float:
        return self.used / self.soft


class UidTasks(NamedTuple):
    """Tasks of a real UID (threads and zombies count) against RLIMIT_NPROC.

    RLIMIT_NPROC is per process: `soft` is the most common soft limit among
    the UID's processes; `soft_min` (held by `soft_min_pid`) is the lowest,
    the first to make fork() fail."""

    uid: int
    tasks: int
    processes: int
    soft: int | None             # most common soft limit; None: unlimited
    hard: int | None
    soft_min: int | None
    soft_min_pid: int | None
    enforced: bool               # never for UID 0

    @property
    def ratio(self) -> float | None:
        return self.tasks / self.soft if self.soft else None


class ListenerQueue(NamedTuple):
    """One listening TCP port of a process and its accept queue."""

    port: int
    queue: int                   # connections waiting for accept()
    backlog: int | None          # the configured backlog; None: not read


class SocketHolder(NamedTuple):
    """A process the census saw holding accepted sockets in CLOSE_WAIT on a
    listening port of its network namespace, or a listener with queued
    connections."""

    pid: int
    name: str | None
    uid: int | None
    close_wait: int                         # accepted sockets in CLOSE_WAIT
    listeners: tuple[ListenerQueue, ...]    # its listeners with a non-empty queue
    verdicts: tuple[str, ...] = ()          # "RD201", "RD401" when they persisted


class ContainerRow(NamedTuple):
    """A PID namespace below the host's, or a known container, as the census saw it."""

    container: Container | None      # None: a PID namespace no known runtime made
    pid_ns: int | None               # its PID namespace's inode; None: the host's or unreadable
    init_pid: int | None             # host PID of its PID 1; None: no namespace of its own
    init_name: str | None
    init_cmdline: tuple[str, ...] | None
    init_is_known: bool              # tini, dumb-init, catatonit, systemd... (by name)
    init_sigterm: str | None         # how its PID 1 takes SIGTERM (ProcessInfo.sigterm)
    processes: int                   # live processes in it, PID 1 included
    zombies: int
    verdict: tuple[str, ...]         # codes of the findings about its PID 1 (RD104, RD105)


class MachineCensus(NamedTuple):
    """What `scan` with no PID saw on the whole machine."""

    processes: int
    tasks: int                                  # each takes a PID
    pid_max: int | None
    files_open: int | None                      # fs.file-nr: allocated - unused
    file_max: int | None
    zombie_parents: tuple[ZombieParent, ...]    # most zombies first
    nofile_top: tuple[NofileUsage, ...]         # nearest their soft limit first
    nofile_counted: int                         # processes whose descriptors were counted
    nofile_unreadable: int                      # could not be counted (permission)
    uids: tuple[UidTasks, ...]                  # nearest their limit first
    pids_cgroups: tuple[PidsCgroup, ...]        # nearest pids.max first
    samples: int
    grace_s: float
    elapsed_s: float                            # between the two samples (0 with one)
    socket_holders: tuple[SocketHolder, ...] = ()  # CLOSE_WAIT / accept queues, worst first
    netns_read: int = 0                         # network namespaces whose sockets were read
    containers: tuple[ContainerRow, ...] = ()   # worst verdict first
    # False when this /proc is a container's: the census sees only that
    # PID namespace, whose PID 1 is the container's init.
    pid_namespace_is_host: bool = True


class Report(NamedTuple):
    targets: tuple[TargetReport, ...]
    machine: MachineCensus | None = None   # `scan` with no PID
    duration_s: float | None = None        # wall time of the scan, when measured
    notes: tuple[str, ...] = ()            # what became of the PIDs given (threads, repeats)

    @property
    def exit_code(self) -> int:
        """0: no finding of severity warning or worse; 1: at least one (DESIGN.md)."""
        worst = [t.worst for t in self.targets if t.worst is not None]
        return 1 if any(s.rank >= Severity.WARNING.rank for s in worst) else 0


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
    ended: str                                  # "duration" | "interrupted" | "target exited"
    listen_ports: tuple[int, ...] = ()

    @property
    def exit_code(self) -> int:
        return 1 if any(f.severity.rank >= Severity.WARNING.rank for f in self.findings) else 0
