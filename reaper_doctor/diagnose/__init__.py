"""Snapshots in, findings out: small pure functions, no I/O, no clock.

"Persist": the same PID -- the same process, so the same
start time too -- is a zombie in two samples at least `grace_s` apart.
Comparing counts instead of PIDs would flag every healthy fork server,
whose zombies come and go.
"""

from __future__ import annotations

from typing import Sequence

from ..model import FdCounts, Finding, Snapshot
from .fds import (
    accept_backlog_findings,
    close_wait_findings,
    fd_growth_findings,
    inherited_listener_findings,
)
from .containers import pid1_findings
from .limits import limit_findings
from .zombies import zombie_findings


def diagnose(samples: Sequence[Snapshot], *, grace_s: float,
             fd_series: Sequence[FdCounts] = ()) -> list[Finding]:
    """All findings from the samples of one target, oldest first.

    With one sample (`--grace 0`) there is no persistence check: every
    zombie, CLOSE_WAIT socket and queued connection present counts.
    `fd_series`: light samples (descriptor counts) across the window,
    the full samples' counts included, for RD203.
    """
    earlier, later = samples[0], samples[-1]
    leaks = [*close_wait_findings(earlier, later), *fd_growth_findings(fd_series, later.nofile)]
    found = [*zombie_findings(earlier, later, grace_s), *leaks,
             *inherited_listener_findings(earlier, later),
             *accept_backlog_findings(earlier, later, leaks=leaks,
                                      between=[s.queues for s in fd_series],
                                      looks=[s.holders for s in fd_series]),
             *limit_findings(later), *pid1_findings(later)]
    return sorted(found, key=lambda f: (f.pid, f.code))
