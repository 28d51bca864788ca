"""The socket tables of a network namespace: sock_diag dumps, with
/proc/<pid>/net/* as the fallback."""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Mapping, Sequence

from ..parse import netlink, procfs
from . import proc
from .proc import cpu_count, read_text
from .tasks import look_at_holders

if TYPE_CHECKING:
    from ..model.snapshot import HolderLook
    from .process import SampleContext

def netns_key(pid: int) -> str:
    try:
        return os.readlink(f"{proc.ROOT}/{pid}/ns/net")
    except OSError:
        return f"pid:{pid}"


def socket_table(pid: int, ctx: SampleContext) -> tuple[_SocketRows, set[int]]:
    """The inet and unix socket tables of `pid`'s network namespace, read
    once per namespace per sample and shared."""
    if ctx.reading_sockets is not None:
        ctx.reading_sockets.join()   # read ahead (read_socket_table_ahead)
        ctx.reading_sockets = None
    return _read_socket_table(pid, ctx)


# Listing a big fd directory is one long system call (~17 ms for 20,000
# descriptors) that leaves the other CPU idle: long enough to read the
# socket table on it, which most such tables will need.
SOCKETS_AHEAD_MIN_FDS = 1024


def read_socket_table_ahead(pid: int, dir_fd: int, ctx: SampleContext) -> None:
    if ctx.reading_sockets is not None or netns_key(pid) in ctx.socket_tables \
            or cpu_count() < 2:
        return
    try:
        if os.fstat(dir_fd).st_size < SOCKETS_AHEAD_MIN_FDS:  # the count, on Linux >= 6.2
            return
    except OSError:
        return
    import threading

    def read_ahead() -> None:
        try:
            _read_socket_table(pid, ctx)
        except Exception:  # noqa: BLE001 - socket_table reads it again and meets the error
            pass

    ctx.reading_sockets = threading.Thread(target=read_ahead, name="reaper-doctor-sockets",
                                           daemon=True)
    ctx.reading_sockets.start()


def _read_socket_table(pid: int, ctx: SampleContext) -> tuple[_SocketRows, set[int]]:
    key = netns_key(pid)
    if key not in ctx.socket_tables:
        rows = _SocketRows()
        unaccepted: dict[int, set[tuple[str, int]]] = {}
        # TCP over sock_diag when the target shares our network namespace;
        # /proc/<pid>/net/tcp* otherwise, or if netlink is refused.
        tcp = _tcp_by_sock_diag(unaccepted) if key == netns_key(os.getpid()) else None
        if tcp is not None:
            rows.dump, rows.diag = tcp
        for proto in (("udp", "udp6") if tcp is not None else ("tcp", "tcp6", "udp", "udp6")):
            try:
                text = read_text(f"{proc.ROOT}/{pid}/net/{proto}")
            except OSError:
                continue
            for row in procfs.parse_inet_table(text, proto):
                rows.parsed[row.inode] = row
            if proto.startswith("tcp"):
                for port, peers in procfs.parse_unaccepted(text).items():
                    unaccepted.setdefault(port, set()).update(peers)
        ctx.unaccepted[key] = unaccepted
        try:
            unix = procfs.parse_unix_inodes(read_text(f"{proc.ROOT}/{pid}/net/unix"))
        except OSError:
            unix = set()
        ctx.socket_tables[key] = rows
        ctx.unix_inodes[key] = unix
    return ctx.socket_tables[key], ctx.unix_inodes[key]


class _SocketRows(Mapping[int, procfs.SocketRow]):
    """A netns's TCP/UDP sockets by inode. Rows from sock_diag stay raw
    (an offset into the dump) until asked for: a process holds a few of
    the machine's sockets."""

    def __init__(self) -> None:
        self.parsed: dict[int, procfs.SocketRow] = {}
        self.dump = b""                     # a sock_diag dump's messages, joined
        self.diag: dict[int, int] = {}      # inode -> offset of its inet_diag_msg there

    def __getitem__(self, inode: int) -> procfs.SocketRow:
        row = self.rows((inode,))[0]
        if row is None:
            raise KeyError(inode)
        return row

    def rows(self, inodes: Iterable[int]) -> list[procfs.SocketRow | None]:
        """The row of each inode, None for one in no table; the dump's rows
        are decoded together (a process may hold thousands)."""
        inodes = list(inodes)
        parsed, offsets = self.parsed, self.diag
        todo = [inode for inode in inodes if inode not in parsed and inode in offsets]
        if todo:
            decoded = netlink.socket_rows(self.dump, [offsets[inode] for inode in todo])
            parsed.update(zip(todo, decoded))
        return [parsed.get(inode) for inode in inodes]

    def __iter__(self) -> Iterator[int]:
        yield from self.parsed
        yield from (inode for inode in self.diag if inode not in self.parsed)

    def __len__(self) -> int:
        return len(self.parsed) + sum(1 for inode in self.diag if inode not in self.parsed)


def _tcp_by_sock_diag(unaccepted: dict[int, set[tuple[str, int]]]
                      ) -> tuple[bytes, dict[int, int]] | None:
    """Every TCP socket of our network namespace that a descriptor can hold,
    from sock_diag: the dump's messages joined, and inode -> offset of its
    message there (into `unaccepted`, the connections waiting in accept
    queues). None if netlink is not available (the caller reads /proc)."""
    try:
        with _sock_diag() as nl:
            try:
                return _dump_tcp(nl, [netlink.any_family_dump_request(netlink.FILE_STATES)],
                                 unaccepted)
            except netlink.DiagError:  # a kernel without the older request
                unaccepted.clear()
                return _dump_tcp(nl, [netlink.dump_request(family, netlink.FILE_STATES)
                                      for family in (socket.AF_INET, socket.AF_INET6)], unaccepted)
    except OSError:
        return None


def _dump_tcp(nl: socket.socket, requests: list[bytes],
              unaccepted: dict[int, set[tuple[str, int]]]) -> tuple[bytes, dict[int, int]]:
    chunks: list[bytes] = []
    offsets: dict[int, int] = {}
    size = 0   # of the chunks so far: where the next one starts in the joined dump

    def index(data: bytes) -> bool:
        nonlocal size
        done = netlink.index_replies(data, offsets, unaccepted, size)
        chunks.append(data)
        size += len(data)
        return done

    for request in requests:
        _dump(nl, request, index)
    return b"".join(chunks), offsets


SOCK_DIAG_TIMEOUT_S = 5.0
SOCK_DIAG_RECV_BYTES = 1 << 20   # a big table's dump comes in few datagrams


def _sock_diag() -> socket.socket:
    """A NETLINK_SOCK_DIAG socket of our network namespace. Raises OSError."""
    nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                       netlink.NETLINK_SOCK_DIAG)
    nl.settimeout(SOCK_DIAG_TIMEOUT_S)
    return nl


def _dump(nl: socket.socket, request: bytes, take: Callable[[bytes], bool]) -> None:
    """Send one dump request; hand each reply datagram to `take` until it
    says the dump is done."""
    nl.send(request)
    while not take(nl.recv(SOCK_DIAG_RECV_BYTES)):
        pass


def listen_backlogs(ctx: SampleContext) -> dict[int, int]:
    """LISTEN inode -> configured backlog, from one inet_diag dump per
    sample, only when some listener has a queue. Optional: any failure
    (no netlink, seccomp, other netns) leaves it empty, silently."""
    if ctx.backlogs is None:
        ctx.backlogs = {}
        for family in (socket.AF_INET, socket.AF_INET6):
            try:
                for row in inet_diag_dump(family, 1 << netlink.TCP_LISTEN):
                    ctx.backlogs[row.inode] = row.wqueue
            except OSError:
                continue
    return ctx.backlogs


def inet_diag_dump(family: int, states: int) -> list[netlink.DiagRow]:
    """TCP sockets of this process's network namespace in `states` (a bit
    mask of 1 << state), from NETLINK_SOCK_DIAG. Raises OSError."""
    rows: list[netlink.DiagRow] = []

    def parse(data: bytes) -> bool:
        batch, done = netlink.parse_replies(data)
        rows.extend(batch)
        return done

    with _sock_diag() as nl:
        _dump(nl, netlink.dump_request(family, states), parse)
    return rows


def close_wait_where_uid_listens(pid: int, uid: int) -> dict[int, int]:
    """{port: sockets} in CLOSE_WAIT owned by `uid` on the ports where a
    listening socket of `uid` listens, from sock_diag, which any user may
    query: what can be said of another user's server whose descriptors may
    not be read. Our network namespace only: {} when `pid` is seen in
    another (its ns link is unreadable to a non-owner, which leaves ours as
    the best guess), or when netlink is refused."""
    theirs = netns_key(pid)
    if not theirs.startswith("pid:") and theirs != netns_key(os.getpid()):
        return {}
    listening: set[int] = set()
    waiting: dict[int, int] = {}
    states = (1 << netlink.TCP_LISTEN) | (1 << netlink.TCP_CLOSE_WAIT)
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            rows = inet_diag_dump(family, states)
        except OSError:
            continue
        for diag in rows:
            if diag.uid != uid:
                continue
            if diag.state == netlink.TCP_LISTEN:
                listening.add(diag.local_port)
            else:
                waiting[diag.local_port] = waiting.get(diag.local_port, 0) + 1
    return {port: n for port, n in sorted(waiting.items()) if port in listening}


def listen_queues(pid: int, inodes: Iterable[int]) -> dict[int, int]:
    """The accept-queue length of each listening socket in `inodes`, in
    `pid`'s network namespace: sock_diag's listeners when it is ours (a
    few rows), /proc/<pid>/net/tcp{,6} otherwise. A socket not found (closed
    since, or unreadable) is left out."""
    wanted = set(inodes)
    found: dict[int, int] = {}
    if not wanted:
        return found
    if netns_key(pid) == netns_key(os.getpid()):
        try:
            for family in (socket.AF_INET, socket.AF_INET6):
                for diag in inet_diag_dump(family, 1 << netlink.TCP_LISTEN):
                    if diag.inode in wanted:
                        found[diag.inode] = diag.rqueue  # a listener's rqueue: its queue
            return found
        except OSError:
            found.clear()  # no netlink here: read the tables
    for proto in ("tcp", "tcp6"):
        try:
            text = read_text(f"{proc.ROOT}/{pid}/net/{proto}")
        except OSError:
            continue
        for row in procfs.parse_inet_table(text, proto):
            if row.inode in wanted and row.state == "LISTEN":
                found[row.inode] = row.rx_queue
    return found


def look_at_queued(holders: Mapping[int, Sequence[int]]) -> dict[int, HolderLook]:
    """Look at the holders (PIDs) of each listening socket (by inode) just
    found with a non-empty queue. A holder asleep counts only if the queue
    is still non-empty after the look: asleep in accept() before a new
    connection came is a server waiting for work."""
    looks = {}
    for inode, pids in holders.items():
        look = look_at_holders(pids)
        if look is not None:
            looks[inode] = (pids[0], look)
    by_pid: dict[int, list[int]] = {}
    for inode, (pid, look) in looks.items():
        if look.asleep:
            by_pid.setdefault(pid, []).append(inode)
    still = {i: n for pid, inodes in by_pid.items() for i, n in listen_queues(pid, inodes).items()}
    return {inode: look if not look.asleep or still.get(inode) else look._replace(asleep=False)
            for inode, (_, look) in looks.items()}


def close_wait_on_ports(pid: int, ports: frozenset[int], same_netns: bool,
                        families: tuple[int, ...] = (socket.AF_INET, socket.AF_INET6)
                        ) -> int | None:
    """TCP sockets in CLOSE_WAIT whose local port is one of `ports`: from
    inet_diag when `pid` shares our network namespace (the kernel filters
    by state, so the cost follows the CLOSE_WAIT count), else from
    /proc/PID/net/tcp{,6}. None when neither can be read."""
    if not ports:
        return 0
    if same_netns:
        try:
            # Each dump walks the whole established hash in the kernel
            # (~7 us per 10 sockets): only the families the tree listens on.
            return sum(1 for family in families
                       for row in inet_diag_dump(family, 1 << netlink.TCP_CLOSE_WAIT)
                       if row.local_port in ports)
        except OSError:
            pass
    total, read_any = 0, False
    for proto in ("tcp", "tcp6"):
        if (socket.AF_INET6 if proto == "tcp6" else socket.AF_INET) not in families:
            continue
        try:
            text = read_text(f"{proc.ROOT}/{pid}/net/{proto}")
        except OSError:
            continue
        read_any = True
        total += sum(1 for row in procfs.parse_inet_table(text, proto)
                     if row.state == "CLOSE_WAIT" and row.local[1] in ports)
    return total if read_any else None
