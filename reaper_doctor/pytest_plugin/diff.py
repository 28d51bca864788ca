"""The before/after comparison of one test: pure, on samples already read."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, NamedTuple

if TYPE_CHECKING:
    from ..parse.procfs import StatLine

CHECKS = ("children", "zombies", "fds")
FdKey = tuple[int, int]          # (st_dev, st_ino): what a descriptor is open on
ChildKey = tuple[int, int]       # (pid, start time in clock ticks): a process, PID reuse aside
# Resource keys: ("fd", fd, FdKey) or ("child", pid, start_ticks).
Key = tuple[str, int, Any]


class Sample(NamedTuple):
    """The test process at one moment: its descriptors and direct children."""

    fd_count: int | None                  # None: the kernel does not tell (keys is complete)
    fds: Mapping[int, FdKey]              # fd -> key, as of the last full read
    children: Mapping[int, StatLine]      # pid -> stat line (state, start time)
    last_pid: int | None = None           # PID counter when the children were read


class Leaks:
    """What one test left behind (a plain class: one is made per sample)."""

    __slots__ = ("fds", "children", "zombies", "exited")

    def __init__(self) -> None:
        self.fds: dict[int, FdKey] = {}
        self.children: list[StatLine] = []   # still running
        self.zombies: list[StatLine] = []
        self.exited: list[StatLine] = []     # of earlier tests, exited now

    def __repr__(self) -> str:
        return (f"Leaks(fds={self.fds}, children={self.children}, zombies={self.zombies}, "
                f"exited={self.exited})")

    def __bool__(self) -> bool:
        return bool(self.fds or self.children or self.zombies)


def fd_keys(sample: Sample) -> set[Key]:
    return {("fd", fd, key) for fd, key in sample.fds.items()}


def child_keys(sample: Sample) -> set[Key]:
    return {("child", st.pid, st.start_ticks) for st in sample.children.values()}


def diff(before: Sample, after: Sample, checks: frozenset[str], *, owned: set[Key],
         released: frozenset[Key] | set[Key], adopted_fds: set[tuple[int, FdKey]],
         adopted_pids: set[int]) -> Leaks:
    """What `after` holds that `before` did not, or that a fixture released
    during the test should have taken with it.

    A child counts only if the test started it: one that was running before
    and exits now is an earlier test's (or a fixture's), listed in `exited`.
    Owned keys (a broader fixture's) and adopted ones never count."""
    found = Leaks()
    # The same mapping: the count has not changed, nothing was read again.
    if "fds" in checks and (after.fds is not before.fds or released):
        for fd, key in after.fds.items():
            k: Key = ("fd", fd, key)
            if k in owned or (fd, key) in adopted_fds:
                continue
            if before.fds.get(fd) != key or k in released:
                found.fds[fd] = key
    old = {(st.pid, st.start_ticks): st for st in before.children.values()}
    for st in after.children.values():
        k = ("child", st.pid, st.start_ticks)
        if k in owned or st.pid in adopted_pids:
            continue
        was = old.get((st.pid, st.start_ticks))
        if was is not None and k not in released:
            if st.state == "Z" and was.state != "Z":
                found.exited.append(st)
            continue
        if st.state == "Z":
            if "zombies" in checks:
                found.zombies.append(st)
        elif "children" in checks:
            found.children.append(st)
    return found
