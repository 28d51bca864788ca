"""What the command line itself is made of: the one-line errors, the
parameter types, the options several commands share, and where text goes
(its width, whether to colour it)."""

from __future__ import annotations

import os
import re
import sys
from typing import Any, NoReturn

import click

from ..collect.proc import ProcUnavailable

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

    Click prints a multi-line usage block; the contract is exactly one line
    and never a traceback, so every click error is caught here, in one place.
    """

    def main(self, args: Any = None, prog_name: str | None = None,  # type: ignore[override]
             **extra: Any) -> Any:
        extra.pop("standalone_mode", None)
        try:
            rv = super().main(args=args, prog_name=prog_name or PROG,
                              standalone_mode=False, **extra)
        except NO_ARGS_IS_HELP as e:
            # `reaper-doctor`, `reaper-doctor scenario`: asking what there is
            # to run is not an error.
            click.echo(e.ctx.get_help())
            sys.exit(0)
        except click.BadParameter as e:
            # Our own parameter types say the whole thing ("no process with
            # PID 9"); click's need the parameter named to make sense.
            if getattr(e, "one_line", False):
                die(e.message)
            die(click_message(e))
        except click.NoSuchOption as e:
            # `scan -1` reads as an option to click; to the user it is a PID.
            if _looks_numeric(e.option_name):
                die(f"PID must be a positive integer, not {e.option_name!r}")
            die(click_message(e))
        except click.ClickException as e:
            die(click_message(e), e.exit_code if e.exit_code != 1 else 2)
        except ProcUnavailable as e:
            die(str(e))
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


# click >= 8.2 raises this for a group run without a command; 8.1 prints
# the help and exits 0 by itself.
NO_ARGS_IS_HELP: Any = getattr(click.exceptions, "NoArgsIsHelpError", ())


def click_message(e: click.ClickException) -> str:
    """Click's message in the style of ours: sentences joined by "; ", each
    starting lower case, no full stop at the end; a usage error names the
    help of the command it came from.

    "No such option '--formt'. Did you mean '--format'?" becomes
    "no such option '--formt'; did you mean '--format'? (see reaper-doctor scan --help)".
    """
    sentences = re.split(r"(?<=[.?!])\s+(?=[A-Z])", " ".join(e.format_message().split()))
    text = "; ".join(_lower_first(s.rstrip(".") if s.endswith(".") else s) for s in sentences)
    ctx = getattr(e, "ctx", None)
    if isinstance(e, click.UsageError) and ctx is not None:
        text += f" (see {ctx.command_path} --help)"
    return text


def _lower_first(sentence: str) -> str:
    """"Missing argument" -> "missing argument"; "PID ..." stays."""
    if len(sentence) > 1 and sentence[0].isupper() and not sentence[1].isupper():
        return sentence[0].lower() + sentence[1:]
    return sentence


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


def terminal_width() -> int:
    """The width text output wraps to: COLUMNS when it holds a number, else
    the width of the terminal on stdout, else 80; never below 40."""
    from ..render.width import DEFAULT_WIDTH, MIN_WIDTH

    env = os.environ.get("COLUMNS", "").strip()
    if env.isdigit() and int(env) > 0:
        return max(MIN_WIDTH, int(env))
    try:
        columns = os.get_terminal_size(sys.stdout.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return DEFAULT_WIDTH
    return max(MIN_WIDTH, columns) if columns > 0 else DEFAULT_WIDTH


def use_color(no_color: bool) -> bool:
    """Colour only on a terminal, never with NO_COLOR or --no-color."""
    if no_color or os.environ.get("NO_COLOR"):
        return False
    return sys.stdout.isatty()


no_color_option = click.option(
    "--no-color", is_flag=True, help="Never colour the output (also: NO_COLOR=1).")


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


class SecondsType(click.ParamType):
    """A number of seconds above 0 (or at least `minimum`), at most `maximum`."""

    name = "seconds"

    def __init__(self, option: str, maximum: float, minimum: float | None = None) -> None:
        self.option = option
        self.maximum = maximum
        self.minimum = minimum

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            raise OneLineBadParameter(
                f"{self.option} must be a number of seconds, not {value!r}") from None
        low_ok = seconds > 0 if self.minimum is None else seconds >= self.minimum
        if not (low_ok and seconds <= self.maximum):
            low = "above 0" if self.minimum is None else f"at least {self.minimum:g}"
            raise OneLineBadParameter(
                f"{self.option} must be {low} and at most {self.maximum:g} seconds, "
                f"not {value!r}")
        return seconds





def echo_notes(notes: list[str]) -> None:
    """What became of the PIDs given (a thread, a zombie, a repeat), on stderr."""
    for note in notes:
        click.echo(f"{PROG}: {note}", err=True)


class BoundedInt(click.IntRange):
    """An IntRange whose errors say "not a valid integer", not "integer range"."""

    name = "integer"


class SignalType(click.ParamType):
    """A signal: a name with or without SIG (CHLD, SIGCHLD, sigchld) or a number (17)."""

    name = "signal"

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        from ..model.signals import parse_signal

        try:
            return parse_signal(str(value))
        except ValueError:
            raise OneLineBadParameter(
                f"unknown signal {value!r} (try CHLD, SIGCHLD or 17)") from None


def load_options(func: Any) -> Any:
    """The load shared by `scenario run` and `scenario compare`."""
    for option in reversed((
        click.option("--requests", "-n", type=BoundedInt(1, 5000), default=None,
                     help="Requests to send (to 127.0.0.1 or ::1 only)  [default: 60; with "
                          "--fd-limit N, N + concurrency: enough to reach the limit]"),
        click.option("--concurrency", "-c", type=BoundedInt(1, 64), default=8,
                     show_default=True, help="Requests in flight at once."),
        click.option("--timeout", "timeout_s", type=SecondsType("--timeout", 60), default=2.0,
                     show_default=True,
                     help="Seconds a request may take; no end of reply by then = hung."),
        click.option("--grace", "grace_s", type=GraceType(), default=1.0, show_default=True,
                     help="Seconds between the scan's two samples."),
    )):
        func = option(func)
    return func

