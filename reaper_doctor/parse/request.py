"""The bytes of a `run --request TEXT`: a request typed on a command line.

A shell cannot easily pass CR and LF, so the text takes the escapes a
reader expects from C and Python: ``\\r``, ``\\n``, ``\\t``, ``\\0``, ``\\\\``
and ``\\xHH``. Everything else is sent as UTF-8. Pure: no I/O.
"""

from __future__ import annotations

_SIMPLE = {"r": b"\r", "n": b"\n", "t": b"\t", "0": b"\0", "\\": b"\\"}
_HEX = frozenset("0123456789abcdefABCDEF")


def parse_request_text(text: str) -> bytes:
    r"""`text` with its escapes turned into bytes (`"PING\r\n"` -> b"PING\r\n").

    ValueError, saying where, for an unknown or cut-off escape or an empty
    request."""
    out = bytearray()
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "\\":
            out += ch.encode("utf-8")
            i += 1
            continue
        code = text[i + 1:i + 2]
        if code in _SIMPLE:
            out += _SIMPLE[code]
            i += 2
        elif code == "x" and len(text) >= i + 4 and set(text[i + 2:i + 4]) <= _HEX:
            out.append(int(text[i + 2:i + 4], 16))
            i += 4
        else:
            shown = text[i:i + 4] if code == "x" else text[i:i + 2]
            raise ValueError(f"--request: unknown escape {shown!r} at character {i + 1} "
                             r"(known: \r \n \t \0 \\ \xHH)")
    if not out:
        raise ValueError("--request is empty")
    return bytes(out)
