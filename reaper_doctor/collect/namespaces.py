"""PID namespaces and containers of processes: the NSpid line of
/proc/PID/status, the /proc/PID/ns/pid link, /proc/PID/cgroup and, for a
namespace's PID 1, /proc/PID/wchan."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, NamedTuple

from ..model import Container, ProcessInfo
from ..parse import containers, procfs
from . import proc
from .proc import read_proc_files, read_small, read_text
from .tasks import status_field

if TYPE_CHECKING:
    from .cache import ProcessCache
    from .process import SampleContext
    from .tasks import TaskBrief


class NamespaceView(NamedTuple):
    """Where the reader stands: its own PID namespace, and whether the /proc
    it reads belongs to the host's PID namespace."""

    own_pid_ns: int | None      # inode of our PID namespace; None: unreadable
    proc_is_host: bool          # False: /proc is a container's, and its PID 1 the container's init


def namespace_view() -> NamespaceView:
    """Our NSpid has one field when the /proc we read is our own namespace's
    (proc(5)); that namespace is the host's when its inode is the initial
    one. /proc/1/ns/pid itself may be unreadable, even to root."""
    own = _pid_ns("self")
    try:
        nspid = containers.parse_nspid(
            status_field(read_small(f"{proc.ROOT}/self/status"), b"\nNSpid:") or b"")
    except OSError:
        nspid = ()
    in_own_proc = len(nspid) == 1
    return NamespaceView(own_pid_ns=own, proc_is_host=not (
        in_own_proc and own is not None and own != containers.HOST_PID_NS_INODE))


def _pid_ns(pid: int | str) -> int | None:
    try:
        return containers.parse_ns_inode(os.readlink(f"{proc.ROOT}/{pid}/ns/pid"))
    except OSError:
        return None


_NO_NAMESPACE = (None, None, False, None, None)


def namespace_fields(pid: int, ctx: SampleContext) -> tuple[int | None, int | None, bool,
                                                  Container | None, str | None]:
    """(pid_ns, ns_pid, is_ns_init, container, sigterm) of a live process:
    its status (read once per sample), a readlink and its cgroup file."""
    raw = ctx.statuses.get(pid)
    try:
        if raw is None:
            raw = ctx.statuses[pid] = read_small(f"{proc.ROOT}/{pid}/status")
    except OSError as e:
        ctx.note(pid, "namespace", e)
        return _NO_NAMESPACE
    nspid = containers.parse_nspid(status_field(raw, b"\nNSpid:") or b"")
    ns_pid = nspid[-1] if nspid else None
    if ctx.namespace_view is None:
        ctx.namespace_view = namespace_view()
    is_init = ns_pid == 1 and (len(nspid) > 1 or not ctx.namespace_view.proc_is_host)
    sigterm = _sigterm(pid, raw) if is_init else None
    return _pid_ns(pid), ns_pid, is_init, _container(pid, ctx), sigterm


def zombie_namespace_fields(pid: int, parent: ProcessInfo | None) -> tuple[
        int | None, int | None, bool, Container | None, str | None]:
    """A zombie's namespace and container are its parent's; its own PID
    there is read only when the parent is in a namespace below ours (a
    host scan of 10,000 zombies reads no more)."""
    if parent is None:
        return _NO_NAMESPACE
    ns_pid = None
    if parent.ns_pid is not None and parent.ns_pid != parent.pid:
        try:
            nspid = containers.parse_nspid(
                status_field(read_small(f"{proc.ROOT}/{pid}/status"), b"\nNSpid:") or b"")
            ns_pid = nspid[-1] if nspid else None
        except OSError:
            pass
    return parent.pid_ns, ns_pid, False, parent.container, None


def _container(pid: int, ctx: SampleContext) -> Container | None:
    try:
        raw = read_small(f"{proc.ROOT}/{pid}/cgroup")
    except OSError:
        return None
    known = ctx.container_of_cgroup
    if raw not in known:
        known[raw] = containers.container_from_cgroup(raw.decode("utf-8", "replace"))
    return known[raw]


# Looks at a PID 1 whose masks say "default" or "ignored" before believing
# them, a pause apart (see _sigterm): at most ~80 ms, only for such a PID 1.
SIGTERM_LOOKS = 5
SIGTERM_LOOK_PAUSE_S = 0.02


def _sigterm(pid: int, status_raw: bytes) -> str | None:
    """SIGTERM disposition of a namespace's PID 1, from its status masks
    and, when neither caught nor blocked, its wchan: an init waiting in
    sigtimedwait shows the waited signals out of SigBlk meanwhile.

    The masks and the wchan are two reads: an init that wakes between them
    (tini does every second, and on a busy CPU it waits to run with the
    wait's mask still in place) looks like one with no handler. "default"
    and "ignored" are believed only when every look, a pause apart, agrees."""
    found: str | None = None
    for look in range(SIGTERM_LOOKS):
        if look:
            time.sleep(SIGTERM_LOOK_PAUSE_S)
            try:
                status_raw = read_small(f"{proc.ROOT}/{pid}/status")
            except OSError:
                return found
        status = procfs.parse_status(status_raw.decode("utf-8", "replace"))
        found = containers.sigterm_disposition(status.sig_blk, status.sig_ign, status.sig_cgt)
        if found not in ("default", "ignored"):
            return found
        try:
            wchan = read_text(f"{proc.ROOT}/{pid}/wchan")
        except OSError:
            return found
        waited = containers.sigterm_disposition(
            status.sig_blk, status.sig_ign, status.sig_cgt,
            waits_for_signals=containers.waits_for_signals(wchan))
        if waited == "waited":
            return waited
    return found


class MachineNamespaces(NamedTuple):
    """PID namespaces and containers on the machine, as the census reads them."""

    view: NamespaceView
    inits: dict[int, int | None]     # host PID of each namespace's PID 1 -> its namespace
    members: dict[int, int]          # PID -> namespace, for processes in a namespace below ours
    containers: dict[int, Container]  # live PID -> its container, where known


def machine_namespaces(table: dict[int, TaskBrief],
                       cache: ProcessCache | None = None) -> MachineNamespaces:
    """Namespaces from the NSpid lines already read (a readlink only for the
    processes below our namespace); containers from every live process's
    cgroup file, each distinct text parsed once. With `cache`, a process's
    PID namespace is read once (it is fixed for its life) and its cgroup
    file every few censuses."""
    view = namespace_view()
    inits: dict[int, int | None] = {}
    members: dict[int, int] = {}

    def pid_ns(pid: int) -> int | None:
        if cache is None:
            return _pid_ns(pid)
        ino = table[pid].ino
        kept = cache.get("pid_ns", pid, ino, refresh=False)
        if kept is None:
            kept = (_pid_ns(pid),)
            cache.put("pid_ns", pid, ino, kept)
        return kept[0]

    for pid, brief in table.items():
        nspid = brief.nspid
        if len(nspid) > 1:
            inode = pid_ns(pid)
            if inode is not None:
                members[pid] = inode
        if nspid and nspid[-1] == 1 and (len(nspid) > 1 or not view.proc_is_host):
            inits[pid] = members.get(pid) or pid_ns(pid)
    live = [pid for pid, brief in table.items() if brief.state != "Z"]
    kept = cache.get_many("container", ((pid, table[pid].ino) for pid in live)) if cache else {}
    found = {pid: c[0] for pid, c in kept.items() if c[0] is not None}
    todo = [pid for pid in live if pid not in kept]
    parsed: dict[bytes, Container | None] = {}
    for pid, raw in zip(todo, read_proc_files(todo, "cgroup")):
        if raw is None:
            continue
        if raw not in parsed:
            parsed[raw] = containers.container_from_cgroup(raw.decode("utf-8", "replace"))
        container = parsed[raw]
        if container is not None:
            found[pid] = container
        if cache is not None:
            cache.put("container", pid, table[pid].ino, (container,))
    return MachineNamespaces(view, inits, members, found)
