"""Records only: what a sample saw, what the rules found, what a command
reports. No I/O, no clock, no logic beyond a derived field; every other
layer may import these, and these import no other layer.

The records of a scan (process, descriptors, limits, snapshot, report,
watch) are re-exported here; those of one command (trace, lesson,
scenario, load) are imported from their own module.
"""

from .fds import FdDetail, FdTable, SocketFd
from .limits import LimitUsage, NprocUsage, PidsCgroup
from .process import Container, ProcessInfo, Unreadable, describe_place
from .report import (
    ContainerRow,
    Coverage,
    Finding,
    ListenerQueue,
    MachineCensus,
    NofileUsage,
    Report,
    Severity,
    SocketHolder,
    TargetReport,
    UidTasks,
    ZombieParent,
)
from .snapshot import FdCounts, HolderLook, Snapshot
from .watch import WATCH_SERIES, WatchLimits, WatchReport, WatchSample

__all__ = [
    "Container", "ContainerRow", "Coverage", "describe_place", "FdCounts", "FdDetail", "FdTable",
    "Finding", "HolderLook", "LimitUsage", "ListenerQueue", "MachineCensus",
    "NofileUsage", "NprocUsage", "PidsCgroup", "ProcessInfo", "Report", "Severity", "Snapshot",
    "SocketFd", "SocketHolder", "TargetReport", "UidTasks", "Unreadable", "WATCH_SERIES",
    "WatchLimits", "WatchReport", "WatchSample", "ZombieParent",
]
