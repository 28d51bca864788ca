"""A process as one sample saw it, the container it runs in, and what
could not be read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from .kernel import ExitStatus


class Container(NamedTuple):
    """The container a process runs in, as its cgroup names it."""

    runtime: str             # "docker", "podman", "containerd", "cri-o", "kubernetes",
                             # "systemd-nspawn", "lxc"
    id: str                  # the runtime's full id (64 hex digits), or the pod UID
                             # (kubernetes), or the machine / container name
    pod: str | None = None   # the Kubernetes pod UID, when the path has one

    @property
    def short_id(self) -> str:
        """The 12-character id `docker ps` and `podman ps` show; a name stays whole."""
        is_hex_id = len(self.id) == 64 and all(c in "0123456789abcdef" for c in self.id)
        return self.id[:12] if is_hex_id else self.id

    def describe(self) -> str:
        """"podman container a1df1d9cf5b3", "Kubernetes pod <uid>", ..."""
        if self.runtime == "kubernetes" and self.id == self.pod:
            return f"Kubernetes pod {self.pod}"
        pod = f" of Kubernetes pod {self.pod}" if self.pod else ""
        return f"{self.runtime} container {self.short_id}{pod}"


def describe_place(is_ns_init: bool, container: Container | None,
                   ns_pid: int | None = None) -> str | None:
    """"PID 1 of its PID namespace, in podman container a1df1d9cf5b3", or
    either half ("PID 7 in its PID namespace" given an `ns_pid` for a
    process that is not PID 1); None when the process is neither."""
    parts = (["PID 1 of its PID namespace"] if is_ns_init
             else [f"PID {ns_pid} in its PID namespace"] if ns_pid is not None else [])
    if container is not None:
        parts.append(f"in {container.describe()}")
    return ", ".join(parts) or None


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
    # stat cminflt: page faults of the children waited for in this process,
    # > 0 once one was. It survives exec(): a wrapper that ran commands and
    # then exec()ed the program leaves it too.
    child_faults: int = 0
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
    nspid: tuple[int, ...] = ()       # the NSpid line: its PID in each namespace, ours first


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
