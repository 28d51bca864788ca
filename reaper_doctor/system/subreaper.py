"""become_subreaper(), on its own: the pytest plugin calls it at start-up
and must not pay for the rest of the clean-up contract (lifecycle)."""

from __future__ import annotations

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make this process a child subreaper (prctl PR_SET_CHILD_SUBREAPER):
    orphans of our descendants are re-parented to us, not to PID 1 (which on
    some machines reaps only every second or two), so we can reap them.
    False where prctl is not available."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False
