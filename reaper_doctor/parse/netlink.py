"""Pure NETLINK_SOCK_DIAG (inet_diag) messages: build the dump request,
parse the replies. No socket is opened here; collect/sockets.py does the I/O.

For a LISTEN socket the kernel reports idiag_rqueue = the current accept
queue (sk_ack_backlog) and idiag_wqueue = the configured backlog
(sk_max_ack_backlog): what `ss -ltn` prints as Recv-Q / Send-Q. No root
is needed. Layouts are from
include/uapi/linux/{netlink,inet_diag}.h.
"""

from __future__ import annotations

import socket
import struct
from typing import Iterable, NamedTuple

from ..model.kernel import TCP_STATES, SocketRow

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
TCPDIAG_GETSOCK = 18
TCP_LISTEN = 10
TCP_CLOSE_WAIT = 8
TCP_TIME_WAIT = 6
TCP_NEW_SYN_RECV = 12

_NLMSGHDR = struct.Struct("=IHHII")          # len, type, flags, seq, pid
_REQ = struct.Struct("=BBBBI")               # family, protocol, ext, pad, states
_REQ_COMPAT = struct.Struct("=BBBB")         # family (AF_UNSPEC), src_len, dst_len, ext
_REQ_ID_SIZE = 48                            # struct inet_diag_sockid: zeroed


class DiagRow(NamedTuple):
    """One struct inet_diag_msg."""

    family: int
    state: int
    local_port: int
    remote_port: int
    rqueue: int
    wqueue: int
    uid: int
    inode: int


def dump_request(family: int, states: int, seq: int = 1) -> bytes:
    """A SOCK_DIAG_BY_FAMILY dump request for TCP sockets whose state bit
    (1 << TCP state) is set in `states`."""
    body = _REQ.pack(family, socket.IPPROTO_TCP, 0, 0, states) + b"\0" * _REQ_ID_SIZE
    header = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY,
                            NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
    return header + body


def any_family_dump_request(states: int, seq: int = 1) -> bytes:
    """The older TCPDIAG_GETSOCK dump request (struct inet_diag_req): the
    kernel answers it with IPv4 and IPv6 sockets from one walk of its
    socket hash tables, where SOCK_DIAG_BY_FAMILY needs a walk per family
    (~10 ms each with 30,000 sockets). Its replies are inet_diag_msg too."""
    body = _REQ_COMPAT.pack(0, 0, 0, 0) + b"\0" * _REQ_ID_SIZE + struct.pack("=II", states, 0)
    header = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), TCPDIAG_GETSOCK,
                            NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
    return header + body


class DiagError(OSError):
    """The kernel answered the dump with an error."""


def parse_replies(data: bytes) -> tuple[list[DiagRow], bool]:
    """The rows of one recv() buffer, and whether the dump is done.

    Raises DiagError on an NLMSG_ERROR reply.
    """
    rows: list[DiagRow] = []
    off = 0
    while off + _NLMSGHDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, off)
        if length < _NLMSGHDR.size:
            break  # malformed: stop rather than loop
        if kind == NLMSG_DONE:
            return rows, True
        if kind == NLMSG_ERROR:
            err = struct.unpack_from("=i", data, off + 16)[0]
            raise DiagError(-err, "inet_diag error")
        p = off + _NLMSGHDR.size
        family, state = data[p], data[p + 1]
        sport, dport = struct.unpack_from(">HH", data, p + 4)
        _expires, rqueue, wqueue, uid, inode = struct.unpack_from("=IIIII", data, p + 52)
        rows.append(DiagRow(family, state, sport, dport, rqueue, wqueue, uid, inode))
        off += (length + 3) & ~3
    return rows, False


# ----------------------------------------------------------------------------
# The whole TCP table of a network namespace, for `scan`: /proc/net/tcp makes
# the kernel walk the socket hash again for every read() chunk and print 150
# bytes per socket; a dump is binary and resumes where it stopped (20k
# sockets: ~0.2-0.4 s from /proc/net/tcp on the test machine). Only the
# inode of each message is decoded here: a dump can hold tens of thousands
# of sockets and a process needs a few.

ALL_STATES = 0xFFFFFFFF
# The states a TCP socket held by a descriptor can be in: TIME_WAIT and
# request sockets never belong to a file, and a busy host has tens of
# thousands of them (a dump of file sockets skips them in the kernel).
FILE_STATES = ALL_STATES & ~((1 << TCP_TIME_WAIT) | (1 << TCP_NEW_SYN_RECV))
_QUEUED_STATES = (1, 8)  # ESTABLISHED, CLOSE_WAIT: see index_replies


def index_replies(data: bytes, into: dict[int, int],
                  queued: dict[int, set[tuple[str, int]]] | None = None, base: int = 0) -> bool:
    """Index one recv() buffer of a dump: `into[inode]` = offset of the
    message body in `data`, plus `base` (where `data` starts in the dump's
    bytes joined); True at NLMSG_DONE. Raises DiagError.

    Inode-0 messages own no file: TIME_WAIT and request socks, and the
    connections in a listener's accept queue (established, or CLOSE_WAIT
    once the client gave up). The latter go to `queued`: local port ->
    peers (host, port).
    """
    off, end = 0, len(data)
    while off + _NLMSGHDR.size <= end:
        length, kind = struct.unpack_from("=IH", data, off)
        if kind == NLMSG_DONE:
            return True
        if kind == NLMSG_ERROR:
            err = struct.unpack_from("=i", data, off + 16)[0]
            raise DiagError(-err, "inet_diag error")
        if length < _NLMSGHDR.size:
            return True  # malformed: stop rather than loop
        body = off + _NLMSGHDR.size
        inode = struct.unpack_from("=I", data, body + 68)[0]
        if inode:
            into[inode] = base + body
        elif queued is not None and data[body + 1] in _QUEUED_STATES:
            row = socket_row(data, body)
            queued.setdefault(row.local[1], set()).add(row.remote)
        off += (length + 3) & ~3
    return False


# family, state, timer, retrans; ports (network order: swapped after);
# source and destination addresses (4 of their 16 bytes for IPv4);
# interface, cookie; expires, rqueue, wqueue, uid, inode.
_ROW4 = struct.Struct("=BBxxHH4s12x4s12x4x8x4xIIII")
_ROW6 = struct.Struct("=BBxxHH16s16s4x8x4xIIII")
_AF_INET = int(socket.AF_INET)


def socket_row(msg: bytes | memoryview, offset: int = 0) -> SocketRow:
    """A SocketRow from the inet_diag_msg at `offset` of `msg`."""
    return socket_rows(msg, (offset,))[0]


def socket_rows(dump: bytes | memoryview, offsets: Iterable[int]) -> list[SocketRow]:
    """A SocketRow from each inet_diag_msg at `offsets` of `dump`, with the
    values /proc/net/tcp shows (for LISTEN the kernel's wqueue is the
    backlog; /proc shows a tx_queue of 0 there, and so does this). Runs
    once per socket a scanned process holds, thousands at a time: one
    loop, no call per row but the unpacking."""
    rows: list[SocketRow] = []
    texts, states, ntohs = _ADDRESS_TEXTS, TCP_STATES, socket.ntohs
    for offset in offsets:
        v4 = dump[offset] == _AF_INET
        _family, state, sport, dport, src, dst, rqueue, wqueue, uid, inode = (
            (_ROW4 if v4 else _ROW6).unpack_from(dump, offset))
        local = texts.get(src) or _address_text(src)
        remote = texts.get(dst) or _address_text(dst)
        rows.append(SocketRow("tcp" if v4 else "tcp6", (local, ntohs(sport)), (remote, ntohs(dport)),
                              states.get(state) or hex(state),
                              0 if state == TCP_LISTEN else wqueue, rqueue, uid, inode))
    return rows


_ADDRESS_TEXTS: dict[bytes, str] = {}   # a server's sockets share a few addresses


def _address_text(packed: bytes) -> str:
    """An address as procfs writes it in /proc/net/tcp{,6}, from 4 or 16 bytes."""
    text = _ADDRESS_TEXTS.get(packed)
    if text is None:
        if len(packed) == 4:
            text = socket.inet_ntop(socket.AF_INET, packed)
        else:
            from ipaddress import IPv6Address  # ~1.5 ms to import: only when needed

            text = str(IPv6Address(packed))
        if len(_ADDRESS_TEXTS) < 4096:
            _ADDRESS_TEXTS[packed] = text
    return text
