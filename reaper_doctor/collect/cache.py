"""What a process that takes censuses one after another (the exporter)
keeps of each process on the machine from one census to the next."""

from __future__ import annotations

from typing import Any, Iterable, Mapping


class ProcessCache:
    """What stays true of a process from one census to the next: each
    zombie as read (again once re-parented), and each live process's real
    UID, PID namespaces, limits, cgroup and network namespace.
    Entries are keyed by PID and the inode of /proc/PID, which a new
    process, or a reused PID, does not share; an entry is read again after
    REFRESH censuses at most (spread by PID), since setuid(2), prlimit(2),
    setns(2) and a cgroup move change a live process's, except where the
    reader says the value is fixed for the process's life (refresh=False);
    PIDs that are gone are dropped."""

    REFRESH = 6

    def __init__(self) -> None:
        self.census = 0
        self.stores: dict[str, dict[int, tuple[int, int, Any]]] = {}
        self._pids: set[int] = set()     # every PID with an entry in some store

    def get(self, store: str, pid: int, ino: int | None, *, refresh: bool = True) -> Any:
        """The kept value, or None when there is none still good."""
        entry = self.stores.get(store, {}).get(pid)
        if entry is None or ino is None or entry[0] != ino:
            return None
        if refresh and self.census - entry[1] >= self.REFRESH + pid % self.REFRESH:
            return None
        return entry[2]

    def get_many(self, store: str, keys: Iterable[tuple[int, int | None]], *,
                 refresh: bool = True) -> dict[int, Any]:
        """{pid: kept value} of the (pid, inode) `keys` that have one still
        good: get() for a whole table in one loop."""
        entries = self.stores.get(store)
        if not entries:
            return {}
        census, every = self.census, self.REFRESH
        found = {}
        for pid, ino in keys:
            entry = entries.get(pid)
            if (entry is not None and ino is not None and entry[0] == ino
                    and (not refresh or census - entry[1] < every + pid % every)):
                found[pid] = entry[2]
        return found

    def put(self, store: str, pid: int, ino: int | None, value: Any) -> None:
        if ino is not None:
            self.stores.setdefault(store, {})[pid] = (ino, self.census, value)
            self._pids.add(pid)

    def next_census(self, table: Mapping[int, object]) -> None:
        """Start a census over `table`: forget the PIDs it does not hold."""
        self.census += 1
        gone = self._pids.difference(table)
        if gone:
            self._pids -= gone
            for store in self.stores.values():
                for pid in gone:
                    store.pop(pid, None)
