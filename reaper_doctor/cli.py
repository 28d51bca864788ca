"""The command line: parse, call, echo, exit. No logic lives here.

Only click is imported at module level: `reaper-doctor --version` and
`--help` must not pay for psutil or tabulate (issue 6). Each command
imports what it needs when it runs.
"""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn

import click

from . import __version__

PROG = "reaper-doctor"


def error_line(message: str) -> str:
    """The one-line error the contract wants: `reaper-doctor: error: ...`."""
    return f"{PROG}: error: {' '.join(str(message).split())}"


def die(message: str, code: int = 2) -> NoReturn:
    """Print one error line on stderr and exit (2 = bad invocation or input)."""
    click.echo(error_line(message), err=True)
    sys.exit(code)


class OneLineErrors(click.Group):
    """A group whose usage errors are one line on stderr and exit code 2.

    Click prints a multi-line usage block; DESIGN.md wants exactly one line
    and never a traceback, so every click error is caught here, in one place.
    """

    def main(self, args: Any = None, prog_name: str | None = None, **extra: Any) -> Any:
        extra.pop("standalone_mode", None)
        try:
            rv = super().main(args=args, prog_name=prog_name or PROG,
                              standalone_mode=False, **extra)
        except click.BadParameter as e:
            # Our own parameter types say the whole thing ("no process with
            # PID 9"); click's need the parameter named to make sense.
            die(e.message if getattr(e, "one_line", False) else e.format_message())
        except click.NoSuchOption as e:
            # `scan -1` reads as an option to click; to the user it is a PID.
            if _looks_numeric(e.option_name):
                die(f"PID must be a positive integer, not {e.option_name!r}")
            die(e.format_message())
        except click.ClickException as e:
            die(e.format_message(), e.exit_code if e.exit_code != 1 else 2)
        except click.exceptions.Abort:
            click.echo(error_line("interrupted"), err=True)
            sys.exit(130)
        except KeyboardInterrupt:
            click.echo(error_line("interrupted"), err=True)
            sys.exit(130)
        except BrokenPipeError:
            # `reaper-doctor scan | head`: the reader left; that is not our error.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
        sys.exit(rv if isinstance(rv, int) else 0)


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class OneLineBadParameter(click.BadParameter):
    """A BadParameter whose message is complete by itself."""

    one_line = True


class PidType(click.ParamType):
    """A PID: a positive integer naming a process that exists right now."""

    name = "pid"

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            pid = value
        else:
            text = str(value).strip()
            if not text.isdigit():
                raise OneLineBadParameter(f"PID must be a positive integer, not {value!r}")
            pid = int(text)
        if pid <= 0:
            raise OneLineBadParameter(f"PID must be a positive integer, not {value!r}")
        if not os.path.exists(f"/proc/{pid}") and not _pid_exists(pid):
            raise OneLineBadParameter(f"no process with PID {pid}")
        return pid


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0 checks existence and sends nothing
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True


def use_color(no_color: bool) -> bool:
    """Colour only on a terminal, never with NO_COLOR or --no-color."""
    if no_color or os.environ.get("NO_COLOR"):
        return False
    return sys.stdout.isatty()


no_color_option = click.option(
    "--no-color", is_flag=True, help="Never colour the output (also: NO_COLOR=1).")


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name=PROG,
                      message="%(prog)s %(version)s")
def main() -> None:
    """Find, explain and reproduce zombie and file-descriptor leaks."""


class GraceType(click.ParamType):
    """A non-negative number of seconds."""

    name = "seconds"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            raise OneLineBadParameter(f"--grace must be a number of seconds, not {value!r}") from None
        if not 0 <= seconds <= 3600 or seconds != seconds:
            raise OneLineBadParameter(f"--grace must be between 0 and 3600 seconds, not {value!r}")
        return seconds


@main.command()
@click.argument("pids", nargs=-1, type=PidType())
@click.option("--grace", "grace_s", type=GraceType(), default=1.0, show_default=True,
              help="Seconds between the two samples; a zombie counts only if the same PID "
                   "is a zombie in both. 0: one sample, no persistence check.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="Output format.")
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option("--list-fds", is_flag=True, help="JSON: include every descriptor (fd, link).")
@no_color_option
def scan(pids: tuple[int, ...], grace_s: float, fmt: str, as_json: bool, list_fds: bool,
         no_color: bool) -> int:
    """Snapshot and diagnose PIDS and their descendants.

    Shows the process tree, zombies grouped by parent with their exit
    status, each parent's SIGCHLD disposition, open descriptors by kind, and
    usage against ulimit -n, ulimit -u and the pids cgroup; then the
    findings. Exit 0: no finding of severity warning or worse; 1: at least
    one; 2: bad input.
    """
    from .scan import ProcessGone, scan as run_scan

    if not pids:
        die("give at least one PID (the whole-machine census is not available yet)")
    if as_json:
        fmt = "json"
    try:
        report = run_scan(list(dict.fromkeys(pids)), grace_s=grace_s, with_fd_list=list_fds)
    except ProcessGone as gone:
        die(str(gone))
    if fmt == "json":
        from .render.json import render_json

        click.echo(render_json(report), nl=False)
    else:
        from .render.text import render_text

        click.echo(render_text(report, color=use_color(no_color)), nl=False)
    return report.exit_code


class IntervalType(click.ParamType):
    """A positive number of seconds, at most an hour."""

    name = "seconds"

    def __init__(self, option: str, minimum_s: float) -> None:
        self.option, self.minimum_s = option, minimum_s

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            raise OneLineBadParameter(
                f"{self.option} must be a number of seconds, not {value!r}") from None
        if not self.minimum_s <= seconds <= 86400 or seconds != seconds:
            raise OneLineBadParameter(
                f"{self.option} must be between {self.minimum_s:g} and 86400 seconds, "
                f"not {value!r}")
        return seconds


@main.command()
@click.argument("pid", type=PidType())
@click.option("--interval", "interval_s", type=IntervalType("--interval", 0.05), default=1.0,
              show_default=True, help="Seconds between samples.")
@click.option("--duration", "duration_s", type=IntervalType("--duration", 0.0), default=None,
              help="Seconds to watch. Default: until Ctrl-C.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON document at the end (reaper-doctor/watch/1), no sample lines.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, writable=True),
              help="Also write every sample to this CSV file as it is taken.")
@no_color_option
def watch(pid: int, interval_s: float, duration_s: float | None, as_json: bool,
          csv_path: str | None, no_color: bool) -> int:
    """Sample PID over time: zombies in its tree, its open descriptors,
    CLOSE_WAIT sockets on its listening ports, tasks of its user, its pids
    cgroup. Ends (Ctrl-C, --duration, or the process exiting) with the
    growth rate of each series, the time left until each limit, a
    sparkline, and RD203 when descriptors grow steadily. Only reads: the
    process is never signalled. Exit 0, or 1 with a finding of severity
    warning or worse; 2: bad input.
    """
    import csv

    from .collect import ProcessGone
    from .render import watch as render
    from .watch import watch as run_watch

    csv_file = None
    if csv_path:
        try:
            csv_file = open(csv_path, "w", newline="", encoding="utf-8")
        except OSError as e:
            die(f"cannot write {csv_path}: {e.strerror or e}")
    writer = csv.writer(csv_file) if csv_file else None
    if writer:
        writer.writerow(render.CSV_COLUMNS)
    color = use_color(no_color)

    def on_start(name: str, limits: Any) -> None:
        if not as_json:
            click.echo(render.header_line(pid, name, interval_s, duration_s))

    def on_sample(sample: Any) -> None:
        if writer and csv_file:
            writer.writerow(render.csv_row(sample))
            csv_file.flush()
        if not as_json:
            click.echo(render.sample_line(sample))

    try:
        report = run_watch(pid, interval_s=interval_s, duration_s=duration_s,
                           on_start=on_start, on_sample=on_sample)
    except ProcessGone as gone:
        die(str(gone))
    finally:
        if csv_file:
            csv_file.close()
    if as_json:
        click.echo(render.render_watch_json(report), nl=False)
    else:
        click.echo(render.summary_text(report, color=color), nl=False)
    return report.exit_code


# Names only: importing lesson.py here would be paid by every command.
# tests/test_lesson.py checks they match lesson.STRATEGIES.
LESSON_STRATEGIES = ("wait-once", "waitpid-loop", "sig-ign", "pidfd")


class BoundedInt(click.IntRange):
    """An IntRange whose errors say "not a valid integer", not "integer range"."""

    name = "integer"


@main.group()
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
@no_color_option
def coalescing(children: int, trials: int, strategies: tuple[str, ...], as_json: bool,
               no_color: bool) -> None:
    """N children exit at once under each SIGCHLD reaping strategy: handler
    runs vs children reaped vs zombies left, and why.

    Each trial runs in a fresh Python process; everything it forks is reaped.
    """
    from . import lesson as lesson_mod

    try:
        report = lesson_mod.run_lesson(children, trials,
                                       strategies or lesson_mod.STRATEGIES)
    except lesson_mod.LessonError as e:
        die(str(e))
    if as_json:
        click.echo(lesson_mod.render_json(report))
    else:
        click.echo(lesson_mod.render_text(report, color=use_color(no_color)))
    if report.leftover_processes:
        click.echo(error_line(f"{report.leftover_processes} process(es) of the trials "
                              "were left over (killed)"), err=True)
        sys.exit(1)
