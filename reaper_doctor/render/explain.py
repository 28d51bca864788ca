"""`explain`: the catalog of finding codes, as a table or JSON, and one
code's teaching text."""

from __future__ import annotations

import json

from ..catalog import CODES, EXPLAIN, Code
from .width import DEFAULT_WIDTH, fill, fill_prose, fit_table

SCHEMA = "reaper-doctor/explain/1"


def codes_json() -> str:
    return json.dumps({"schema": SCHEMA,
                       "codes": [{"code": c.code, "slug": c.slug, "severity": c.severity,
                                  "summary": c.summary} for c in CODES.values()]}, indent=2)


def codes_text(prog: str, width: int = DEFAULT_WIDTH) -> str:
    rows = [(c.code, c.slug, c.severity, c.summary) for c in CODES.values()]
    return (fit_table(rows, ("code", "slug", "severity", "summary"), width) + "\n\n"
            + fill(f"{prog} explain CODE  prints what a finding means and how to fix it.",
                   width))


def code_text(found: Code, width: int | None = None) -> str:
    """The teaching text; with a `width`, its prose refilled to fit (the code
    in it is kept as written)."""
    text = EXPLAIN.get(found.code, found.summary + "\n")
    return text if width is None else fill_prose(text, width)


def code_json(found: Code) -> str:
    return json.dumps({"schema": SCHEMA, "code": found.code, "slug": found.slug,
                       "severity": found.severity, "summary": found.summary,
                       "text": code_text(found)}, indent=2)
