"""A process as one sample saw it, and what could not be read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from .kernel import ExitStatus


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

    @property
    def is_zombie(self) -> bool:
        return self.state == "Z"

    @property
    def identity(self) -> tuple[int, int]:
        """(pid, start time): a reused PID is a different process."""
        return self.pid, self.start_ticks


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
    ino: int | None = None      # inode of /proc/PID: a new process (or a reused PID) gets a new one


class Unreadable(NamedTuple):
    """A field a sample could not read, and why."""

    pid: int
    field: str
    reason: str


@dataclass
class Teardown:
    """What the clean-up did: processes signalled, reaped, and left over."""

    killed: int = 0
    reaped: int = 0
    leftover_processes: int = 0
    leftover_pids: list[int] = field(default_factory=list)
