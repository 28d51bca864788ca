"""Signal names and numbers."""

from __future__ import annotations

import signal


def signal_name(signum: int) -> str:
    """SIGCHLD for 17; SIGRTMIN+3 for a real-time signal."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        if signal.SIGRTMIN < signum < signal.SIGRTMAX:
            return f"SIGRTMIN+{signum - signal.SIGRTMIN}"
        return f"SIG{signum}"


def parse_signal(text: str) -> int:
    """17, "CHLD", "SIGCHLD", "sigchld" -> 17; ValueError for anything else."""
    value = str(text).strip()
    if value.isdigit():
        signum = int(value)
        if 1 <= signum <= signal.SIGRTMAX:
            return signum
        raise ValueError(f"no signal number {signum}")
    name = value.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise ValueError(f"unknown signal {text!r}") from None
