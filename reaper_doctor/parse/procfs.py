"""Pure parsers: the text of /proc files in, plain values out.

Nothing here touches the file system, so every parser is unit-tested on
captured text. Field positions and meanings are from proc(5), checked on
a live kernel.
"""

from __future__ import annotations

import functools
import signal
from typing import Iterator, NamedTuple

from ..model.kernel import TCP_STATES, ExitStatus, SocketRow, UnixSocketRow
from .loadavg import parse_loadavg_last_pid  # noqa: F401  (re-exported)

SIGCHLD_BIT = 1 << (signal.SIGCHLD - 1)  # 0x10000: signal N is bit N-1

# /proc/<pid>/stat state letters -> the words psutil uses for them.
STATE_NAMES = {
    "R": "running", "S": "sleeping", "D": "disk-sleep", "T": "stopped",
    "t": "tracing-stop", "Z": "zombie", "X": "dead", "x": "dead", "K": "wake-kill",
    "W": "waking", "P": "parked", "I": "idle",
}


# include/linux/sched.h: the task is a kernel thread. It has no user memory,
# no descriptors of its own and no resource limits that mean anything.
PF_KTHREAD = 0x00200000


class StatLine(NamedTuple):
    """The fields of /proc/<pid>/stat that reaper-doctor uses."""

    pid: int
    comm: str
    state: str            # one letter: R S D Z T t X I ...
    ppid: int
    pgrp: int
    session: int
    threads: int
    start_ticks: int      # field 22: clock ticks after boot; with pid, a process's identity
    exit_code: int | None  # field 52: raw wait status of a zombie; None on old kernels
    flags: int = 0        # field 9: PF_* flags (PF_KTHREAD: a kernel thread)
    # Field 11, cminflt: page faults of the children it has waited for. Any
    # child faults (copy-on-write after fork, or exec), so > 0 means it has
    # forked and reaped at least one child. Shown to every reader.
    child_faults: int = 0
    cpu_ticks: int = 0    # fields 14 + 15, utime + stime: CPU time of all its threads


def parse_stat(raw: bytes) -> StatLine:
    """Parse /proc/<pid>/stat.

    The comm field may hold spaces and parentheses ("a) b (c"), so split
    after the *last* ')': a naive split silently returns wrong fields.
    """
    open_paren = raw.index(b"(")
    close_paren = raw.rindex(b")")
    rest = raw[close_paren + 2:].split()
    # rest[0] is field 3 (state); field N is rest[N - 3]. Positional
    # arguments: this runs once per process of a tree (10,000 zombies).
    return StatLine(
        int(raw[:open_paren]),                                   # pid
        raw[open_paren + 1:close_paren].decode("utf-8", "replace"),  # comm
        rest[0].decode(),                                        # state
        int(rest[1]), int(rest[2]), int(rest[3]),                # ppid, pgrp, session
        int(rest[17]),                                           # threads (field 20)
        int(rest[19]),                                           # start_ticks (field 22)
        int(rest[49]) if len(rest) >= 50 else None,              # exit_code (field 52)
        int(rest[6]),                                            # flags (field 9)
        int(rest[8]),                                            # cminflt (field 11)
        int(rest[11]) + int(rest[12]),                           # utime + stime
    )


def parse_file_nr(text: str) -> tuple[int, int, int]:
    """/proc/sys/fs/file-nr: (allocated, allocated but unused, fs.file-max)."""
    allocated, unused, maximum = (int(x) for x in text.split()[:3])
    return allocated, unused, maximum


# Cached: a scan decodes one status per zombie (10,000 in a big tree), and
# zombies mostly share a few statuses; ExitStatus is frozen, so sharing is safe.
@functools.lru_cache(maxsize=1024)
def decode_wait_status(raw: int | None, may_be_hidden: bool = False) -> ExitStatus:
    """Decode a raw wait status (stat field 52) the way waitpid() callers do.

    `may_be_hidden`: the reader could not ptrace-read the zombie, in which
    case the kernel prints 0 and 0 means "unknown", not "exit 0".
    """
    if raw is None or (raw == 0 and may_be_hidden):
        return ExitStatus(raw=raw, hidden=True)
    termsig = raw & 0x7F
    if termsig == 0:
        return ExitStatus(raw=raw, code=(raw >> 8) & 0xFF)
    return ExitStatus(raw=raw, signal=termsig, core=bool(raw & 0x80))


class StatusFields(NamedTuple):
    """What reaper-doctor reads from /proc/<pid>/status."""

    name: str | None = None
    state: str | None = None       # one letter
    ppid: int | None = None
    real_uid: int | None = None
    threads: int | None = None
    sig_blk: int | None = None     # per thread (this task's)
    sig_ign: int | None = None
    sig_cgt: int | None = None
    shd_pnd: int | None = None     # process-wide pending
    cap_eff: int | None = None

    @property
    def has_sig_masks(self) -> bool:
        return None not in (self.sig_blk, self.sig_ign, self.sig_cgt)


def parse_status(text: str) -> StatusFields:
    """Parse the lines of /proc/<pid>/status that matter here; absent lines give None."""
    fields: dict[str, object] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        value = value.strip()
        if key == "Name":
            fields["name"] = unescape_status_name(value)
        elif key == "State":
            fields["state"] = value[:1]
        elif key == "PPid":
            fields["ppid"] = int(value)
        elif key == "Uid":
            fields["real_uid"] = int(value.split()[0])
        elif key == "Threads":
            fields["threads"] = int(value)
        elif key in _MASK_KEYS:
            fields[_MASK_KEYS[key]] = int(value, 16)
    return StatusFields(**fields)  # type: ignore[arg-type]


_MASK_KEYS = {"SigBlk": "sig_blk", "SigIgn": "sig_ign", "SigCgt": "sig_cgt",
              "ShdPnd": "shd_pnd", "CapEff": "cap_eff"}


def unescape_status_name(value: str) -> str:
    # The kernel escapes '\n' and '\\' in the Name line (proc(5)).
    return value.replace("\\n", "\n").replace("\\\\", "\\")




def sigchld_disposition(process: StatusFields, *, any_thread_blocks: bool = False,
                        bit: int = SIGCHLD_BIT) -> str:
    """Classify SIGCHLD handling (or that of the signal whose mask bit is
    `bit`: 1 << (signum - 1)): "blocked", "ignored", "caught" or "default".

    Blocked wins: a blocked SIGCHLD is never delivered whatever the handler.
    SigBlk is per thread, so the caller says whether any task blocks it.
    SA_NOCLDWAIT with SIG_DFL does not show in /proc and reads as "default".
    """
    if any_thread_blocks or (process.sig_blk or 0) & bit:
        return "blocked"
    if (process.sig_ign or 0) & bit:
        return "ignored"
    if (process.sig_cgt or 0) & bit:
        return "caught"
    return "default"


def parse_limits(text: str) -> dict[str, tuple[int | None, int | None]]:
    """Parse /proc/<pid>/limits into {"Max open files": (soft, hard)}; None = unlimited."""
    limits: dict[str, tuple[int | None, int | None]] = {}
    for line in text.splitlines()[1:]:
        # "Max open files            1024                 4096                 files"
        # The name has single spaces; columns are separated by runs of spaces.
        parts = [p for p in line.split("  ") if p.strip()]
        if len(parts) < 3:
            continue
        name, soft, hard = parts[0].strip(), parts[1].strip(), parts[2].strip()
        limits[name] = (_limit_value(soft), _limit_value(hard))
    return limits


CENSUS_LIMITS = ("Max open files", "Max processes")
_CENSUS_LIMIT_KEYS = tuple((name, b"\n" + name.encode()) for name in CENSUS_LIMITS)


def parse_some_limits(raw: bytes, names: tuple[tuple[str, bytes], ...] = _CENSUS_LIMIT_KEYS
                      ) -> dict[str, tuple[int | None, int | None]]:
    """The soft and hard values of a few lines of /proc/<pid>/limits (by
    default ulimit -n and ulimit -u), found rather than parsed: the census
    reads the limits of every process on the machine."""
    limits: dict[str, tuple[int | None, int | None]] = {}
    for name, key in names:
        start = raw.find(key)
        if start < 0:
            continue
        start += len(key)
        end = raw.find(b"\n", start)
        fields = raw[start:end if end >= 0 else None].split()
        if len(fields) >= 2:
            soft, hard = fields[0], fields[1]
            limits[name] = (None if soft == b"unlimited" else int(soft),
                            None if hard == b"unlimited" else int(hard))
    return limits


def _limit_value(text: str) -> int | None:
    return None if text == "unlimited" else int(text)


class CgroupLine(NamedTuple):
    hierarchy: int
    controllers: tuple[str, ...]
    path: str


def parse_cgroup(text: str) -> list[CgroupLine]:
    """Parse /proc/<pid>/cgroup ("8:pids:/a/b", "0::/x" for v2)."""
    rows = []
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy.isdigit():
            rows.append(CgroupLine(int(hierarchy), tuple(c for c in controllers.split(",") if c), path))
    return rows


class Mount(NamedTuple):
    root: str          # the path inside the file system that is mounted
    mount_point: str
    fstype: str
    source: str
    super_options: str


def parse_mountinfo(text: str) -> list[Mount]:
    """Parse /proc/<pid>/mountinfo (proc(5)); octal escapes (\\040) are decoded."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        tail = right.split()
        if len(fields) < 5 or len(tail) < 2:
            continue
        mounts.append(Mount(root=_unoctal(fields[3]), mount_point=_unoctal(fields[4]),
                            fstype=tail[0], source=tail[1],
                            super_options=tail[2] if len(tail) > 2 else ""))
    return mounts


def _unoctal(path: str) -> str:
    if "\\" not in path:
        return path
    out, i = [], 0
    while i < len(path):
        if path[i] == "\\" and path[i + 1:i + 4].isdigit():
            out.append(chr(int(path[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(path[i])
            i += 1
    return "".join(out)


def parse_inet_table(text: str, proto: str) -> Iterator[SocketRow]:
    """Rows of /proc/net/tcp (or tcp6, udp, udp6). Inode 0 rows (TIME_WAIT,
    request socks) belong to no descriptor and are skipped."""
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 10:
            continue
        inode = int(parts[9])
        if inode == 0:
            continue
        tx, _, rx = parts[4].partition(":")
        state = int(parts[3], 16)
        yield SocketRow(proto, _address(parts[1]), _address(parts[2]),
                        TCP_STATES.get(state, "UDP" if proto.startswith("udp") else hex(state)),
                        int(tx, 16), int(rx, 16), int(parts[7]), inode)


# Connections in a listener's accept queue are established but own no
# file yet: inode 0. ESTABLISHED, or CLOSE_WAIT once the client gave up.
_QUEUED_STATES = {"01", "08"}


def parse_unaccepted(text: str) -> dict[int, set[tuple[str, int]]]:
    """Connections not yet accept()ed, from /proc/net/tcp (or tcp6): local
    port -> peers (host, port). Rows with inode 0 in ESTABLISHED or
    CLOSE_WAIT; TIME_WAIT and orphaned client sides are other states."""
    out: dict[int, set[tuple[str, int]]] = {}
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 10 or parts[9] != "0" or parts[3] not in _QUEUED_STATES:
            continue
        port = int(parts[1].rpartition(":")[2], 16)
        out.setdefault(port, set()).add(_address(parts[2]))
    return out


def _address(field: str) -> tuple[str, int]:
    host_hex, _, port_hex = field.partition(":")
    raw = bytes.fromhex(host_hex)
    # The kernel prints each 32-bit word in host byte order (little-endian here).
    swapped = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    if len(swapped) == 4:
        host = ".".join(str(b) for b in swapped)
    else:
        import ipaddress

        host = str(ipaddress.IPv6Address(swapped))
    return host, int(port_hex, 16)


def parse_unix_inodes(text: str) -> set[int]:
    """Inodes listed in /proc/net/unix."""
    inodes = set()
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 7 and parts[6].isdigit():
            inodes.add(int(parts[6]))
    return inodes


# anon_inode names -> the kind reaper-doctor reports (fs/anon_inodes.c users).
ANON_KINDS = {
    "[eventfd]": "eventfd", "[eventpoll]": "epoll", "[signalfd]": "signalfd",
    "[timerfd]": "timerfd", "[pidfd]": "pidfd", "inotify": "inotify",
    "[fanotify]": "fanotify", "[io_uring]": "io_uring", "[userfaultfd]": "userfaultfd",
    "[perf_event]": "perf_event", "bpf-map": "bpf", "bpf-prog": "bpf",
}


def fd_link_kind(link: str) -> tuple[str, int | None]:
    """Classify an fd's link text: ("socket", inode), ("pipe", inode),
    ("eventfd", None), ("path", None) for a file-system path, ...

    A path still needs stat() to tell a file from a directory or device;
    the caller does that.
    """
    if link.startswith("/"):
        return "path", None
    if link.startswith("socket:["):
        return "socket", int(link[8:-1])
    if link.startswith("pipe:["):
        return "pipe", int(link[6:-1])
    if link.startswith("anon_inode:"):
        name = link[len("anon_inode:"):]
        return ANON_KINDS.get(name, "anon_inode"), None
    if link.startswith("pidfd:"):
        return "pidfd", None
    return "other", None


# ----------------------------------------------------------------------------
# One descriptor in detail (the pytest plugin describes each leaked fd)


class FdInfo(NamedTuple):
    """/proc/<pid>/fdinfo/<fd>: file offset and open flags (proc(5))."""

    pos: int | None
    flags: int | None      # octal in the file: O_ACCMODE, O_APPEND, O_NONBLOCK, ...
    mnt_id: int | None


def parse_fdinfo(text: str) -> FdInfo:
    """Parse the first lines of an fdinfo file; the kind-specific lines
    (eventfd-count, tfd, inotify ...) are ignored."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep or key not in ("pos", "flags", "mnt_id"):
            continue
        try:
            values[key] = int(value.strip(), 8 if key == "flags" else 10)
        except ValueError:
            continue
    return FdInfo(values.get("pos"), values.get("flags"), values.get("mnt_id"))


# The f_flags bits fdinfo keeps (O_CREAT, O_EXCL, O_TRUNC and O_NOCTTY are
# cleared at open time, fs/open.c: do_dentry_open). Octal, as in fcntl.h.
_OPEN_FLAG_WORDS = ((0o2000, "append"), (0o4000, "nonblock"), (0o4010000, "sync"),
                    (0o40000, "direct"), (0o10000000, "path"), (0o2000000, "cloexec"))


def describe_open_flags(flags: int) -> str:
    """"r", "w" or "rw", then the flags worth knowing: "w, append, cloexec"."""
    access = {0: "r", 1: "w", 2: "rw"}.get(flags & 0o3, "?")
    words = [word for bit, word in _OPEN_FLAG_WORDS if flags & bit == bit]
    if "path" in words:
        access = "path-only"
        words.remove("path")
    return ", ".join([access, *words])


# /proc/net/unix Type and St columns (include/linux/net.h, include/uapi/linux/net.h).
UNIX_TYPES = {1: "stream", 2: "dgram", 5: "seqpacket"}
UNIX_STATES = {1: "UNCONNECTED", 2: "CONNECTING", 3: "CONNECTED", 4: "DISCONNECTING"}
_SO_ACCEPTCON = 0x10000  # the Flags column of a listening socket


def parse_unix_table(text: str) -> Iterator[UnixSocketRow]:
    """Rows of /proc/net/unix: "Num RefCount Protocol Flags Type St Inode Path"."""
    for line in text.splitlines()[1:]:
        parts = line.split(None, 7)
        if len(parts) < 7 or not parts[6].isdigit():
            continue
        flags, kind, state = int(parts[3], 16), int(parts[4], 16), int(parts[5], 16)
        state_name = "LISTEN" if flags & _SO_ACCEPTCON else UNIX_STATES.get(state, hex(state))
        path = parts[7].rstrip("\n") if len(parts) > 7 else None
        yield UnixSocketRow(int(parts[6]), UNIX_TYPES.get(kind, f"type {kind}"), state_name,
                            path or None)


def parse_children(text: str) -> list[int]:
    """/proc/<pid>/task/<tid>/children: space-separated PIDs (CONFIG_PROC_CHILDREN)."""
    return [int(p) for p in text.split()]
