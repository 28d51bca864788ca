"""What a PID given on the command line stands for.

- A thread ID names its process: /proc/<tid> exists (hidden from the
  listing) for every thread, and reads as if it were a process of its own.
- A zombie has exited: it has no descriptors and takes no signal. Only
  its parent can reap it, so `watch` and `trace` look at the parent
  (`scan` diagnoses a zombie in place: its finding is about the parent).
- Several PIDs: each process is reported once. A PID given twice, or one
  inside the tree of another PID given, is left to that tree.

Each change of target comes with a note for the user, one line.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

from ..parse import procfs
from . import proc
from .proc import read_bytes
from .tasks import exit_status_hidden, read_stat


class Resolved(NamedTuple):
    """The PIDs to act on, and one note per PID that was replaced or dropped."""

    pids: list[int]
    notes: list[str]


def _status_fields(pid: int) -> dict[str, str]:
    try:
        text = read_bytes(f"{proc.ROOT}/{pid}/status").decode("utf-8", "replace")
    except OSError:
        return {}
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key] = value.strip()
    return fields


def _name(pid: int) -> str:
    st = read_stat(pid)
    return st.comm if st is not None else "?"


def as_process(pid: int) -> tuple[int, str | None]:
    """`pid`, or the process whose thread it names, with a note saying so."""
    tgid = _status_fields(pid).get("Tgid", "")
    if tgid.isdigit() and int(tgid) != pid:
        process = int(tgid)
        return process, (f"{pid} is a thread of PID {process} ({_name(process)}): "
                         f"taking PID {process}")
    return pid, None


def _ancestors(pid: int, limit: int = 4096) -> list[int]:
    """The parent, grandparent, ... of `pid`, up to PID 1 or a process with
    no parent (kernel threads hang from PID 2, whose parent is 0)."""
    chain: list[int] = []
    st = read_stat(pid)
    while st is not None and st.ppid > 0 and len(chain) < limit:
        chain.append(st.ppid)
        st = read_stat(st.ppid)
    return chain


def scan_targets(pids: Sequence[int]) -> Resolved:
    """The processes `scan` reports on, each once: threads replaced by their
    process, repeats dropped, and a PID inside the tree of another PID given
    left to that tree (its descendants are scanned and judged with it)."""
    notes: list[str] = []
    wanted: list[int] = []
    for pid in pids:
        process, note = as_process(pid)
        if note:
            notes.append(note)
        if process not in wanted:
            wanted.append(process)
    if len(wanted) < 2:
        return Resolved(wanted, notes)
    chosen = set(wanted)
    kept = []
    for pid in wanted:
        holder = next((a for a in _ancestors(pid) if a in chosen), None)
        if holder is None:
            kept.append(pid)
        else:
            notes.append(f"PID {pid} is in the tree of PID {holder}: reported there, once")
    return Resolved(kept, notes)


def live_target(pid: int, verb: str) -> tuple[int, list[str]]:
    """The process `watch` or `trace` (`verb`: "watching", "tracing") should
    follow for `pid`: its process if it is a thread, its parent if it is a
    zombie. Returns the PID and the notes saying what was done."""
    process, note = as_process(pid)
    notes = [note] if note else []
    st = read_stat(process)
    if st is None or st.state != "Z" or st.ppid <= 0:
        return process, notes
    hidden = st.exit_code == 0 and exit_status_hidden(process)
    status = procfs.decode_wait_status(st.exit_code, hidden).describe()
    notes.append(f"PID {process} is a zombie ({status}) of PID {st.ppid} "
                 f"({_name(st.ppid)}): it has exited, and only its parent can reap it; "
                 f"{verb} PID {st.ppid}")
    return st.ppid, notes
