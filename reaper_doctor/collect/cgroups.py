"""pids cgroups (v1 or v2): the one a process is in, and every one with a limit."""

from __future__ import annotations

import math
import os
from typing import (
    TYPE_CHECKING,
)

from ..model import PidsCgroup
from ..parse import procfs
from . import proc
from .proc import read_text

if TYPE_CHECKING:
    from .process import SampleContext

def read_cgroup_int(path: str) -> int | None:
    try:
        text = read_text(path).strip()
    except OSError:
        return None
    return None if text == "max" or not text.lstrip("-").isdigit() else int(text)


def pids_mount(mounts: list[procfs.Mount]) -> procfs.Mount | None:
    """The mount of the pids hierarchy: cgroup v1's pids controller, else a
    cgroup v2 mount that has the pids controller."""
    for m in mounts:
        if m.fstype == "cgroup" and "pids" in m.super_options.split(","):
            return m
    for m in mounts:
        if m.fstype == "cgroup2" and _v2_has_pids(m.mount_point):
            return m
    return None


def _fullness(cg: PidsCgroup) -> float:
    """current / max; a pids.max of 0 refuses every fork: full."""
    if cg.max is None:
        return 0.0
    return (cg.current or 0) / cg.max if cg.max > 0 else math.inf


def pids_cgroup(pid: int, ctx: SampleContext) -> PidsCgroup | None:
    """The pids cgroup (v1 or v2) of `pid`, walking up to the mount root:
    the ancestor nearest its limit wins, as a limit anywhere above applies.
    A missing pids.max (the root cgroup) means no limit."""
    try:
        lines = procfs.parse_cgroup(read_text(f"{proc.ROOT}/{pid}/cgroup"))
        mounts = procfs.parse_mountinfo(read_text(f"{proc.ROOT}/self/mountinfo"))
    except OSError as e:
        ctx.note(pid, "pids cgroup", e)
        return None
    directory = None
    mount = pids_mount(mounts)
    if mount is not None:
        v1 = mount.fstype == "cgroup"
        for line in lines:
            if ("pids" in line.controllers) if v1 else line.hierarchy == 0:
                directory = _join_cgroup(mount, line.path)
                break
    if directory is None:
        return PidsCgroup(path=None, current=None, max=None)
    best: PidsCgroup | None = None
    walk, mount_root = directory, directory
    while True:
        limit = read_cgroup_int(f"{walk}/pids.max")
        current = read_cgroup_int(f"{walk}/pids.current")
        if limit is not None and current is not None:
            candidate = PidsCgroup(path=walk, current=current, max=limit,
                                   refusals=_pids_refusals(walk))
            if best is None or _fullness(candidate) > _fullness(best):
                best = candidate
        if not os.path.exists(f"{walk}/pids.max") and walk != directory:
            break  # reached the root of the hierarchy
        parent = os.path.dirname(walk)
        if parent == walk or not os.path.exists(f"{parent}/cgroup.procs"):
            break
        walk = parent
    if best is None:
        current = read_cgroup_int(f"{mount_root}/pids.current")
        return PidsCgroup(path=mount_root, current=current, max=None)
    return best


def _join_cgroup(mount: procfs.Mount, cgroup_path: str) -> str:
    rel = cgroup_path
    if mount.root != "/" and rel.startswith(mount.root):
        rel = rel[len(mount.root):]
    return os.path.normpath(mount.mount_point + "/" + rel.lstrip("/"))


def _v2_has_pids(mount_point: str) -> bool:
    try:
        return "pids" in read_text(f"{mount_point}/cgroup.controllers").split()
    except OSError:
        return False


def _pids_refusals(directory: str) -> int | None:
    try:
        for line in read_text(f"{directory}/pids.events").splitlines():
            key, _, value = line.partition(" ")
            if key == "max":
                return int(value)
    except (OSError, ValueError):
        pass
    return None


def pids_cgroups_with_limits() -> list[PidsCgroup]:
    """Every cgroup of the pids hierarchy (v1, or v2 with the pids controller)
    that has a numeric pids.max, with its pids.current."""
    try:
        mounts = procfs.parse_mountinfo(read_text(f"{proc.ROOT}/self/mountinfo"))
    except OSError:
        return []
    mount = pids_mount(mounts)
    found: list[PidsCgroup] = []
    if mount is None:
        return found
    for dirpath, _dirs, files in os.walk(mount.mount_point):
        if "pids.max" not in files:
            continue
        limit = read_cgroup_int(f"{dirpath}/pids.max")
        current = read_cgroup_int(f"{dirpath}/pids.current")
        if limit is not None and current is not None:
            found.append(PidsCgroup(path=dirpath, current=current, max=limit,
                                    refusals=_pids_refusals(dirpath)))
    return found


def cgroup_member(path: str) -> int | None:
    """A process in the cgroup at `path` or below it (the lowest PID found first)."""
    for dirpath, _dirs, _files in os.walk(path):
        try:
            pids = [int(x) for x in read_text(f"{dirpath}/cgroup.procs").split()]
        except (OSError, ValueError):
            continue
        if pids:
            return min(pids)
    return None
