"""/proc/kallsyms: the addresses of the few kernel symbols rdmapin needs.

Mirrors kernel/kallsyms.c's ``s_show`` (``ADDRESS TYPE NAME [MODULE]``); addresses read as 0
without CAP_SYSLOG (kptr_restrict), which :func:`lookup` treats as absent. Checked on 6.1,
6.12 and 6.18.
"""

from __future__ import annotations

import functools

PATH = "/proc/kallsyms"
WANTED = ("vmemmap_base", "bpf_ringbuf_output")


@functools.cache
def _all() -> dict[str, int]:
    """Addresses of the few symbols rdmapin needs, in one pass over /proc/kallsyms."""
    wanted = {n.encode() for n in WANTED}
    out: dict[str, int] = {}
    try:
        with open(PATH, "rb") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2] in wanted and parts[2].decode() not in out:
                    addr = int(parts[0], 16)
                    if addr:
                        out[parts[2].decode()] = addr
    except OSError:
        pass
    return out


def lookup(names: tuple[str, ...]) -> dict[str, int]:
    """The addresses of ``names`` that are known (one of WANTED, readable, non-zero)."""
    syms = _all()
    return {n: syms[n] for n in names if n in syms}
