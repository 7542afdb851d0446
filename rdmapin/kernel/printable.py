"""Names other users choose, made safe to print: the one escaper every output uses.

A process's comm (any byte but NUL, up to 15: ``prctl(PR_SET_NAME)``, /proc/PID/comm) and
the paths in /proc/PID/maps (file names, memfd names) belong to whoever runs that process;
rdmapin runs as root and prints them. The readers here decode them with
``errors="surrogateescape"`` (fs/proc/base.c ``comm_show`` prints the bytes as they are;
fs/proc/task_mmu.c ``show_map_vma`` escapes only a newline, as ``\\012``), so every byte
reaches the renderer, and the renderer passes each such name through ``escape``:

- a character ``str.isprintable()`` rejects (the test ``repr()`` uses: C0 and C1 controls,
  DEL, format characters such as the bidi controls U+202A-U+202E and U+2066-U+2069 and the
  zero-width ones, the line and paragraph separators, surrogates, private use, unassigned,
  every separator but the ASCII space) becomes ``\\xNN`` below U+0080, ``\\uNNNN`` or
  ``\\UNNNNNNNN`` above (``\\x1b``, ``\\x0a``, ``\\u202e``, ``\\u0085``);
- a byte that is not UTF-8 becomes ``\\xNN`` (always 80 or above: ``\\xff``);
- a backslash becomes ``\\\\``, so no name can pass for another's escape;
- everything else, quotes, spaces and parentheses included, stays as it is.

The result is one line of printable text, and a different name never gives the same text
(``unescape`` recovers the bytes). JSON carries the same escaped text: ``escape_all`` before
``json.dumps``, so a JSON line is valid UTF-8 (no lone surrogates) and round-trips, and a
comm reads the same in text, JSON and Prometheus labels.
"""

from __future__ import annotations

import re
from typing import Any


def _one(c: str) -> str:
    o = ord(c)
    if c == "\\":
        return "\\\\"
    if 0xDC80 <= o <= 0xDCFF:  # a byte surrogateescape kept: not UTF-8
        return f"\\x{o - 0xDC00:02x}"
    if o < 0x80:
        return f"\\x{o:02x}"
    return f"\\u{o:04x}" if o <= 0xFFFF else f"\\U{o:08x}"


def escape(name: str) -> str:
    """``name`` as one line of printable text: 'ab\\udcff' -> 'ab\\\\xff', '\\x1b[2J' ->
    '\\\\x1b[2J'; a name that needs nothing comes back as it is."""
    if name.isprintable() and "\\" not in name:
        return name
    return "".join(c if c.isprintable() and c != "\\" else _one(c) for c in name)


_ESCAPE = re.compile(r"\\(?:\\|x([0-9a-f]{2})|u([0-9a-f]{4})|U([0-9a-f]{8}))")


def unescape(text: str) -> bytes:
    """The bytes ``escape`` was given (as UTF-8, undecodable bytes restored)."""
    out, pos = bytearray(), 0
    for m in _ESCAPE.finditer(text):
        out += text[pos:m.start()].encode()
        x, u = m.group(1), m.group(2) or m.group(3)
        if x is not None:
            out.append(int(x, 16))
        elif u is not None:
            out += chr(int(u, 16)).encode("utf-8", "surrogatepass")
        else:
            out += b"\\"
        pos = m.end()
    return bytes(out + text[pos:].encode())


def escape_all(obj: Any) -> Any:
    """``obj`` for ``json.dumps`` with every string in it (keys too) escaped."""
    if isinstance(obj, str):
        return escape(obj)
    if isinstance(obj, dict):
        return {escape_all(k): escape_all(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [escape_all(v) for v in obj]
    return obj
