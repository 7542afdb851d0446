"""Explanations read the real state they cite: the memlock limit and VmPin of the process,
free hugepages per node, and the absence of an RDMA device on a machine without one."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

import rdmapin
from rdmapin import explain
from rdmapin.kernel.units import human

CHILD = r"""
import json, resource
from rdmapin import explain
from rdmapin.kernel import procfs
e = explain.registration(12, call="ibv_reg_mr", addr=0x100000, length=4 << 20, access=1)
print(json.dumps({"type": type(e).__name__, "msg": str(e),
                  "limit": resource.getrlimit(resource.RLIMIT_MEMLOCK)[0],
                  "vmpin": procfs.vm_pin()}))
"""


def test_memlock_explanation_cites_limit_and_vmpin_of_the_process():
    if not (shutil.which("prlimit") and shutil.which("setpriv")):
        pytest.skip("needs prlimit and setpriv (util-linux)")
    argv = ["prlimit", "--memlock=1048576:1048576", "setpriv", "--bounding-set=-ipc_lock",
            "--inh-caps=-ipc_lock", "--", sys.executable, "-c", CHILD]
    res = json.loads(subprocess.run(argv, check=True, capture_output=True,
                                    text=True).stdout)
    assert res["limit"] == 1 << 20
    assert res["type"] == "MemlockError"
    assert "RLIMIT_MEMLOCK 1 MiB" in res["msg"]
    assert f"VmPin {human(res['vmpin'])}," in res["msg"]
    assert "pinning 4 MiB (1024 pages)" in res["msg"]
    assert "ulimit -l" in res["msg"] and "limits.conf" in res["msg"]


def test_enomem_with_cap_ipc_lock_is_not_memlock():
    if not explain.has_cap_ipc_lock():
        pytest.skip("this process lacks CAP_IPC_LOCK")
    e = explain.registration(12, call="ibv_reg_mr", addr=0x100000, length=1 << 40, access=1)
    assert type(e) is rdmapin.RegistrationError
    assert "not memlock" in str(e) and "CAP_IPC_LOCK yes" in str(e)


def test_no_device_explains_how_to_get_one():
    if rdmapin.devices():
        pytest.skip("this machine has an RDMA device")
    with pytest.raises(rdmapin.NoDeviceError) as ei:
        rdmapin.open_device()
    msg = str(ei.value)
    assert "rdma link add rxe0 type rxe netdev" in msg and "ci/vm/run" in msg


def test_unsupported_errno_is_unsupported_error():
    e = explain.registration(95, call="ibv_reg_mr", addr=0x1000, length=4096, access=64)
    assert isinstance(e, rdmapin.UnsupportedError)


def test_efault_on_unmapped_range_counts_the_hole():
    e = explain.registration(14, call="ibv_reg_mr", addr=0x1000, length=8192, access=1)
    assert "8 KiB of the range is not mapped" in str(e)
