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


@main.group()
def scenario() -> None:
    """Scenario servers that reproduce each leak on 127.0.0.1."""


@scenario.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def scenario_list(as_json: bool) -> None:
    """List the scenarios: what each reproduces and the findings it should get."""
    from .scenarios import SCENARIOS

    if as_json:
        import json

        doc = {"schema": "reaper-doctor/scenario-list/1",
               "scenarios": [{"name": s.name, "script": s.script, "reproduces": s.reproduces,
                              "expected": list(s.expected), "fix": s.fix}
                             for s in SCENARIOS.values()]}
        click.echo(json.dumps(doc, indent=2))
        return
    from tabulate import tabulate

    rows = [(s.name, s.reproduces, " ".join(s.expected) or "none")
            for s in SCENARIOS.values()]
    click.echo(tabulate(rows, headers=("scenario", "reproduces", "expected findings"),
                        maxcolwidths=[None, 60, None]))


@main.command()
@click.argument("code", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def explain(code: str | None, as_json: bool) -> None:
    """Teach finding CODE (RD101, or a slug such as zombie-leak); all codes if none."""
    import json

    from .catalog import CODES, EXPLAIN, lookup

    if code is None:
        if as_json:
            doc = {"schema": "reaper-doctor/explain/1",
                   "codes": [{"code": c.code, "slug": c.slug, "severity": c.severity,
                              "summary": c.summary} for c in CODES.values()]}
            click.echo(json.dumps(doc, indent=2))
            return
        from tabulate import tabulate

        rows = [(c.code, c.slug, c.severity, c.summary) for c in CODES.values()]
        click.echo(tabulate(rows, headers=("code", "slug", "severity", "summary")))
        click.echo(f"\n{PROG} explain CODE  prints what a finding means and how to fix it.")
        return
    found = lookup(code)
    if found is None:
        die(f"unknown finding code {code!r} (known: {', '.join(CODES)}; "
            f"run `{PROG} explain` for the list)")
    text = EXPLAIN.get(found.code, found.summary + "\n")
    if as_json:
        click.echo(json.dumps({"schema": "reaper-doctor/explain/1", "code": found.code,
                               "slug": found.slug, "severity": found.severity,
                               "summary": found.summary, "text": text}, indent=2))
        return
    click.echo(text, nl=not text.endswith("\n"))
