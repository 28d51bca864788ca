"""The use cases: when to read, wait, spawn and judge, for each command.

Each returns records (model/) for render/ to print; cli.py parses the
command line, calls one of these, renders, and exits.

  scan       one target (or several), two samples apart
  census     `scan` with no PID: the whole machine
  watch      one target over time, light samples
  trace      SIGCHLD tracepoint counts beside /proc (root)
  lesson     `lesson coalescing`: reaping strategies side by side
  scenario   `scenario run` / `compare`: a scenario server under load
"""
