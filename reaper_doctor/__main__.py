"""`python -m reaper_doctor` runs the command line."""

from reaper_doctor.cli import run

run()
