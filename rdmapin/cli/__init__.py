"""`rdmapin <command>`: parses arguments and renders; the work happens in the library.

Each command is a module of this package with ``add_parser(subparsers)`` (which sets
``func``) and a ``run(args) -> int``; this module only collects them. Data goes to stdout,
diagnostics to stderr as ``rdmapin: error: ... (hint: ...)``; exit 0 ok, 1 failure, 2 usage,
130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from rdmapin.errors import RdmapinError

COMMANDS = ("doctor", "pages", "inspect", "trace", "fragmap", "bench", "exporter")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rdmapin",
        description="RDMA memory registration, pinning, and what pinned memory does to the kernel.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"rdmapin.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"rdmapin.cli.{name}":
                raise
            continue
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="rdmapin: %(levelname)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except RdmapinError as e:
        print(f"rdmapin: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
