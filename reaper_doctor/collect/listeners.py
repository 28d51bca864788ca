"""The TCP listening sockets of a set of processes: each process's fd
links matched against its network namespace's socket table, through the
same descriptor reader as `scan` (fds.read_fds)."""

from __future__ import annotations

from collections.abc import Iterable

from ..model.scenario import Listener
from .fds import read_fds
from .proc import ProcessGone
from .process import _new_context


def listening_sockets(pids: Iterable[int]) -> list[Listener]:
    """The TCP listening sockets held by each of `pids` (processes that have
    exited meanwhile, or whose descriptors cannot be read, are skipped)."""
    ctx = _new_context()  # one socket table per network namespace, shared
    found: list[Listener] = []
    for pid in pids:
        try:
            table = read_fds(pid, ctx)
        except ProcessGone:
            continue
        if table is None:
            continue
        found += [Listener(pid, s.local[0], s.local[1], s.proto)
                  for s in table.listeners if s.proto in ("tcp", "tcp6")]
    return found
