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


class SignalType(click.ParamType):
    """A signal: a name with or without SIG (CHLD, SIGCHLD, sigchld) or a number (17)."""

    name = "signal"

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        from .tracefs import parse_signal

        try:
            return parse_signal(str(value))
        except ValueError:
            raise OneLineBadParameter(
                f"unknown signal {value!r} (try CHLD, SIGCHLD or 17)") from None


@main.command()
@click.argument("pid", type=PidType())
@click.option("--duration", type=float, default=None, metavar="S",
              help="Stop after S seconds (default: at Ctrl-C or when PID exits).")
@click.option("--interval", type=float, default=1.0, show_default=True, metavar="S",
              help="Seconds between the per-interval lines.")
@click.option("--signal", "signum", type=SignalType(), default="CHLD", show_default=True,
              help="The signal to count: a name (CHLD, SIGCHLD) or a number.")
@click.option("--grace", type=float, default=1.0, show_default=True, metavar="S",
              help="A zombie counts as left only after S seconds as a zombie.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document at the end.")
@no_color_option
def trace(pid: int, duration: float | None, interval: float, signum: int, grace: float,
          as_json: bool, no_color: bool) -> None:
    """(root) Count SIGCHLD generated / merged / delivered for PID, from the
    kernel's signal tracepoints, in a private tracing instance."""
    from . import trace as tracing
    from .tracefs import TracefsError, signal_name

    if duration is not None and not duration > 0:
        die(f"--duration must be a positive number of seconds, not {duration:g}")
    if not interval > 0:
        die(f"--interval must be a positive number of seconds, not {interval:g}")
    if not grace >= 0:
        die(f"--grace must be zero or more seconds, not {grace:g}")

    def started(tr: Any) -> None:
        until = f"for {duration:g} s" if duration is not None else "until Ctrl-C"
        click.echo(f"{PROG}: tracing {signal_name(signum)} of PID {pid} in {tr.instance} "
                   f"{until}", err=True)
        if not as_json:
            click.echo(tracing.SAMPLE_HEADER)

    def sampled(s: Any) -> None:
        if not as_json:
            click.echo(tracing.render_sample(s))

    def target_exited(t_s: float) -> None:
        click.echo(f"{PROG}: PID {pid} exited after {t_s:.1f} s; trace ended", err=True)

    try:
        result = tracing.run_trace(pid, signum, duration_s=duration, interval_s=interval,
                                   grace_s=grace, on_start=started, on_sample=sampled,
                                   on_target_exit=target_exited)
    except TracefsError as e:
        die(str(e))
    click.echo(tracing.render_json(result) if as_json else tracing.render_text(result))
    sys.exit(tracing.exit_code(tracing.trace_findings(result)))
