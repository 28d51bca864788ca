"""The one door to /proc: its root (settable), whole-file reads, many small
reads at once (map_io), and the one translation of "the process is gone"
(check_gone: ProcessGone)."""

from __future__ import annotations

import os
from typing import Callable, Sequence, TypeVar

# The /proc every reader uses. set_root() points it elsewhere: tests read a
# captured tree (tests/data/proc), or a folder with no /proc at all.
ROOT = "/proc"
T = TypeVar("T")
R = TypeVar("R")


class ProcessGone(Exception):
    """The process does not exist (any more)."""

    def __init__(self, pid: int) -> None:
        super().__init__(f"no process with PID {pid}")
        self.pid = pid


class ProcUnavailable(OSError):
    """There is no /proc to read (not Linux, or not mounted)."""


def set_root(path: str) -> str:
    """Read /proc at `path` from now on; returns the previous root."""
    global ROOT
    previous, ROOT = ROOT, path
    return previous


# What reading a file of a process that has exited raises: ENOENT, or ESRCH
# for a directory opened before the exit and read after.
GONE_ERRORS = (FileNotFoundError, ProcessLookupError)


def check_gone(pid: int, err: OSError) -> None:
    """Raise ProcessGone(pid) if `err` (from reading /proc/<pid>/...) says
    the process has exited; return otherwise (the caller records `err`)."""
    if isinstance(err, GONE_ERRORS):
        raise ProcessGone(pid) from None


def read_bytes(path: str) -> bytes:
    """Read a whole (proc) file with os.open/os.read: no buffering layers."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8", "replace")


def has_procfs() -> bool:
    return os.path.exists(f"{ROOT}/self/stat")


def require_procfs(what: str) -> None:
    """Raise ProcUnavailable (one line, naming `what`) when there is no /proc."""
    if not has_procfs():
        raise ProcUnavailable(f"{what} needs Linux /proc ({ROOT}/self/stat not found)")


def read_small(path: str, size: int = 8192) -> bytes:
    """One open, one read, one close: enough for status, stat, limits
    (about 1.4 KB); a longer file is read to its end."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        raw = os.read(fd, size)
        if len(raw) < size:
            return raw
        chunks = [raw]
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------
# Many small reads at once

# Most of the cost of reading /proc is in the kernel (path lookup and
# formatting the file: ~10 us per status or stat file, ~5 us per fd
# readlink), and os.open/os.read/os.readlink release the GIL while it
# runs. With two CPUs, a second thread doing half of a long list of such
# calls overlaps that kernel time (~25% off 10,000 reads here); the
# Python-level work stays serial. Below PARALLEL_MIN items a thread costs
# more than it saves.
PARALLEL_MIN = 512


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def map_io(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """[fn(x) for x in items], in order, with the second half on another
    thread when the list is long and there is a second CPU. `fn` should
    turn expected errors into values; anything it raises is re-raised."""
    if len(items) < PARALLEL_MIN or cpu_count() < 2:
        return [fn(x) for x in items]
    import threading

    half = len(items) // 2
    tail: list = []
    failure: list[BaseException] = []

    def work() -> None:
        try:
            tail.extend([fn(x) for x in items[half:]])
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            failure.append(e)

    worker = threading.Thread(target=work, name="reaper-doctor-io", daemon=True)
    worker.start()
    try:
        head = [fn(x) for x in items[:half]]
    finally:
        worker.join()
    if failure:
        raise failure[0]
    return head + tail


def read_small_or_none(path: str) -> bytes | None:
    try:
        return read_small(path)
    except OSError:
        return None


def read_proc_files(pids: Sequence[int | str], name: str) -> list[bytes | None]:
    """/proc/<pid>/<name> of each of `pids` (None: gone), through map_io.
    Our own entry is read again once map_io's thread has ended: read
    during it, our status and stat would count that thread."""
    raws = map_io(read_small_or_none, [f"{ROOT}/{pid}/{name}" for pid in pids])
    me = os.getpid()
    for i, pid in enumerate(pids):
        if int(pid) == me:
            raws[i] = read_small_or_none(f"{ROOT}/{pid}/{name}")
    return raws


def read_int(path: str) -> int | None:
    try:
        return int(read_text(path).split()[0])
    except (OSError, ValueError, IndexError):
        return None
