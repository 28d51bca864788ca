"""Limits and their usage: RLIMIT_NOFILE, RLIMIT_NPROC, the pids cgroup."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


@dataclass(frozen=True)
class LimitUsage:
    """Usage against a soft/hard resource limit; None means unlimited or unknown."""

    used: int | None
    soft: int | None
    hard: int | None

    @property
    def ratio(self) -> float | None:
        if self.used is None or not self.soft:
            return None
        return self.used / self.soft


@dataclass(frozen=True)
class NprocUsage(LimitUsage):
    """Tasks of a real UID against RLIMIT_NPROC. Not enforced for UID 0 (or
    with CAP_SYS_RESOURCE / CAP_SYS_ADMIN): kernel/fork.c."""

    uid: int | None = None
    enforced: bool = True


class PidsCgroup(NamedTuple):
    """The pids cgroup nearest its limit among the target's cgroup and its ancestors."""

    path: str | None
    current: int | None
    max: int | None             # None: no limit
    refusals: int | None = None  # pids.events "max N": forks refused
