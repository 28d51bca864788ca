"""/proc/loadavg's PID counter, on its own: the pytest plugin reads it
without importing the records the rest of procfs parses into."""

from __future__ import annotations


def parse_loadavg_last_pid(text: str) -> int | None:
    """The last field of /proc/loadavg: the PID most recently allocated in
    the reader's PID namespace ("0.20 0.18 0.12 1/80 11206")."""
    parts = text.split()
    return int(parts[4]) if len(parts) >= 5 and parts[4].isdigit() else None
