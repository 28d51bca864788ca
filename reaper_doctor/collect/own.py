"""This process, cheaply: its descriptor count, its descriptors' keys and
links, whether it has any child, the PID counter. The pytest plugin reads these after every
test, so this module imports nothing beyond os and the door to /proc."""

from __future__ import annotations

import os
from typing import Iterable

from ..parse.loadavg import parse_loadavg_last_pid
from . import proc


class OwnFdCount:
    """This process's descriptor count, over and over: fstat() of
    /proc/self/fd held open costs a tenth of a stat() by path (no path
    walk), and needs no new descriptor when the table is full. Holds one
    descriptor (close-on-exec) until close()."""

    def __init__(self) -> None:
        self.fd: int | None = None
        self.reopen()

    def reopen(self) -> None:
        """Open the descriptor again after close() (a no-op if open)."""
        if self.fd is not None:
            return
        try:
            fd = os.open(f"{proc.ROOT}/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return
        if os.fstat(fd).st_size:
            self.fd = fd
        else:
            os.close(fd)   # the kernel does not tell (before Linux 6.2)

    def __call__(self) -> int | None:
        if self.fd is None:
            return None
        try:
            return os.fstat(self.fd).st_size
        except OSError:
            return None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def own_fd_keys(count: int | None = None) -> dict[int, tuple[int, int]]:
    """{fd: (st_dev, st_ino)} of this process's descriptors: one listdir and
    one fstat per fd (a quarter of a readlink's cost). With the table full,
    listdir has no descriptor to work with (EMFILE): the numbers are then
    probed with fstat up to the soft limit, stopping after `count` found."""
    import errno
    import resource

    try:
        numbers: Iterable[int] = [int(n) for n in os.listdir(f"{proc.ROOT}/self/fd")]
    except OSError as e:
        if e.errno not in (errno.EMFILE, errno.ENFILE):
            raise
        numbers = range(min(resource.getrlimit(resource.RLIMIT_NOFILE)[0], 1 << 20))
    keys: dict[int, tuple[int, int]] = {}
    fstat = os.fstat
    for fd in numbers:
        try:
            st = fstat(fd)
        except OSError:
            continue  # the listdir's own descriptor, or closed since
        keys[fd] = (st.st_dev, st.st_ino)
        if count is not None and len(keys) >= count and isinstance(numbers, range):
            break
    return keys


def fd_link(pid: int, fd: int) -> str | None:
    """The link text of one descriptor (needs no descriptor of our own);
    None if it is closed."""
    try:
        return os.readlink(f"{proc.ROOT}/{pid}/fd/{fd}")
    except OSError:
        return None


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
        return parse_loadavg_last_pid(proc.read_text(f"{proc.ROOT}/loadavg"))
    except (OSError, ValueError, IndexError):
        return None
