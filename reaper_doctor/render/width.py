"""Text that fits a terminal of a given width: filled paragraphs, narrowed tables.

Every text renderer lays its lines out with these, so a report reads the
same at 80 columns as on a wide screen. Words are never broken: a token
longer than the line (a long path) stands on a line of its own and is the
only thing that may run past the edge.
"""

from __future__ import annotations

import re
import textwrap
from typing import Any, Iterable, Sequence

DEFAULT_WIDTH = 80   # when neither COLUMNS nor a terminal says (the CLI measures it)
MIN_WIDTH = 40       # narrower than this, the layout wraps too much to read
COLUMN_GAP = 2       # tabulate's "simple" and "plain" put two spaces between columns
COMFORTABLE = 16     # a wrapped column this wide still reads well
LONG_WORD_FLOOR = 8   # below that, a long word (a path) breaks inside, as a last resort

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_HYPHEN_PARTS = re.compile(r"[^-]*-|[^-]+")   # "a-b-c" -> "a-", "b-", "c"
# "PID 12", "UID 0", "port 8080", "exit 3": a line never ends between the two.
_GLUED = re.compile(r"\b(PIDs?|pids?|UID|uid|port|fd|fds|exit|returns) (?=\d)|\b(ulimit) (?=-)")


def visible_len(text: str) -> int:
    """Columns `text` takes on a terminal: colour codes take none."""
    return len(_ANSI.sub("", text))


def widest_line(text: str) -> int:
    return max((visible_len(line) for line in text.splitlines()), default=0)


def fill(text: str, width: int, indent: str = "", hang: str | None = None) -> str:
    """`text` as lines of at most `width` columns: the first after `indent`,
    the others after `hang` (default: `indent`). Breaks only at spaces, never
    at a no-break space (U+00A0), which comes out as a space."""
    text = _GLUED.sub(lambda m: (m.group(1) or m.group(2)) + "\xa0", text)
    return (textwrap.fill(text, width, initial_indent=indent,
                          subsequent_indent=indent if hang is None else hang,
                          break_long_words=False, break_on_hyphens=False)
            or indent.rstrip()).replace("\xa0", " ")


def join_fitted(items: Iterable[str], width: int, sep: str = " · ", indent: str = "",
                hang: str | None = None) -> str:
    """Items joined by `sep` after `indent` (which may be a label: "Explained: "),
    a new line (after `hang`) before an item that would cross `width`; an
    item is never split."""
    hang = indent if hang is None else hang
    # A line broken after a comma keeps it; after " · " nothing is left hanging.
    trailing = sep.strip() if sep.strip() in (",", ";") else ""
    lines: list[str] = []
    line = ""
    for item in items:
        if not line and not lines and indent.strip() and visible_len(indent + item) > width:
            lines.append(indent.rstrip())    # a label, then its items under it
            line = hang + item
        elif not line:
            line = (hang if lines else indent) + item
        elif visible_len(line) + len(sep) + visible_len(item) <= width:
            line += sep + item
        else:
            lines.append(line + trailing)
            line = hang + item
    if line:
        lines.append(line)
    return "\n".join(lines)


def fill_prose(text: str, width: int) -> str:
    """Refill the paragraphs of an indented text (a heading, then lines
    indented by two) whose lines run past `width`. Lines indented by four
    or more are code or a table: they are kept as written."""
    out: list[str] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        indent = len(line) - len(line.lstrip(" "))
        if not line.strip() or indent >= 4:
            out.append(line)
            i += 1
            continue
        j = i + 1
        while (j < len(lines) and lines[j].strip()
               and len(lines[j]) - len(lines[j].lstrip(" ")) == indent
               and not lines[j].lstrip().startswith(("- ", "* "))):
            j += 1
        paragraph = lines[i:j]
        if any(len(p) > width for p in paragraph):
            bullet = "  " if line.lstrip().startswith(("- ", "* ")) else ""
            out.append(fill(" ".join(p.strip() for p in paragraph), width,
                            " " * indent, " " * indent + bullet))
        else:
            out.extend(paragraph)
        i = j
    return "\n".join(out)


def fit_table(rows: Sequence[Sequence[Any]], headers: Sequence[str] = (), width: int = DEFAULT_WIDTH,
              *, tablefmt: str = "simple", last: Iterable[int] = (), **options: Any) -> str:
    """tabulate's table when it fits `width`; otherwise the same layout
    ("simple" or "plain") with its widest columns wrapped at spaces until
    it fits, the columns in `last` only when the others are as narrow as
    they go. A cell is never narrower than its longest word, and a column
    with colour is never wrapped. Past that, as a last resort, a word
    longer than LONG_WORD_FLOOR (a path) breaks inside: the table fits
    whenever its columns can each keep that many characters."""
    from tabulate import tabulate   # here: `reaper-doctor --version` must not pay for it

    options.setdefault("disable_numparse", True)
    table = tabulate(rows, headers=headers, tablefmt=tablefmt, **options)
    if widest_line(table) <= width or tablefmt not in ("simple", "plain"):
        return table
    cells = [[str(c) for c in row] for row in rows]
    heads = [str(h) for h in headers]
    n = max([len(heads), *(len(r) for r in cells)], default=0)
    cells = [r + [""] * (n - len(r)) for r in cells]
    heads = heads + [""] * (n - len(heads)) if heads else []
    columns = [[r[i] for r in cells] + ([heads[i]] if heads else []) for i in range(n)]
    natural = [max([0, *(widest_line(c) for c in col)]) for col in columns]
    floor = [natural[i] if any("\x1b" in c for c in col)
             else max([0, *(len(word) for c in col for word in c.split())])
             for i, col in enumerate(columns)]
    # Past the longest word, a hyphenated one ("container-init-fixed") may
    # break after a hyphen.
    hyphen_floor = [natural[i] if any("\x1b" in c for c in col)
                    else max([0, *(len(part) for c in col for word in c.split()
                                   for part in _HYPHEN_PARTS.findall(word))])
                    for i, col in enumerate(columns)]
    widths = list(natural)
    budget = width - COLUMN_GAP * (n - 1)
    # First the other columns, down to a comfortable width; then every
    # column, down to its longest word; then hyphenated words break.
    late = set(last)
    comfortable = [max(floor[i], min(natural[i], COMFORTABLE)) for i in range(n)]
    long_word_floor = [hyphen_floor[i] if any("\x1b" in c for c in col)
                       else min(hyphen_floor[i], LONG_WORD_FLOOR)
                       for i, col in enumerate(columns)]
    for allowed, low in (([i for i in range(n) if i not in late], comfortable),
                         (list(range(n)), floor), (list(range(n)), hyphen_floor),
                         (list(range(n)), long_word_floor)):
        while sum(widths) > budget:
            shrinkable = [i for i in allowed if widths[i] > low[i]]
            if not shrinkable:
                break
            widths[max(shrinkable, key=lambda i: widths[i])] -= 1
    colalign = options.get("colalign")
    numeric = [colalign[i] == "right" if colalign and i < len(colalign) else
               not options["disable_numparse"] and bool(cells)
               and all(_is_number(r[i]) for r in cells) for i in range(n)]
    lines: list[str] = []

    def add(row: Sequence[str]) -> None:
        parts = [_wrap_cell(c, widths[i]).split("\n") for i, c in enumerate(row)]
        for k in range(max(len(p) for p in parts)):
            texts = [p[k] if k < len(p) else "" for p in parts]
            lines.append("  ".join(_pad(t, widths[i], numeric[i]) for i, t in enumerate(texts))
                         .rstrip())

    if heads:
        add(heads)
        if tablefmt == "simple":
            lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        add(row)
    return "\n".join(lines)


def _is_number(text: str) -> bool:
    """"12", "-3", "+0.5": what tabulate aligns right when it parses numbers."""
    return text.lstrip("+-").replace(".", "", 1).isdigit()


def _pad(text: str, width: int, right: bool) -> str:
    space = " " * max(0, width - visible_len(text))
    return space + text if right else text + space


def _wrap_cell(text: str, width: int) -> str:
    if "\x1b" in text or widest_line(text) <= width:
        return text
    return "\n".join(
        fill(line, width) if max(map(len, line.split()), default=0) <= width else
        textwrap.fill(line, width, break_long_words=True, break_on_hyphens=True)
        for line in text.split("\n"))


__all__ = ["visible_len", "widest_line", "fill", "join_fitted", "fill_prose",
           "fit_table", "DEFAULT_WIDTH"]
