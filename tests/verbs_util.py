"""Shared helpers of the verbs tests (kept apart from the fixtures plugin, which pytest
loads itself)."""

from __future__ import annotations

import json
import subprocess

DEVICE = "rxe0"


def rdma_res(kind: str) -> list[dict]:
    """`rdma -j resource show KIND` (mr, pd), the kernel's resource tracking."""
    out = subprocess.run(["rdma", "-j", "resource", "show", kind], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out) if out.strip() else []
