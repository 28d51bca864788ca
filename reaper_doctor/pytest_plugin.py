"""pytest plugin (issue 5): registered through the pytest11 entry point."""
