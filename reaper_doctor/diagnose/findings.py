"""A Finding from its code's catalog entry."""

from __future__ import annotations

from ..catalog import CODES
from ..model import (
    Finding,
    Severity,
)

MAX_EVIDENCE_PIDS = 50


def finding(code: str, pid: int, message: str, severity: Severity | None = None, /,
            **evidence: object) -> Finding:
    """A Finding of `code` (its slug and default severity from the catalog);
    every keyword argument is evidence."""
    meta = CODES[code]
    return Finding(code=code, slug=meta.slug, severity=severity or Severity(meta.severity),
                   pid=pid, message=message, evidence=evidence)
