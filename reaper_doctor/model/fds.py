"""Descriptors: one process's table, a socket, one described descriptor."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Mapping, NamedTuple

from .kernel import UnixSocketRow


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
