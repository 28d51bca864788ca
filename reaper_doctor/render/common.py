"""Shapes both renderers need: the tree, zombie groups, safe text."""

from __future__ import annotations

from typing import Iterable, NamedTuple

from ..diagnose.zombies import exit_status_counts
from ..model import ProcessInfo, Snapshot
from ..parse.procfs import STATE_NAMES


# What the census says when the /proc it reads is a container's.
OWN_NAMESPACE_NOTE = ("reaper-doctor runs inside a PID namespace (a container): it sees only "
                      "the processes of its own PID namespace, whose PID 1 is the container's "
                      "init")


def state_word(info: ProcessInfo) -> str:
    return STATE_NAMES.get(info.state, info.state)


def children_map(snap: Snapshot) -> dict[int, list[ProcessInfo]]:
    """Children of each process of the tree, by PID."""
    kids: dict[int, list[ProcessInfo]] = {}
    # One sort of the PIDs (the keys of `processes`) puts every parent's
    # children in PID order.
    for pid in sorted(snap.processes):
        info = snap.processes[pid]
        if pid != snap.target:
            kids.setdefault(info.ppid, []).append(info)
    return kids


class ZombieGroup(NamedTuple):
    """The zombies of one parent."""

    ppid: int
    parent_name: str | None
    sigchld: str | None
    pids: tuple[int, ...]
    exit_statuses: dict[str, int]   # "exit 0" -> 412

    @property
    def count(self) -> int:  # type: ignore[override]  # a field-like name, not tuple.count
        return len(self.pids)


def zombie_groups(snap: Snapshot) -> list[ZombieGroup]:
    """Zombies grouped by parent, the largest group first."""
    by_parent: dict[int, list[ProcessInfo]] = {}
    for info in snap.processes.values():
        if info.is_zombie:
            by_parent.setdefault(info.ppid, []).append(info)
    groups = []
    for ppid, zombies in by_parent.items():
        parent = snap.processes.get(ppid) or (
            snap.target_parent if snap.target_parent and snap.target_parent.pid == ppid else None)
        groups.append(ZombieGroup(ppid=ppid, parent_name=parent.name if parent else None,
                                  sigchld=parent.sigchld if parent else None,
                                  pids=tuple(sorted([z.pid for z in zombies])),
                                  exit_statuses=exit_status_counts(zombies)))
    return sorted(groups, key=lambda g: (-g.count, g.ppid))


_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\x1b": "\\e"}


def safe(text: str) -> str:
    """Escape control characters: a process can name itself with terminal
    escape sequences, and a report must not run them."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable():
            out.append(ch)
        elif ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(f"\\u{ord(ch):04x}")
    return "".join(out)


def command_line(info: ProcessInfo, width: int = 60) -> str:
    """The command line, escaped and shortened; the name where there is none."""
    if info.cmdline:
        text = safe(" ".join(info.cmdline))
    else:
        text = safe(info.name)
    return text if len(text) <= width else text[: width - 1] + "…"


def sampling_phrase(samples: int, elapsed_s: float) -> str:
    """How a scan sampled, with the time it really waited: "2 samples 3.0 s
    apart", or "1 sample (no persistence check)"."""
    if samples > 1:
        return f"{samples} samples {elapsed_s:.1f} s apart"
    return "1 sample (no persistence check)"


def pid_list(pids: Iterable[int], max_items: int = 4) -> str:
    """PIDs in order, a run of three or more contiguous PIDs as a range:
    "100–104, 107, 110–112". A range never stands for PIDs that are not all
    there. Past `max_items` items, the rest is "…"."""
    runs: list[list[int]] = []
    for pid in sorted(set(pids)):
        if runs and pid == runs[-1][-1] + 1:
            runs[-1].append(pid)
        else:
            runs.append([pid])
    items: list[str] = []
    for run in runs:
        items += [f"{run[0]}–{run[-1]}"] if len(run) > 2 else [str(p) for p in run]
    return ", ".join(items[:max_items]) + (", …" if len(items) > max_items else "")


def address_text(address: tuple[str, int]) -> str:
    """"127.0.0.1:8080", "[::1]:8080"."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
