"""Argument types checked at parse time, before any expensive work (a scan of all memory, a
bcc compile): a bad value is a usage error (exit 2) that says what was expected."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path


def positive_float(text: str) -> float:
    """Seconds, intervals: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be > 0 (and finite)")
    return value


def positive_int(text: str) -> int:
    """Counts and pids: an integer > 0."""
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be > 0")
    return value


def host_port(text: str) -> tuple[str, int]:
    """HOST:PORT (HOST may be empty: 127.0.0.1), PORT 1-65535."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT, e.g. 127.0.0.1:9464")
    number = int(port)
    if not 1 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: port {number} is not in 1-65535")
    return host.strip("[]") or "127.0.0.1", number


def output_file(text: str) -> Path:
    """A file to write: its directory exists and is writable, and it is not a directory."""
    path = Path(text)
    parent = path.parent if str(path.parent) else Path(".")
    if not text or path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: expected a file name, not a directory")
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: directory {str(parent)!r} does not exist "
                                         f"(mkdir -p {parent})")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{text!r}: directory {str(parent)!r} is not writable")
    return path


def listen_address(text: str) -> tuple[str, int]:
    """HOST:PORT to listen on, as host_port, but PORT may be 0 (any free port)."""
    host, sep, port = text.rpartition(":")
    if sep and port == "0":
        return host.strip("[]") or "127.0.0.1", 0
    return host_port(text)


def writable_dir(text: str) -> Path:
    """A directory that exists and that this user may create files in."""
    path = Path(text)
    if not text or not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: not a directory (mkdir -p {text or 'DIR'})")
    if not os.access(path, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{text!r}: directory is not writable by this user")
    return path
