"""Pure parsers: text and bytes in (from the kernel, or typed on a command
line), records out. No file is opened and no socket used here; collect/ and
system/ do the I/O.

  procfs    /proc files (stat, status, limits, cgroup, net tables, fdinfo...)
  netlink   sock_diag requests and replies
  tracefs   tracefs event formats and trace_pipe lines
  request   the bytes of a `run --request TEXT` (its escapes)
"""
