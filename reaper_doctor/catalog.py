"""The finding codes: slug, default severity, a one-line summary, and the
teaching text `reaper-doctor explain CODE` prints.

The codes, slugs and severities are a public contract (DESIGN.md): never
renumber, never reuse.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Code:
    code: str          # "RD101"
    slug: str          # "zombie-leak"
    severity: str      # default severity: "info" | "warning" | "error"
    summary: str       # one line, for tables and `explain` with no code


CODES: dict[str, Code] = {
    c.code: c
    for c in (
        Code("RD101", "zombie-leak", "error",
             "zombies persist under a parent that never calls waitpid (SIGCHLD default)"),
        Code("RD102", "lost-sigchld", "error",
             "zombies persist under a parent that catches SIGCHLD but reaps one child per signal"),
        Code("RD103", "sigchld-blocked", "error",
             "zombies persist and SIGCHLD is blocked in the parent"),
        Code("RD201", "close-wait-leak", "error",
             "accepted sockets held in CLOSE_WAIT: the parent never closed client_connection"),
        Code("RD202", "inherited-listener", "info",
             "per-connection children hold a copy of the listening socket they never use"),
        Code("RD203", "fd-growth", "warning",
             "open descriptors grow steadily"),
        Code("RD301", "nofile-limit", "warning",
             "open descriptors near the soft RLIMIT_NOFILE (ulimit -n)"),
        Code("RD302", "nproc-limit", "warning",
             "tasks of the user near the soft RLIMIT_NPROC (ulimit -u)"),
        Code("RD303", "pids-cgroup-limit", "warning",
             "tasks of the pids cgroup near pids.max"),
        Code("RD401", "accept-backlog", "warning",
             "a listening socket's accept queue stays non-empty: the server is not accepting"),
    )
}

# Teaching texts for `reaper-doctor explain CODE`, keyed by code. Each says
# what the finding means, how reaper-doctor detects it, the buggy code, the
# fixed code, and how to confirm the fix.
EXPLAIN: dict[str, str] = {}


def lookup(code: str) -> Code | None:
    """The Code for "RD101", "rd101" or a slug such as "zombie-leak"; None if unknown."""
    key = code.strip().upper()
    if key in CODES:
        return CODES[key]
    for c in CODES.values():
        if c.slug == code.strip().lower():
            return c
    return None
