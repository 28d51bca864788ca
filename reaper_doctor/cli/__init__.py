"""The command line: parse, call commands/, echo what render/ returns, exit.

One module per family of commands: `inspect` (scan, watch, trace: they only
read), `teach` (lesson, explain), `servers` (scenario, run, exporter: they
start servers and reap them). `base` holds what the command line itself is
made of: the one-line errors, the parameter types, the shared options;
`progress` the progress bars.

Only click is imported at module level: `reaper-doctor --version` and
`--help` must not pay for psutil or tabulate. Each command imports what it
needs when it runs.
"""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn

import click

from .. import __version__
from .base import PROG, OneLineErrors, error_line, terminal_width
from .inspect import scan, trace, watch
from .servers import exporter, run_command, scenario
from .teach import LESSON_STRATEGIES, explain, lesson

__all__ = ["LESSON_STRATEGIES", "PROG", "error_line", "main", "run", "terminal_width"]


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name=PROG,
                      message="%(prog)s %(version)s")
def main() -> None:
    """Find, explain and reproduce zombie and file-descriptor leaks."""



for _command in (scan, watch, trace, lesson, explain, scenario, run_command, exporter):
    main.add_command(_command)


def run() -> NoReturn:
    """The console script and `python -m reaper_doctor`: `main`, then out
    without tearing the interpreter down. The teardown frees each object a
    scan made, one by one (~10 ms after 20,000 descriptors), for nobody:
    every command has finished its work, and its `finally` blocks, by the
    time `main` returns. atexit handlers are skipped; nothing here uses one.
    """
    try:
        main()
        code: Any = 0
    except SystemExit as e:
        code = e.code
    if not isinstance(code, int):
        if code is not None:          # sys.exit("message"), as Python prints it
            print(code, file=sys.stderr)
        code = 0 if code is None else 1
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        pass                          # the reader left (`| head`): not our error
    sys.stderr.flush()
    os._exit(code)
