"""The kernel's RDMA resource tracking: every MR of every process, as the kernel sees it.

Read through iproute2's ``rdma -j -d res show mr`` (the nldev netlink RES_MR_GET dump).
Per MR the kernel gives the device, MR number, length, PD number, pid and comm, and the
keys only to a reader with CAP_NET_ADMIN (drivers/infiniband/core/nldev.c,
fill_res_mr_entry). Linux 6.1 sends no IOVA (measured in the guest: ``{"ifname":"rxe0",
"mrn":0,"rkey":"0","lkey":"201","mrlen":1048576,"pdn":1,"pid":301,"comm":"python"}``), so
for another process the MR's length and keys are known, its address is not. It is how
rdmapin knows the MRs of a process it is not running in. 6.12 sends the same attributes
as 6.1 (no IOVA either), checked in both guests.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from rdmapin.errors import RdmapinError
from rdmapin.kernel.textfile import lines

IB_CLASS = Path("/sys/class/infiniband")


@dataclass(frozen=True)
class KernelMr:
    """One MR from the kernel's resource tracker; None where the kernel did not say."""

    device: str
    mrn: int
    length: int
    pid: int | None
    comm: str | None
    pdn: int | None
    lkey: int | None
    rkey: int | None
    iova: int | None

    def to_dict(self) -> dict:
        return asdict(self)


def _int(value: object) -> int | None:
    """A number rdma printed as a JSON number or a decimal string."""
    if value is None:
        return None
    return value if isinstance(value, int) else int(str(value), 0)


def _hex(value: object) -> int | None:
    """Keys and IOVA: iproute2 6.1 prints them as bare hex strings ("201" is 0x201)."""
    if value is None:
        return None
    return value if isinstance(value, int) else int(str(value), 16)


SOURCE = "rdma -j -d res show mr"


def parse(text: str, path: str = SOURCE) -> list[KernelMr]:
    """Parse ``rdma -j [-d] res show mr`` output (one JSON array, or one per line); a line
    that is not the JSON iproute2 prints is a KernelFormatError naming it."""
    out = []
    with lines(text, path) as src:
        for chunk in src:
            chunk = chunk.strip()
            if not chunk:
                continue
            data = json.loads(chunk, strict=False)
            stack = data if isinstance(data, list) else [data]
            rows: list[dict] = []
            for item in stack:
                if isinstance(item, list):
                    rows.extend(x for x in item if isinstance(x, dict))
                elif isinstance(item, dict):
                    rows.append(item)
            for r in rows:
                if "mrlen" not in r:
                    continue
                comm = r.get("comm")
                out.append(KernelMr(
                    device=str(r.get("ifname", r.get("dev", "?"))),
                    mrn=int(r.get("mrn", -1)),
                    length=int(r["mrlen"]),
                    pid=_int(r.get("pid")),
                    comm=None if comm is None else str(comm),
                    pdn=_int(r.get("pdn")),
                    lkey=_hex(r.get("lkey")),
                    rkey=_hex(r.get("rkey")),
                    iova=_hex(r.get("iova")),
                ))
    return out


def available() -> str | None:
    """None when the kernel's MR tracking can be read here, else why not (one line)."""
    if not IB_CLASS.is_dir() or not any(IB_CLASS.iterdir()):
        return "no RDMA device (/sys/class/infiniband is empty or missing)"
    if shutil.which("rdma") is None:
        return "iproute2's rdma tool is not installed"
    return None


def mrs(pid: int | None = None) -> list[KernelMr]:
    """Kernel-reported MRs, all or those of ``pid``; [] on a machine without RDMA devices."""
    if available() is not None:
        return []
    argv = ["rdma", "-j", "-d", "res", "show", "mr"]
    if pid is not None:
        argv += ["pid", str(int(pid))]
    proc = subprocess.run(argv, capture_output=True, check=False)
    if proc.returncode != 0:
        raise RdmapinError(f"{' '.join(argv)} failed (exit {proc.returncode}): "
                           f"{proc.stderr.decode(errors='replace').strip()}",
                           hint="needs iproute2 with RDMA support and the rdma netlink module")
    # A comm is any bytes but NUL, and iproute2 prints it raw inside its JSON: decoded as it
    # is (surrogateescape, no newline translation), parsed with control characters allowed.
    found = parse(proc.stdout.decode("utf-8", "surrogateescape"))
    if pid is not None:
        found = [m for m in found if m.pid == pid]
    return found
