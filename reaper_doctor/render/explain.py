"""`explain`: the catalog of finding codes, as a table or JSON, and one
code's teaching text."""

from __future__ import annotations

import json

from ..catalog import CODES, EXPLAIN, Code

SCHEMA = "reaper-doctor/explain/1"


def codes_json() -> str:
    return json.dumps({"schema": SCHEMA,
                       "codes": [{"code": c.code, "slug": c.slug, "severity": c.severity,
                                  "summary": c.summary} for c in CODES.values()]}, indent=2)


def codes_text(prog: str) -> str:
    from tabulate import tabulate

    rows = [(c.code, c.slug, c.severity, c.summary) for c in CODES.values()]
    return (tabulate(rows, headers=("code", "slug", "severity", "summary"))
            + f"\n\n{prog} explain CODE  prints what a finding means and how to fix it.")


def code_text(found: Code) -> str:
    return EXPLAIN.get(found.code, found.summary + "\n")


def code_json(found: Code) -> str:
    return json.dumps({"schema": SCHEMA, "code": found.code, "slug": found.slug,
                       "severity": found.severity, "summary": found.summary,
                       "text": code_text(found)}, indent=2)
