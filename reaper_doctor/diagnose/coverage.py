"""What a scan could not see: fields it could not read, the findings that
went unchecked for want of them, and what would complete it.

Another user's descriptors need root (or that user): without them no
descriptor finding can be made, and "no finding" would read as "no leak".
"""

from __future__ import annotations

from ..model import Coverage, Snapshot

# The fields a finding rests on (collect names them in Snapshot.unreadable).
CHECKS = {
    "fds": ("RD201", "RD202", "RD203", "RD301", "RD401"),
    "fd links": ("RD201", "RD202", "RD401"),
    "sigchld": ("RD101", "RD102", "RD103"),
    "limits": ("RD301", "RD302"),
}
WHAT = {"fds": "the descriptors", "fd links": "some descriptor links",
        "sigchld": "the signal masks", "limits": "the limits"}
MAX_PIDS = 5


def coverage(snap: Snapshot) -> Coverage | None:
    """What the snapshot could not read of its tree and what that leaves
    unchecked; None when nothing a finding needs was missing."""
    by_field: dict[str, list[tuple[int, str]]] = {}
    for u in snap.unreadable:
        if u.field in CHECKS and u.pid in snap.processes:
            by_field.setdefault(u.field, []).append((u.pid, u.reason))
    if not by_field:
        return None
    missing: list[str] = []
    unchecked: set[str] = set()
    owners: set[int | None] = set()
    for name, items in by_field.items():
        pids = sorted({pid for pid, _ in items})
        if len(pids) == 1:
            who = f"PID {pids[0]}"
        else:
            shown = ", ".join(map(str, pids[:MAX_PIDS])) + ("…" if len(pids) > MAX_PIDS else "")
            who = f"{len(pids)} processes, PIDs {shown}"
        missing.append(f"{WHAT[name]} of {who} ({items[0][1]})")
        unchecked.update(CHECKS[name])
        owners.update(snap.processes[pid].uid for pid in pids)
    if snap.reader_uid == 0:
        remedy = ("they stay unreadable even as root (a security policy, or a capability "
                  "this session lacks)")
    elif len(owners) == 1 and None not in owners:
        remedy = f"run as root, or as UID {owners.pop()} (the owner), to complete it"
    else:
        remedy = "run as root to complete it"
    return Coverage(missing=tuple(missing), unchecked=tuple(sorted(unchecked)),
                    to_complete=remedy)
