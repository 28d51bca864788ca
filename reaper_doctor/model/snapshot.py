"""One sample of a target and its tree, and the light samples between."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import TYPE_CHECKING, Mapping, NamedTuple

if TYPE_CHECKING:
    from .fds import FdTable
    from .limits import LimitUsage, NprocUsage, PidsCgroup
    from .process import ProcessInfo, Unreadable

class HolderLook(NamedTuple):
    """The processes holding a listening socket, read just after its accept
    queue was found non-empty. A queued connection wakes every task that
    waits in accept() or poll() on the socket: a holder asleep then waits
    for something else."""

    asleep: bool                       # no task of any holder running or runnable
                                       # (R) or in the kernel's hands (D)
    cpu_s: Mapping[int, float]         # holder PID -> its CPU time so far (utime + stime)


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
    # The holders of each LISTEN socket (by inode) of the tree that had a
    # non-empty queue, looked at after the queue was read.
    queue_holders: Mapping[int, HolderLook] = field(default_factory=dict)
    reader_uid: int | None = None         # effective UID of the reader; None: not recorded
    # Read only when the target's descriptors could not be: {port: sockets}
    # in CLOSE_WAIT owned by the target's UID, on ports where that UID
    # listens (sock_diag, which any user may query, in our netns).
    close_wait_of_uid: Mapping[int, int] = field(default_factory=dict)

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
    # Accept-queue length of the listening sockets (by inode) that had a
    # queue at the first sample; a listener it could not read is absent.
    queues: Mapping[int, int] = MappingProxyType({})
    holders: Mapping[int, HolderLook] = MappingProxyType({})  # of those non-empty
