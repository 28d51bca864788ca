"""Commands that teach: `lesson coalescing` and `explain`."""

from __future__ import annotations

import sys

import click

from .base import (PROG, BoundedInt, die, error_line, no_color_option, terminal_width,
                   use_color)

from .progress import Progress

# Names only: importing commands/lesson.py here would be paid by every command.
# tests/test_lesson.py checks they match model.lesson.STRATEGIES.
LESSON_STRATEGIES = ("wait-once", "waitpid-loop", "sig-ign", "pidfd")


@click.group()
def lesson() -> None:
    """Short experiments that show how the leaks happen, with real numbers."""


@lesson.command("coalescing")
@click.option("--children", "-n", type=BoundedInt(1, 2048), default=64, show_default=True,
              help="Children that exit at the same instant, per trial.")
@click.option("--trials", "-t", type=BoundedInt(1, 20), default=3, show_default=True,
              help="Trials per strategy; the table shows the median and min-max.")
@click.option("--strategy", "strategies", multiple=True, type=click.Choice(LESSON_STRATEGIES),
              help="Run only this strategy (repeatable). Default: all four.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.option("--trace", "trace", is_flag=True,
              help="(root, tracefs) Also count each trial's SIGCHLD in the kernel: "
                   "generated, merged, delivered.")
@no_color_option
def coalescing(children: int, trials: int, strategies: tuple[str, ...], as_json: bool,
               trace: bool, no_color: bool) -> None:
    """N children exit at once under each SIGCHLD reaping strategy: handler
    runs vs children reaped vs zombies left, and why.

    Each trial runs in a fresh Python process; everything it forks is reaped.
    With --trace, the kernel's signal tracepoints show where the signals merged.
    """
    from ..commands import lesson as lesson_mod
    from ..model.lesson import STRATEGIES
    from ..render import lesson as lesson_render

    trace_errors: tuple[type[Exception], ...] = ()
    if trace:
        from ..system.tracefs import TracefsError, preflight

        trace_errors = (TracefsError,)
        try:
            preflight()  # before any trial: no root or no tracefs is one line, exit 2
        except TracefsError as e:
            die(str(e))
    from ..render.progress import time_left_of_steps

    chosen = [s for s in STRATEGIES if s in (strategies or STRATEGIES)]
    total = len(chosen) * trials
    progress = Progress("coalescing", total, not as_json and sys.stderr.isatty(),
                        lambda done, elapsed_s: time_left_of_steps(done, total, elapsed_s))
    started = 0

    def trial_starts(strategy: str, number: int) -> None:
        nonlocal started
        progress.update(1 if started else 0, f"{strategy} {number}/{trials}")
        started += 1

    try:
        with progress:
            report = lesson_mod.run_lesson(children, trials, chosen, trial_starts, trace=trace)
            progress.finish()
    except lesson_mod.LessonError as e:
        die(str(e))
    except trace_errors as e:
        die(str(e))
    if as_json:
        click.echo(lesson_render.render_json(report))
    else:
        click.echo(lesson_render.render_text(report, color=use_color(no_color),
                                             width=terminal_width()))
    if report.leftover_processes:
        click.echo(error_line(f"{report.leftover_processes} process(es) of the trials "
                              "were left over (killed)"), err=True)
        sys.exit(1)


@click.command()
@click.argument("code", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def explain(code: str | None, as_json: bool) -> None:
    """Teach finding CODE (RD101, or a slug such as zombie-leak); all codes if none."""
    from ..catalog import CODES, lookup
    from ..render import explain as render

    width = terminal_width()
    if code is None:
        click.echo(render.codes_json() if as_json else render.codes_text(PROG, width))
        return
    found = lookup(code)
    if found is None:
        die(f"unknown finding code {code!r} (known: {', '.join(CODES)}; "
            f"run `{PROG} explain` for the list)")
    if as_json:
        click.echo(render.code_json(found))
        return
    text = render.code_text(found, width)
    click.echo(text, nl=not text.endswith("\n"))

