"""What a progress bar says after the bar: what is running, and the time
left. Pure arithmetic on what the caller measured; the CLI draws the bar."""

from __future__ import annotations


def time_left_of_load(remaining: int, mean_latency_s: float | None, concurrency: int) -> float | None:
    """Seconds until `remaining` requests end, `concurrency` at a time, each
    taking `mean_latency_s` (the mean of those done); None before one is done.

    Requests run in waves: when the first of a wave of hung requests ends
    at the timeout, the others end with it. An ETA from the overall rate
    (elapsed / done) would read one request done in two seconds and
    promise a minute; this one reads "31 left, 8 at a time, 1 s each": 4 s.
    """
    if mean_latency_s is None or remaining <= 0:
        return None if mean_latency_s is None else 0.0
    return remaining * mean_latency_s / max(1, concurrency)


def time_left_of_steps(done: int, total: int, elapsed_s: float) -> float | None:
    """Seconds until `total` steps run one after the other end, `done` of them
    in `elapsed_s`; None before one is done."""
    if done <= 0:
        return None
    return elapsed_s / done * max(0, total - done)


def progress_info(item: str | None, left_s: float | None) -> str:
    """"wait-once 2/3  ETA 00:04": the item, then the time left (mm:ss)."""
    parts = [item] if item else []
    if left_s is not None:
        seconds = int(round(left_s))
        parts.append(f"ETA {seconds // 60:02d}:{seconds % 60:02d}")
    return "  ".join(parts)


__all__ = ["time_left_of_load", "time_left_of_steps", "progress_info"]
