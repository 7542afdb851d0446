"""Bytes for people, in binary units: the one formatter every output uses, and its parser."""

from __future__ import annotations

import re

_SIZE = re.compile(r"(\d+)\s*([kKmMgGtT]?)[iI]?[bB]?")
_UNITS = (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10))


def human(nbytes: int) -> str:
    """1536 -> '1.5 KiB'; exact multiples print without decimals ('2 MiB', '0 B')."""
    for unit, size in _UNITS:
        if nbytes >= size:
            v = nbytes / size
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{nbytes} B"


def short(nbytes: int) -> str:
    """At most 6 characters for table columns: 0, 512K, 1.5G, 24G."""
    for unit, size in _UNITS:
        if nbytes >= size:
            v = nbytes / size
            return f"{v:.0f}{unit[0]}" if v >= 10 or v == int(v) else f"{v:.1f}{unit[0]}"
    return str(nbytes)


def parse_size(text: str) -> int:
    """'4096', '4K', '2MiB', '1G', '0x1000' -> bytes; ValueError that says the forms."""
    if text.strip().lower().startswith("0x"):
        return int(text, 16)
    m = _SIZE.fullmatch(text.strip())
    if not m:
        raise ValueError(f"size {text!r}: expected N, NK, NM, NG (KiB, MiB ...) or 0xHEX")
    return int(m.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}[m.group(2).lower()]
