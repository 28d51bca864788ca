"""Pure parsers: text and bytes from the kernel in, records out. No file is
opened and no socket used here; collect/ and system/ do the I/O.

  procfs    /proc files (stat, status, limits, cgroup, net tables, fdinfo...)
  netlink   sock_diag requests and replies
  tracefs   tracefs event formats and trace_pipe lines
"""
