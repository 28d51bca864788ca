"""PID namespaces and containers, from the text of /proc files.

Pure: /proc/<pid>/cgroup text in, the container out; the NSpid line of
/proc/<pid>/status in, the PIDs of each namespace out. Unit-tested on
captured text.

A container is not a kernel object: runtimes put each container's
processes in a cgroup whose name carries the container's id, and each
runtime spells it its own way (cgroup v1 has one line per hierarchy,
v2 one `0::` line). Only the layouts listed in `_PATTERNS` are
recognised; anything else gives no container rather than a guess.
"""

from __future__ import annotations

import re
import signal

from ..model import Container

# The initial (host) PID namespace has a fixed inode number
# (PROC_PID_INIT_INO, include/linux/proc_ns.h): readlink /proc/1/ns/pid
# prints pid:[4026531836] on the host.
HOST_PID_NS_INODE = 0xEFFFFFFC

# Inits that reap adopted orphans and pass signals on (by command name).
# `podman run --init` runs catatonit as podman-init; `docker run --init`
# runs tini as docker-init.
KNOWN_INITS = frozenset({
    "tini", "tini-static", "docker-init", "podman-init", "dumb-init", "catatonit",
    "s6-svscan", "runit", "runsvdir", "systemd", "init", "supervisord",
})

SIGTERM_BIT = 1 << (signal.SIGTERM - 1)


_HEX64 = re.compile(r"[0-9a-f]{64}")
_POD = re.compile(r"(?:^|[-_])pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}"
                  r"[-_][0-9a-f]{12})(?:\.slice)?$")

# One cgroup path component each; the first group is the id. The id must
# follow the prefix directly, so the runtimes' monitor processes
# (libpod-conmon-<id>.scope, crio-conmon-<id>.scope, lxc.monitor.<name>),
# which run outside the container, are not taken for it.
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("docker", re.compile(r"docker-([0-9a-f]{64})\.scope")),          # systemd driver
    ("podman", re.compile(r"libpod-([0-9a-f]{64})(?:\.scope)?")),
    ("containerd", re.compile(r"cri-containerd-([0-9a-f]{64})(?:\.scope)?")),
    ("cri-o", re.compile(r"crio-([0-9a-f]{64})(?:\.scope)?")),
    ("systemd-nspawn", re.compile(r"systemd-nspawn@(.+)\.service")),
    ("lxc", re.compile(r"lxc\.payload\.(.+)")),                      # LXC 4+, LXD
)
# `machine-<name>.scope` is also how libvirt registers its VMs and LXC
# guests (machine-qemu\x2d1\x2dvm.scope): those are not nspawn containers.
_MACHINE = re.compile(r"machine-(.+)\.scope")
_NOT_NSPAWN = ("qemu", "lxc", "rkt", "libvirt")


def container_from_cgroup(text: str) -> Container | None:
    """The container named by /proc/<pid>/cgroup, or None.

    The v2 line (`0::/path`) is tried first, then the v1 lines in order:
    on a hybrid host the v2 line may be `/` while the v1 hierarchies carry
    the container's path. Nested containers (docker in docker) give the
    innermost one, the last id on the path.
    """
    lines = text.splitlines()
    v2 = [line for line in lines if line.startswith("0::")]
    for line in (*v2, *(line for line in lines if not line.startswith("0::"))):
        _, _, rest = line.partition(":")
        _, sep, path = rest.partition(":")
        if sep and path not in ("", "/"):
            found = container_from_path(path)
            if found is not None:
                return found
    return None


def container_from_path(path: str) -> Container | None:
    """The container named by one cgroup path ("/docker/<id>",
    "/kubepods.slice/.../cri-containerd-<id>.scope", ...), or None."""
    parts = [p for p in path.split("/") if p]
    pod = None
    found: Container | None = None
    for i, part in enumerate(parts):
        match = _POD.search(part)
        if match and ("kubepods" in part or "kubepods" in parts[:i]):
            pod = match.group(1).replace("_", "-")
            found = Container("kubernetes", pod, pod)
            continue
        here = _component(part, parts[i - 1] if i else None, pod)
        if here is not None:
            found = here
    return found


def _component(part: str, before: str | None, pod: str | None) -> Container | None:
    for runtime, pattern in _PATTERNS:
        match = pattern.fullmatch(part)
        if match:
            return Container(runtime, _unescape_unit(match.group(1)), pod)
    if _HEX64.fullmatch(part):
        if before == "docker":           # cgroupfs driver: /docker/<id>
            return Container("docker", part, pod)
        if pod is not None:              # cgroupfs kubelet: /kubepods/<qos>/pod<uid>/<id>
            return Container("kubernetes", part, pod)
        return None
    if before == "lxc" and not part.startswith("lxc."):   # older LXC: /lxc/<name>
        return Container("lxc", part, pod)
    match = _MACHINE.fullmatch(part)
    if match:
        name = _unescape_unit(match.group(1))
        if not name.startswith(_NOT_NSPAWN):
            return Container("systemd-nspawn", name, pod)
    return None


def _unescape_unit(name: str) -> str:
    r"""systemd escapes unit names: "-" as \x2d (systemd-escape(1))."""
    if "\\x" not in name:
        return name
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), name)


def parse_nspid(value: str | bytes) -> tuple[int, ...]:
    """The NSpid line's value ("4711\\t1"): the process's PID in each PID
    namespace it is in, from the namespace of the /proc that was read down
    to its own. More than one field: the process is in a namespace below
    the reader's; the last field is its PID there. Empty if unreadable."""
    try:
        return tuple(int(x) for x in value.split())
    except ValueError:
        return ()


def parse_ns_inode(link: str) -> int | None:
    """The inode of a namespace link's text ("pid:[4026531836]"), or None."""
    _, sep, rest = link.partition(":[")
    if not sep or not rest.endswith("]") or not rest[:-1].isdigit():
        return None
    return int(rest[:-1])


def sigterm_disposition(sig_blk: int | None, sig_ign: int | None, sig_cgt: int | None,
                        *, waits_for_signals: bool = False) -> str | None:
    """How a process takes SIGTERM: "caught" (a handler), "blocked" (taken
    synchronously: signalfd, sigwait), "waited" (it sleeps in sigtimedwait:
    the waited-for signals leave the SigBlk mask for the length of the
    wait, which is how tini and dumb-init show most of the time),
    "ignored" or "default"; None if the masks were not read.

    For PID 1 of a namespace, "default" and "ignored" both mean the kernel
    drops a SIGTERM sent from outside: `docker stop` waits, then kills.
    """
    if sig_blk is None or sig_ign is None or sig_cgt is None:
        return None
    if sig_cgt & SIGTERM_BIT:
        return "caught"
    if sig_blk & SIGTERM_BIT:
        return "blocked"
    if waits_for_signals:
        return "waited"
    if sig_ign & SIGTERM_BIT:
        return "ignored"
    return "default"


def waits_for_signals(wchan: str) -> bool:
    """Whether /proc/<pid>/wchan says the task sleeps in sigtimedwait
    (sigwait, sigwaitinfo and sigtimedwait all end there)."""
    return wchan.startswith("do_sigtimedwait")


def is_known_init(name: str | None) -> bool:
    return name in KNOWN_INITS
