"""Progress bars on a terminal (stderr): the lesson's trials and a load's requests."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click



class Progress:
    """A progress bar on stderr when it is a terminal (nothing otherwise):
    the label, the bar, the percentage, then what is running and the time
    left as `time_left(done, elapsed_s)` reckons it."""

    def __init__(self, label: str, total: int, enabled: bool,
                 time_left: Callable[[int, float], float | None]) -> None:
        import time

        self.clock = time.monotonic
        self.started = self.clock()
        self.time_left = time_left
        self.item: str | None = None
        self.bar = click.progressbar(length=total, label=label, file=sys.stderr, width=30,
                                     show_eta=False, item_show_func=self._info) \
            if enabled else None

    def _info(self, _: object) -> str:
        from ..render.progress import progress_info

        done = self.bar.pos if self.bar is not None else 0
        return progress_info(self.item, self.time_left(done, self.clock() - self.started))

    def __enter__(self) -> Progress:
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def update(self, steps: int, item: str | None = None) -> None:
        if self.bar is not None:
            self.item = item
            self.bar.update(steps, item)
            if not steps:          # click draws only when the bar moves
                self.bar.render_progress()

    def finish(self) -> None:
        """All done (a skipped step counts as done)."""
        if self.bar is not None and self.bar.length is not None:
            self.item = None
            self.bar.update(self.bar.length - self.bar.pos)


def load_progress(label: str, settings: Any, enabled: bool) -> tuple[Progress, Callable[[Any], None]]:
    """A Progress for a scenario's requests, and the `on_result` that moves it:
    the time left from the requests' mean latency and the concurrency."""
    from ..render.progress import time_left_of_load

    latencies: list[float] = []

    def left(done: int, elapsed_s: float) -> float | None:
        mean = sum(latencies) / len(latencies) if latencies else None
        return time_left_of_load(settings.requests - done, mean, settings.concurrency)

    progress = Progress(label, settings.requests, enabled, left)

    def on_result(outcome: Any) -> None:
        latencies.append(outcome.latency_ms / 1000)
        progress.update(1)

    return progress, on_result

