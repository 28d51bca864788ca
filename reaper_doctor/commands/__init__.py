"""The use cases: when to read, wait, spawn and judge, for each command.

Each returns records (model/) for render/ to print; cli/ parses the
command line, calls one of these, renders, and exits.

  scan       one target (or several), two samples apart
  census     `scan` with no PID: the whole machine
  watch      one target over time, light samples
  trace      SIGCHLD tracepoint counts beside /proc (root)
  lesson     `lesson coalescing`: reaping strategies side by side
  run        `run -- COMMAND`: any server under load, judged, then reaped
  scenario   `scenario run` / `compare`: `run` on a built-in script
"""
