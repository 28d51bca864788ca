"""Renderers: a Report in, a str out. They never read /proc."""
