"""What a test suite keeps across tests on purpose (reaper_doctor.adopt):
the pytest plugin never reports these descriptors and processes.

Kept here, below every layer that may read it, so that the package's root
can offer `reaper_doctor.adopt` without importing pytest."""

from __future__ import annotations

import os
from typing import TypeVar

T = TypeVar("T")

ADOPTED_FDS: set[tuple[int, tuple[int, int]]] = set()   # (fd, (st_dev, st_ino))
ADOPTED_PIDS: set[int] = set()


def adopt(obj: T) -> T:
    """Declare `obj` long-lived on purpose (a cache, a session server): its
    descriptors and process are never reported. Takes a file or socket (or
    anything with fileno()), a descriptor number, a Popen or
    multiprocessing.Process (its PID and its pipes). Returns `obj`."""
    fds: list[int] = []
    if isinstance(obj, int):
        fds.append(obj)
    elif isinstance(getattr(obj, "pid", None), int):
        ADOPTED_PIDS.add(obj.pid)  # type: ignore[attr-defined]
        for stream in (getattr(obj, n, None) for n in ("stdin", "stdout", "stderr", "sentinel")):
            if isinstance(stream, int):
                fds.append(stream)
            elif stream is not None and hasattr(stream, "fileno"):
                try:
                    fds.append(stream.fileno())
                except (ValueError, OSError):
                    continue
    elif hasattr(obj, "fileno"):
        fds.append(obj.fileno())
    else:
        raise TypeError(f"reaper_doctor.adopt: cannot tell what {type(obj).__name__} holds")
    for fd in fds:
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        ADOPTED_FDS.add((fd, (st.st_dev, st.st_ino)))
    return obj
