"""Line-by-line reading of a kernel text file where a line the reader cannot parse is a
KernelFormatError naming the file and the line, never an IndexError or ValueError from
inside a parser.

    with lines(text, "/proc/vmstat") as src:
        for line in src:
            name, value = line.split()
            out[name] = int(value)
"""

from __future__ import annotations

from collections.abc import Iterator
from types import TracebackType

from rdmapin.errors import KernelFormatError, RdmapinOSError

_PARSE_ERRORS = (ValueError, IndexError, KeyError, TypeError, AttributeError, OverflowError)


def read_proc(path: str) -> str:
    """A /proc/PID file whole, its names kept as the kernel wrote them: any bytes (those not
    UTF-8 kept by surrogateescape for rdmapin.kernel.printable.escape) and no newline
    translation (a \r in a file name is not a line end). RdmapinOSError when it cannot."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
            return f.read()
    except OSError as e:
        raise RdmapinOSError(e.errno or 0, f"read {path}",
                             hint="is the pid alive? another user's process needs root") from e


class lines:  # lower case: used like open()
    def __init__(self, text: str, path: str) -> None:
        self.text, self.path = text, path
        self.lineno, self.line = 0, ""

    def __enter__(self) -> lines:
        return self

    def __iter__(self) -> Iterator[str]:
        # At "\n" only: str.splitlines also splits at \r, \v, \f, \x1c-\x1e, \x85,
        # U+2028 and U+2029, which a comm (status' Name:) or a file name (maps) may hold.
        split = self.text.split("\n")
        if split[-1] == "":  # the newline ending the last line
            split.pop()
        for lineno, line in enumerate(split, 1):
            self.lineno, self.line = lineno, line
            yield line

    def fail(self, why: str) -> KernelFormatError:
        """The error for the current line, for checks the parser makes itself."""
        return KernelFormatError(self.path, self.lineno, self.line, why)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is not None and isinstance(exc, _PARSE_ERRORS) and \
                not isinstance(exc, KernelFormatError):
            raise self.fail(f"{type(exc).__name__}: {exc}") from None
