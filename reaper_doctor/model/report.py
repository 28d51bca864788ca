"""Findings and the reports `scan` renders (one target, or the machine)."""

from __future__ import annotations

from enum import Enum
from types import MappingProxyType
from typing import TYPE_CHECKING, Iterable, Mapping, NamedTuple

if TYPE_CHECKING:
    from .limits import PidsCgroup
    from .process import Container
    from .snapshot import Snapshot

class Severity(str, Enum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def rank(self) -> int:
        return {"info": 0, "warning": 1, "error": 2}[self.value]


class Finding(NamedTuple):
    code: str                    # "RD101"
    slug: str                    # "zombie-leak"
    severity: Severity
    pid: int
    message: str                 # one line, names the fix
    evidence: Mapping[str, object] = MappingProxyType({})


class Coverage(NamedTuple):
    """What a sample could not read, and so which findings went unchecked."""

    missing: tuple[str, ...]     # "the descriptors of PID 10763 (permission denied)"
    unchecked: tuple[str, ...]   # finding codes that could not be checked
    to_complete: str             # "run as root, or as UID 0 (its owner)"


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
    container: Container | None = None   # where it runs, when known


class NofileUsage(NamedTuple):
    """One process's open descriptors against its RLIMIT_NOFILE."""

    pid: int
    name: str | None
    uid: int | None
    used: int
    soft: int
    hard: int | None
    container: Container | None = None   # where it runs, when known

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
    container: Container | None = None      # where it runs, when known


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
    # Live processes whose network namespace could not be read (without
    # CAP_SYS_PTRACE: any other user's, and root's with more capabilities):
    # their sockets are seen only where they share ours.
    netns_unreadable: int = 0
    # CLOSE_WAIT sockets on a listening port whose holder could not be read
    # (another user's, without CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE).
    close_wait_unattributed: int = 0
    containers: tuple[ContainerRow, ...] = ()   # worst verdict first
    # False when this /proc is a container's: the census sees only that
    # PID namespace, whose PID 1 is the container's init.
    pid_namespace_is_host: bool = True


def exit_code(findings: Iterable[Finding]) -> int:
    """0: no finding of severity warning or worse; 1: at least one (docs/exit-codes.md)."""
    return 1 if any(f.severity.rank >= Severity.WARNING.rank for f in findings) else 0


class Report(NamedTuple):
    targets: tuple[TargetReport, ...]
    machine: MachineCensus | None = None   # `scan` with no PID
    duration_s: float | None = None        # wall time of the scan, when measured
    notes: tuple[str, ...] = ()            # what became of the PIDs given (threads, repeats)

    @property
    def exit_code(self) -> int:
        return exit_code(f for t in self.targets for f in t.findings)
