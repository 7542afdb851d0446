"""The running kernel's build options, when it publishes them (/proc/config.gz or /boot).

Used only to explain a missing feature ("built without CONFIG_INFINIBAND") in a fix line;
the checks themselves probe the feature, never the config.
"""

from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path


@functools.cache
def options() -> dict[str, str] | None:
    """CONFIG_* -> value ('y', 'm', a string, or 'n' for "is not set"); None if unpublished."""
    text = None
    try:
        text = gzip.decompress(Path("/proc/config.gz").read_bytes()).decode()
    except OSError:
        try:
            text = Path(f"/boot/config-{os.uname().release}").read_text()
        except OSError:
            return None
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("CONFIG_"):
            name, _, value = line.partition("=")
            out[name] = value.strip('"')
        elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
            out[line[2:].split()[0]] = "n"
    return out


def value(name: str) -> str | None:
    """'y'/'m'/'n'/string, or None when the kernel does not publish its config."""
    opts = options()
    if opts is None:
        return None
    return opts.get(name, "n")
