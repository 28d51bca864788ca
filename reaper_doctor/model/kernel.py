"""What the kernel reports, decoded: a wait status, socket table rows."""

from __future__ import annotations

from typing import NamedTuple

from .signals import signal_name


class ExitStatus(NamedTuple):
    """A zombie's wait status, decoded. `hidden` when the kernel showed us 0
    because we may not ptrace-read the process (the real value is unknown)."""

    raw: int | None
    code: int | None = None     # exit code, when it exited
    signal: int | None = None   # terminating signal, when it was killed
    core: bool = False
    hidden: bool = False

    def describe(self) -> str:
        """"exit 3", "SIGKILL", "SIGSEGV (core)" or "hidden"."""
        if self.hidden or self.raw is None:
            return "hidden"
        if self.signal is not None:
            return signal_name(self.signal) + (" (core)" if self.core else "")
        return f"exit {self.code}"


# TCP states as /proc/net/tcp prints them (include/net/tcp_states.h).
TCP_STATES = {
    0x01: "ESTABLISHED", 0x02: "SYN_SENT", 0x03: "SYN_RECV", 0x04: "FIN_WAIT1",
    0x05: "FIN_WAIT2", 0x06: "TIME_WAIT", 0x07: "CLOSE", 0x08: "CLOSE_WAIT",
    0x09: "LAST_ACK", 0x0A: "LISTEN", 0x0B: "CLOSING", 0x0C: "NEW_SYN_RECV",
}


class SocketRow(NamedTuple):
    """One row of /proc/net/{tcp,tcp6,udp,udp6}."""

    proto: str          # "tcp", "tcp6", "udp", "udp6"
    local: tuple[str, int]
    remote: tuple[str, int]
    state: str
    tx_queue: int
    rx_queue: int       # for LISTEN: the current accept-queue length
    uid: int
    inode: int


class UnixSocketRow(NamedTuple):
    """One row of /proc/net/unix."""

    inode: int
    type: str          # "stream", "dgram", "seqpacket"
    state: str         # "LISTEN", "CONNECTED", "UNCONNECTED", ...
    path: str | None   # None: unnamed (socketpair, or not bound); "@name": abstract
