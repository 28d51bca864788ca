"""The census's view of sockets: every listening TCP socket of the machine
and the CLOSE_WAIT sockets on listening ports, one socket table per
network namespace, and the processes that hold them.

A namespace's table is one sock_diag dump for our own (the kernel filters
by state: a few hundred bytes on a healthy host) or its /proc/PID/net/tcp
and tcp6, read through one of its processes, for the others. Descriptors
are only read when a table holds something to explain (a CLOSE_WAIT socket
on a listening port, a listener with a queue): then the fd links of the
namespace's processes are read until every such socket has its holders,
the processes of the sockets' owner UIDs first.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Iterable, Mapping, NamedTuple

from ..model import FdTable, SocketFd
from ..parse import netlink, procfs
from . import proc
from .proc import map_io, read_text
from .sockets import _dump_tcp
from .cache import ProcessCache
from .tasks import TaskBrief

# What a census needs of TCP: listeners and CLOSE_WAIT sockets.
CENSUS_STATES = (1 << netlink.TCP_LISTEN) | (1 << netlink.TCP_CLOSE_WAIT)
_WQUEUE = struct.Struct("=I")
_WQUEUE_OFFSET = 60      # idiag_wqueue in struct inet_diag_msg


class NetnsSockets(NamedTuple):
    """The census's sockets of one network namespace."""

    key: str                               # "net:[4026531840]"
    pids: tuple[int, ...]                  # its live processes (that we could place)
    listeners: Mapping[int, SocketFd]      # inode -> LISTEN socket (fd -1: not placed)
    close_wait: Mapping[int, SocketFd]     # inode -> CLOSE_WAIT socket on a listening port
    owners: Mapping[int, int]              # inode -> owner UID, of the sockets to explain

    @property
    def to_explain(self) -> frozenset[int]:
        """Inodes whose holders the census needs: CLOSE_WAIT sockets on a
        listening port, and listeners with connections in their queue."""
        return frozenset(self.close_wait) | {i for i, s in self.listeners.items() if s.rx_queue}


class SocketCensus(NamedTuple):
    netns: tuple[NetnsSockets, ...]
    unplaced: int            # live processes whose network namespace we could not read
    own: str | None = None   # our own network namespace

    def get(self, key: str) -> NetnsSockets | None:
        return next((ns for ns in self.netns if ns.key == key), None)


def netns_of(pids: Iterable[int], table: Mapping[int, TaskBrief] | None = None,
             cache: ProcessCache | None = None) -> tuple[dict[str, list[int]], int]:
    """Live processes grouped by network namespace; and how many could not
    be placed (gone, or /proc/PID/ns/net denied without CAP_SYS_PTRACE).
    With `cache`, a process's namespace is read again only now and then."""
    pids = list(pids)
    known: dict[int, str] = {}
    if cache is not None and table is not None:
        known = cache.get_many("netns", ((pid, table[pid].ino) for pid in pids))

    def key(pid: int) -> str | None:
        try:
            return os.readlink(f"{proc.ROOT}/{pid}/ns/net")
        except OSError:
            return None

    todo = [pid for pid in pids if pid not in known]
    for pid, ns in zip(todo, map_io(key, todo)):
        if ns is not None:
            known[pid] = ns
            if cache is not None and table is not None:
                cache.put("netns", pid, table[pid].ino, ns)
    groups: dict[str, list[int]] = {}
    for pid in pids:
        ns = known.get(pid)
        if ns is not None:
            groups.setdefault(ns, []).append(pid)
    return groups, len(pids) - len(known)


def read_socket_census(table: Mapping[int, TaskBrief],
                       cache: ProcessCache | None = None) -> SocketCensus:
    """The listeners and CLOSE_WAIT-on-listening-port sockets of every
    network namespace of the machine's live processes."""
    live = [pid for pid, brief in table.items() if brief.state != "Z" and not _kernel(brief)]
    groups, unplaced = netns_of(live, table, cache)
    try:
        own = os.readlink(f"{proc.ROOT}/self/ns/net")
    except OSError:
        own = None
    found = []
    for key, pids in groups.items():
        rows = _netns_rows(key == own, pids)
        if rows is None:
            continue
        found.append(_classify(key, pids, rows))
    return SocketCensus(netns=tuple(found), unplaced=unplaced, own=own)


def reread_socket_census(before: SocketCensus) -> SocketCensus:
    """The same namespaces read again, those with something to explain
    only (the others are kept as they were: nothing there to judge)."""
    found = []
    for ns in before.netns:
        rows = _netns_rows(ns.key == before.own, list(ns.pids)) if ns.to_explain else None
        found.append(ns if rows is None else _classify(ns.key, list(ns.pids), rows))
    return before._replace(netns=tuple(found))


def _kernel(brief: TaskBrief) -> bool:
    """Kernel threads hold no descriptors (kthreadd, PID 2, is their parent)."""
    return brief.ppid == 2


def _netns_rows(own: bool, pids: list[int]) -> list[tuple[procfs.SocketRow, int | None]] | None:
    """(row, backlog) of every LISTEN and CLOSE_WAIT TCP socket of a
    namespace; None when no table of it can be read."""
    if own:
        rows = _dump_own()
        if rows is not None:
            return rows
    for pid in pids[:3]:          # a member may exit between the grouping and here
        found: list[tuple[procfs.SocketRow, int | None]] = []
        read_any = False
        for proto in ("tcp", "tcp6"):
            try:
                text = read_text(f"{proc.ROOT}/{pid}/net/{proto}")
            except OSError:
                continue
            read_any = True
            found += [(row, None) for row in procfs.parse_inet_table(text, proto)
                      if row.state in ("LISTEN", "CLOSE_WAIT") and row.inode]
        if read_any:
            return found
    return None


def _dump_own() -> list[tuple[procfs.SocketRow, int | None]] | None:
    """Our namespace's LISTEN and CLOSE_WAIT sockets from one sock_diag dump
    of both families; None if netlink is refused."""
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                           netlink.NETLINK_SOCK_DIAG) as nl:
            nl.settimeout(5.0)
            dump, offsets = _dump_tcp(nl, [netlink.any_family_dump_request(CENSUS_STATES)], {})
    except OSError:
        return None
    inodes = list(offsets)
    rows = netlink.socket_rows(dump, [offsets[i] for i in inodes])
    return [(row, _WQUEUE.unpack_from(dump, offsets[inode] + _WQUEUE_OFFSET)[0]
             if row.state == "LISTEN" else None) for inode, row in zip(inodes, rows)]


def _classify(key: str, pids: list[int],
              rows: list[tuple[procfs.SocketRow, int | None]]) -> NetnsSockets:
    listeners: dict[int, SocketFd] = {}
    for row, backlog in rows:
        if row.state == "LISTEN":
            listeners[row.inode] = _socket_fd(-1, row, backlog)
    ports = {s.local[1] for s in listeners.values()}
    close_wait = {row.inode: _socket_fd(-1, row, None) for row, _ in rows
                  if row.state == "CLOSE_WAIT" and row.local[1] in ports}
    owners = {row.inode: row.uid for row, _ in rows
              if row.inode in close_wait or (row.state == "LISTEN" and row.rx_queue)}
    return NetnsSockets(key=key, pids=tuple(pids), listeners=listeners, close_wait=close_wait,
                        owners=owners)


def _socket_fd(fd: int, row: procfs.SocketRow, backlog: int | None) -> SocketFd:
    return SocketFd(fd=fd, inode=row.inode, proto=row.proto, local=row.local, remote=row.remote,
                    state=row.state, rx_queue=row.rx_queue, tx_queue=row.tx_queue,
                    backlog=backlog)


# Processes whose descriptors are read at a time while searching holders:
# enough for both CPUs (map_io), few enough to stop soon after the last
# holder is found.
HOLDER_CHUNK = 256


def find_holders(ns: NetnsSockets, wanted: frozenset[int], table: Mapping[int, TaskBrief],
                 owner_uids: Iterable[int], hint: Iterable[int] = (),
                 counts: Mapping[int, int] | None = None) -> dict[int, dict[int, int]]:
    """pid -> {inode: fd} of the processes of `ns` that hold any of
    `wanted` (and of the namespace's listeners: a holder's listening ports
    are part of its picture). Read in order of likelihood until every
    wanted socket has a holder and every port of theirs a listener: the
    processes of `hint` (last time's holders), then those of the owner
    UIDs, then the others; within each, the biggest descriptor tables
    first (FDSize, else the count in `counts`: a leak grows both). Copies
    of a socket in processes read after that are not looked for."""
    interesting = wanted | frozenset(ns.listeners)
    ports = {s.local[1] for i in wanted for s in (ns.close_wait.get(i), ns.listeners.get(i))
             if s is not None}
    uids = set(owner_uids)
    hinted = set(hint)
    sizes = counts or {}

    def order(pid: int) -> tuple[int, int, int]:
        brief = table[pid]
        return (0 if pid in hinted else 1 if brief.uid in uids else 2,
                -(brief.fd_size if brief.fd_size is not None else sizes.get(pid, 0)), pid)

    todo = sorted(ns.pids, key=order)
    # Last time's holders on their own first: most often they are all there is.
    first = sum(1 for pid in todo if pid in hinted)
    chunks = [todo[:first]] if first else []
    chunks += [todo[i:i + HOLDER_CHUNK] for i in range(first, len(todo), HOLDER_CHUNK)]
    holders: dict[int, dict[int, int]] = {}
    placed: set[int] = set()
    for chunk in chunks:
        for pid, held in zip(chunk, map_io(lambda pid: _socket_inodes(pid, interesting), chunk)):
            if held:
                holders[pid] = held
                placed.update(held)
        listening = {ns.listeners[i].local[1] for i in placed if i in ns.listeners}
        if wanted <= placed and ports <= listening:
            break
    # A holder of only a listener matters when the listener's port is one
    # of the wanted sockets' ports: its port makes them accepted connections.
    return {pid: held for pid, held in holders.items()
            if wanted & held.keys() or any(ns.listeners[i].local[1] in ports
                                           for i in held if i in ns.listeners)}


def _socket_inodes(pid: int, interesting: frozenset[int]) -> dict[int, int]:
    """{inode: fd} of the sockets of `pid` among `interesting`; {} when its
    descriptors cannot be read."""
    try:
        dir_fd = os.open(f"{proc.ROOT}/{pid}/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return {}
    try:
        names = os.listdir(dir_fd)
        found: dict[int, int] = {}
        for name in names:
            try:
                link = os.readlink(name, dir_fd=dir_fd)
            except OSError:
                continue
            if link.startswith("socket:["):
                inode = int(link[8:-1])
                if inode in interesting:
                    found[inode] = int(name)
        return found
    except OSError:
        return {}
    finally:
        os.close(dir_fd)


def holder_tables(ns: NetnsSockets, holders: Mapping[int, Mapping[int, int]],
                  counts: Mapping[int, int] | None = None) -> dict[int, FdTable]:
    """An FdTable per holder with just the census's sockets of it (its
    listeners and CLOSE_WAIT sockets, with their descriptor numbers)."""
    tables = {}
    for pid, held in holders.items():
        sockets = []
        for inode, fd in sorted(held.items(), key=lambda item: item[1]):
            s = ns.listeners.get(inode) or ns.close_wait.get(inode)
            if s is not None:
                sockets.append(s._replace(fd=fd))
        tables[pid] = FdTable(open=(counts or {}).get(pid, len(held)), by_kind={},
                              sockets=tuple(sockets))
    return tables


__all__ = ["NetnsSockets", "SocketCensus", "find_holders", "holder_tables", "netns_of",
           "read_socket_census", "reread_socket_census"]
