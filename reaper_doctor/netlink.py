"""Pure NETLINK_SOCK_DIAG (inet_diag) messages: build the dump request,
parse the replies. No socket is opened here; collect.py does the I/O.

For a LISTEN socket the kernel reports idiag_rqueue = the current accept
queue (sk_ack_backlog) and idiag_wqueue = the configured backlog
(sk_max_ack_backlog): what `ss -ltn` prints as Recv-Q / Send-Q. No root
is needed (linux-facts 5, experiments/inet_diag.py). Layouts are from
include/uapi/linux/{netlink,inet_diag}.h.
"""

from __future__ import annotations

import socket
import struct
from typing import NamedTuple

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
TCP_LISTEN = 10
TCP_CLOSE_WAIT = 8

_NLMSGHDR = struct.Struct("=IHHII")          # len, type, flags, seq, pid
_REQ = struct.Struct("=BBBBI")               # family, protocol, ext, pad, states
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
