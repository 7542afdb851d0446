"""Files the package reads at run time, found with importlib.resources.

The repository keeps them at the top level (``bpf/``, ``csrc/``, the design card's layout);
``rdmapin/bpf`` and ``rdmapin/csrc`` are symlinks to those, so a checkout, an editable
install and an installed wheel (where the build copied them into the package) all find them
inside the package, never by a path relative to a checkout.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from rdmapin.errors import UnsupportedError


def _dir(name: str) -> Path:
    found = importlib.resources.files("rdmapin") / name
    if not isinstance(found, Path) or not found.is_dir():
        raise UnsupportedError(f"rdmapin's {name}/ sources are not in the installed package "
                               f"({found})",
                               hint="reinstall rdmapin from its wheel or sdist "
                                    "(pip install --force-reinstall rdmapin)")
    return found


def bpf_dir() -> Path:
    """bcc C sources (``bpf/*.c``) and their shared header: the tracer compiles these."""
    return _dir("bpf")


def floor_source() -> Path:
    """``csrc/reg_floor.c``: the C floor ``rdmapin bench`` compiles and compares against."""
    return _dir("csrc") / "reg_floor.c"
