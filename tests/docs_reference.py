"""Read the user reference in docs/: the JSON key tables of docs/json.md,
the finding codes of docs/findings.md, the metric families of
docs/prometheus.md, and the relative links of every page.

The tests check the real output of the commands against what these pages
say, so the pages are the one list of keys: a key added to the output
must be added to its table, and a documented key must be in the output.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|([^|]*)\|(.*)\|\s*$")
_PATH = re.compile(r"^[A-Za-z_][\w.\[\]]*$")
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
_REF = re.compile(r"\]\(#([a-z0-9-]+)\)")
TRIMMED = "…"    # the key that marks an example cut short in docs/json.md
TYPE_WORDS = ("map", "list", "object", "integer", "number", "string", "boolean")


def anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped,
    spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)   # a link: its text
    text = text.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def headings(text: str) -> Iterator[tuple[int, str, int]]:
    """(level, heading text, line index) of each heading outside code blocks."""
    fenced = False
    for i, line in enumerate(text.splitlines()):
        if line.startswith("```"):
            fenced = not fenced
            continue
        m = None if fenced else _HEADING.match(line)
        if m:
            yield len(m.group(1)), m.group(2), i


def anchors(text: str) -> set[str]:
    return {anchor(h) for _, h, _ in headings(text)}


@dataclass(frozen=True)
class Key:
    """One row of a key table: its path, relative to the object the table
    describes, and what its type cell says."""

    path: str
    type_text: str
    meaning: str = ""

    @property
    def optional(self) -> bool:
        return "optional" in self.type_text

    @property
    def nullable(self) -> bool:
        return re.search(r"\bnull\b", self.type_text) is not None

    @property
    def ref(self) -> str | None:
        """The object (anchor) this key holds, or holds a list of."""
        m = _REF.search(self.type_text)
        return m.group(1) if m else None

    @property
    def kind(self) -> str:
        """The first type word: map, list, object, integer, number, string, boolean."""
        text = _REF.sub("]", self.type_text)
        words = re.findall(r"[a-z]+", text)
        if self.ref and not (words and words[0] == "list"):
            return "object"
        for w in words:
            for kind in TYPE_WORDS:
                if w == kind or w == kind + "s":
                    return kind
        raise ValueError(f"docs/json.md: no type in {self.type_text!r} of `{self.path}`")

    @property
    def item_kind(self) -> str | None:
        """For `list of integers` and the like: the items' type word."""
        m = re.match(r"\s*list of (\w+?)s?\b", self.type_text)
        if m and m.group(1) in TYPE_WORDS and m.group(1) not in ("list", "map", "object"):
            return m.group(1)
        return None


@dataclass
class Shape:
    """A key table of docs/json.md: a document (`schema` set) or an object."""

    anchor: str
    title: str
    schema: str | None
    keys: dict[str, Key] = field(default_factory=dict)


@cache
def json_shapes(path: Path = DOCS / "json.md") -> dict[str, Shape]:
    """Every key table in docs/json.md, by the anchor of its section."""
    lines = path.read_text(encoding="utf-8").splitlines()
    shapes: dict[str, Shape] = {}
    current: Shape | None = None
    fenced = False
    for line in lines:
        if line.startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        m = _HEADING.match(line)
        if m:
            title = m.group(2)
            current = Shape(anchor(title), title, None)
            continue
        row = _ROW.match(line)
        if row and current is not None and _PATH.match(row.group(1)):
            if current.anchor not in shapes:
                shapes[current.anchor] = current
            current.keys[row.group(1)] = Key(row.group(1), row.group(2).strip(),
                                             row.group(3).strip())
    for shape in shapes.values():
        if "schema" in shape.keys:
            m = re.search(r'"(reaper-doctor/[a-z-]+/\d+)"', shape.keys["schema"].meaning)
            shape.schema = m.group(1) if m else None
    return shapes


def shape_of_schema(shapes: dict[str, Shape], schema: str) -> Shape:
    found = [s for s in shapes.values() if s.schema == schema]
    assert found, f"docs/json.md has no key table for {schema}"
    return found[0]


class Checker:
    """Walks real documents against the key tables, collecting problems.

    - every key of the output must be documented in its table (`undocumented`);
    - every value must have the documented type (`mistyped`);
    - every documented key that is not optional must be in each object it
      belongs to (`missing`); `seen` tells which parents were observed at
      all, so that a table row under a list that was always empty is known
      to be unchecked rather than wrongly reported.
    """

    def __init__(self, shapes: dict[str, Shape]) -> None:
        self.shapes = shapes
        self.undocumented: set[str] = set()
        self.mistyped: set[str] = set()
        self.missing: set[str] = set()
        self.seen: dict[str, set[str]] = {}        # anchor -> keys seen

    def check_document(self, doc: dict[str, Any]) -> None:
        shape = shape_of_schema(self.shapes, doc["schema"])
        self.check(doc, shape.anchor)

    def check(self, value: Any, anchor_: str) -> None:
        shape = self.shapes[anchor_]
        self._object(value, shape, "")

    def _object(self, obj: dict[str, Any], shape: Shape, prefix: str) -> None:
        where = f"#{shape.anchor}"
        if shape.anchor == "finding-object" and not prefix:
            self._evidence(obj)
        seen = self.seen.setdefault(shape.anchor, set())
        for name, value in obj.items():
            if name == TRIMMED:
                continue
            path = f"{prefix}{name}"
            key = shape.keys.get(path)
            if key is None:
                self.undocumented.add(f"{where} `{path}` = {json.dumps(value)[:60]}")
                continue
            seen.add(path)
            self._value(value, key, shape, where)
        for path, key in shape.keys.items():
            parent, _, name = path.rpartition(".")
            if (parent + "." if parent else "") == prefix and not key.optional \
                    and name not in obj:
                self.missing.add(f"{where} `{path}`")

    def _value(self, value: Any, key: Key, shape: Shape, where: str) -> None:
        if value is None:
            if not key.nullable:
                self.mistyped.add(f"{where} `{key.path}` is null, documented {key.type_text!r}")
            return
        if not _is(value, key.kind):
            self.mistyped.add(f"{where} `{key.path}` = {json.dumps(value)[:40]}, documented "
                              f"{key.type_text!r}")
            return
        if key.kind == "map":
            return
        if key.kind == "list":
            for item in value:
                if key.ref:
                    if isinstance(item, dict):
                        self._object(item, self.shapes[key.ref], "")
                    else:
                        self.mistyped.add(f"{where} `{key.path}[]` is not an object")
                elif key.item_kind:
                    if not _is(item, key.item_kind):
                        self.mistyped.add(f"{where} `{key.path}[]` = {item!r}, documented "
                                          f"{key.type_text!r}")
                elif isinstance(item, dict):
                    self._object(item, shape, f"{key.path}[].")
            return
        if key.kind == "object":
            if key.ref:
                self._object(value, self.shapes[key.ref], "")
            else:
                self._object(value, shape, f"{key.path}.")

    def _evidence(self, finding: dict[str, Any]) -> None:
        code, evidence = finding.get("code"), finding.get("evidence")
        if not isinstance(evidence, dict):
            return
        known = documented_evidence().get(str(code), set())
        for name in evidence:
            if name not in known:
                self.undocumented.add(f"findings.md#evidence {code} `{name}`")

    def problems(self) -> list[str]:
        return ([f"undocumented: {p}" for p in sorted(self.undocumented)]
                + [f"missing from the output: {p}" for p in sorted(self.missing)]
                + [f"wrong type: {p}" for p in sorted(self.mistyped)])


def assert_documented(doc: dict[str, Any]) -> Checker:
    """Fail unless `doc` (a document printed by `--json`) is exactly as
    docs/json.md and docs/findings.md describe it."""
    checker = Checker(json_shapes())
    checker.check_document(doc)
    problems = checker.problems()
    assert not problems, (
        f"{doc.get('schema')} and docs/json.md disagree (fix the output, or the table in "
        "docs/json.md / the evidence list in docs/findings.md):\n  " + "\n  ".join(problems))
    return checker


def _is(value: Any, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, {"string": str, "boolean": bool, "list": list,
                              "object": dict, "map": dict}[kind])


def json_examples(path: Path = DOCS / "json.md") -> Iterator[tuple[str, dict[str, Any]]]:
    """(section anchor, document) for each ```json block of docs/json.md
    that is a whole document (it has a `schema`)."""
    section, block = "", None
    for line in path.read_text(encoding="utf-8").splitlines():
        m = _HEADING.match(line)
        if block is None and m:
            section = anchor(m.group(2))
        elif line == "```json":
            block = []
        elif line == "```" and block is not None:
            doc = json.loads("\n".join(block))
            block = None
            if isinstance(doc, dict) and "schema" in doc:
                yield section, doc
        elif block is not None:
            block.append(line)


# ----------------------------------------------------------------------------
# findings.md, prometheus.md, links


def documented_codes(path: Path = DOCS / "findings.md") -> dict[str, tuple[str, str]]:
    """{code: (slug, severity)} from the code table of docs/findings.md."""
    codes = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^\|\s*\[?(RD\d{3})\]?(?:\([^)]*\))?\s*\|\s*`([a-z0-9-]+)`\s*\|\s*([a-z]+)",
                     line)
        if m:
            codes[m.group(1)] = (m.group(2), m.group(3))
    return codes


@cache
def documented_evidence(path: Path = DOCS / "findings.md") -> dict[str, set[str]]:
    """{code: evidence keys} from the bullets of the "Evidence" section of
    docs/findings.md: `- RD201: `key`, `key`...` (a bullet may name several
    codes before its colon and run over several lines)."""
    text = path.read_text(encoding="utf-8")
    section = text[text.index("\n## Evidence"):]
    section = section[:section.find("\n## ", 1)] if "\n## " in section[1:] else section
    bullets = re.split(r"\n(?=- )", section)
    keys: dict[str, set[str]] = {}
    for bullet in bullets:
        if not bullet.startswith("- "):
            continue
        bullet = bullet.split("\n\n")[0]
        head, _, rest = bullet.partition(":")
        for code in re.findall(r"RD\d{3}", head):
            keys.setdefault(code, set()).update(re.findall(r"`([a-z_0-9]+)`", rest))
    return keys


def documented_metrics(path: Path = DOCS / "prometheus.md") -> set[str]:
    """Metric names in the first column of the metric tables of docs/prometheus.md."""
    names = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^\|\s*`([a-z_:][a-z0-9_:]*)`", line)
        if m and "_" in m.group(1):
            names.add(m.group(1))
    return names


def relative_links(path: Path) -> Iterator[tuple[str, Path | None, str | None]]:
    """(link text as written, file it points to or None for the same page,
    anchor or None) for each relative link of a Markdown page, code blocks
    and inline code aside."""
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        line = re.sub(r"`[^`]*`", "", line)
        for target in _LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                continue   # http:, https:, mailto:
            file_part, _, frag = target.partition("#")
            yield target, (path.parent / file_part) if file_part else None, frag or None
