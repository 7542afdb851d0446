"""node_exporter's textfile collector: DIR/rdmapin.prom, replaced atomically.

node_exporter reads every ``*.prom`` in its directory at each scrape; a file caught half
written would be a torn exposition. So the bytes go to a temporary file in the same
directory whose name does not end in ``.prom`` (the collector skips it), are flushed to disk,
and the file is renamed over the old one (rename(2) is atomic within a filesystem): a reader
sees the old file or the new one, whole.
"""

from __future__ import annotations

import os
from pathlib import Path

NAME = "rdmapin.prom"


def write(directory: Path, body: bytes, name: str = NAME) -> Path:
    """Replace ``directory/name`` with ``body`` atomically; returns the path."""
    final = directory / name
    tmp = directory / f".{name}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(body)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, final)
    return final
