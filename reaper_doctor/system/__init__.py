"""What acts on the operating system rather than reading it.

  lifecycle          child subreaper, kill and reap a session, signal deferral
  tracefs            one private tracing instance per traced process
  tracers            several SIGCHLD traces read in the background
  load               the load driver (127.0.0.1 or ::1 only)
  coalescing_trial   the child process a lesson trial runs in
"""
