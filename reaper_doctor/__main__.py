"""`python -m reaper_doctor` runs the command line."""

from .cli import run

run()
