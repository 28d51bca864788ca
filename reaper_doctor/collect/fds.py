"""A process's descriptors: classified by kind (one readlink each), counted
without reading a link, or described one by one; the listening sockets of
a server's processes."""

from __future__ import annotations

import os
import stat as stat_mod
import time
from collections import Counter
from typing import (
    TYPE_CHECKING,
    Iterable,
    Sequence,
)

from ..model import FdCounts, FdDetail, FdTable, SocketFd
from ..model.scenario import Listener
from ..parse import procfs
from . import proc
from .own import OwnFdCount, fd_link, own_fd_keys  # noqa: F401  (re-exported)
from .proc import ProcessGone, check_gone, map_io, read_text
from .process import new_context
from .sockets import listen_backlogs, netns_key, read_socket_table_ahead, socket_table

if TYPE_CHECKING:
    from .process import SampleContext

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


def read_fds(pid: int, ctx: SampleContext) -> FdTable | None:
    """Every descriptor of `pid` by kind: one readlink per fd (about 5 us each)."""
    fd_dir = f"{proc.ROOT}/{pid}/fd"
    try:
        dir_fd = os.open(fd_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        check_gone(pid, e)
        ctx.note(pid, "fds", e)
        return None
    try:
        return _read_fd_dir(pid, dir_fd, fd_dir, ctx)
    finally:
        os.close(dir_fd)


def _read_fd_dir(pid: int, dir_fd: int, fd_dir: str, ctx: SampleContext) -> FdTable | None:
    read_socket_table_ahead(pid, dir_fd, ctx)
    try:
        names = os.listdir(dir_fd)
    except OSError as e:
        check_gone(pid, e)   # it exited since the open
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
        table, unix = socket_table(pid, ctx)
        for (fd, inode), row in zip(socket_fds, table.rows(inode for _, inode in socket_fds)):
            if row is not None:
                kind = row.proto.rstrip("6")
                backlog = None
                if row.state == "LISTEN" and row.rx_queue:
                    backlog = listen_backlogs(ctx).get(inode)
                    peers = ctx.unaccepted.get(netns_key(pid), {}).get(row.local[1], ())
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


def listening_sockets(pids: Iterable[int]) -> list[Listener]:
    """The TCP listening sockets held by each of `pids` (processes that have
    exited meanwhile, or whose descriptors cannot be read, are skipped):
    where a server `run` started listens."""
    ctx = new_context()  # one socket table per network namespace, shared
    found: list[Listener] = []
    for pid in pids:
        try:
            table = read_fds(pid, ctx)
        except ProcessGone:
            continue
        if table is None:
            continue
        found += [Listener(pid, s.local[0], s.local[1], s.proto)
                  for s in table.listeners if s.proto in ("tcp", "tcp6")]
    return found


def count_fds(pid: int) -> int | None:
    """Open descriptors of `pid`, without reading a single link.

    Since Linux 6.2 stat(/proc/PID/fd).st_size is the count (a bitmap
    weight: O(1) in practice); older kernels say 0, so a 0 is checked with
    listdir (about 0.8 us per fd). Raises ProcessGone;
    None when the directory may not be read (another user's process).
    """
    path = f"{proc.ROOT}/{pid}/fd"
    try:
        size = os.stat(path).st_size
        return size if size > 0 else len(os.listdir(path))
    except OSError as e:
        check_gone(pid, e)
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


# Light reads of one process, for the pytest plugin's before/after check.
# Each runs around every test: no process table, no socket tables.


def fd_links(pid: int) -> dict[int, str]:
    """{fd: link text} of every descriptor of `pid`: one listdir and one
    readlink per fd (about 5 us each). Raises ProcessGone."""
    fd_dir = f"{proc.ROOT}/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError as e:
        check_gone(pid, e)
        raise
    links: dict[int, str] = {}
    for name in names:
        try:
            links[int(name)] = os.readlink(f"{fd_dir}/{name}")
        except OSError:
            continue  # closed since listdir (the listdir's own fd is one)
    return links


def fd_count(pid: int) -> int | None:
    """How many descriptors `pid` has open, in one stat() and without a
    descriptor of our own: Linux >= 6.2 gives it as the size of
    /proc/<pid>/fd. None where the kernel does not (size 0) or it is gone."""
    try:
        size = os.stat(f"{proc.ROOT}/{pid}/fd").st_size
    except OSError:
        return None
    return size or None


def describe_fds(pid: int, fds: Iterable[int]) -> list[FdDetail]:
    """Describe some descriptors of `pid`: kind, open mode and offset
    (fdinfo), socket addresses and state (the netns socket tables, read
    once), the other ends of pipes. Fds closed meanwhile are left out."""
    wanted = sorted(set(fds))
    links = fd_links(pid)
    ctx = new_context()
    inet: dict[int, SocketFd] = {}
    unix: dict[int, procfs.UnixSocketRow] | None = None
    if any(links.get(fd, "").startswith("socket:") for fd in wanted):
        table = read_fds(pid, ctx)
        inet = {s.fd: s for s in table.sockets} if table else {}
        try:
            text = read_text(f"{proc.ROOT}/{pid}/net/unix")
            unix = {row.inode: row for row in procfs.parse_unix_table(text)}
        except OSError:
            unix = {}
    by_pipe: dict[int, list[int]] = {}
    for fd, text in links.items():
        kind, inode = procfs.fd_link_kind(text)
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
            info = procfs.parse_fdinfo(read_text(f"{proc.ROOT}/{pid}/fdinfo/{fd}"))
            mode = procfs.describe_open_flags(info.flags) if info.flags is not None else None
            offset = info.pos
        except OSError:
            pass
        extra: dict[str, object] = {}
        if kind == "path":
            kind = _path_kind(f"{proc.ROOT}/{pid}/fd/{fd}")
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
