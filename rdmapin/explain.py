"""Turn a failed registration or allocation into an error that says why and how to fix it.

Only runs on the failure path, so it may read /proc and /sys freely: the memlock limit
against VmPin (what ib_umem_get charges), the mappings under the range, max_map_count,
max_mr_size, free hugetlb pages per node.
"""

from __future__ import annotations

import errno as _errno
import os
import resource
from pathlib import Path

from rdmapin import backing
from rdmapin.access import NEEDS_LOCAL_WRITE, WRITABLE, Access, describe
from rdmapin.errors import (
    FilePinError,
    FsDaxPinError,
    HugepagesError,
    MemlockError,
    NoDeviceError,
    RegistrationError,
    UnsupportedError,
)
from rdmapin.kernel import maps, procfs
from rdmapin.kernel.arch import PAGE_SIZE as PAGE
from rdmapin.kernel.printable import escape
from rdmapin.kernel.units import human

CAP_IPC_LOCK = 14
NODES = Path("/sys/devices/system/node")
HUGEPAGES = Path("/sys/kernel/mm/hugepages")


def pages_spanned(addr: int, length: int) -> int:
    """4K pages ib_umem_get pins (and charges to pinned_vm) for [addr, addr+length)."""
    if length <= 0:
        return 0
    first = addr // PAGE
    last = (addr + length - 1) // PAGE
    return last - first + 1


def has_cap_ipc_lock() -> bool:
    eff = str(procfs.status().get("CapEff", "0"))
    return bool(int(eff, 16) >> CAP_IPC_LOCK & 1)


def vmas(start: int, end: int) -> list[maps.Vma]:
    """The mappings of this process that overlap [start, end)."""
    return maps.covering("self", start, end - start, detail=False)


def _holes(start: int, end: int, vmas: list[maps.Vma]) -> int:
    """Bytes of [start, end) that no mapping covers."""
    covered, pos = 0, start
    for v in vmas:
        lo, hi = max(v.start, pos), min(v.end, end)
        if hi > lo:
            covered += hi - lo
            pos = hi
    return (end - start) - covered


def kernel_page_size(addr: int) -> int | None:
    """KernelPageSize of the mapping holding addr (2 MiB for hugetlb 2M), from smaps."""
    found = maps.covering("self", addr, 1, detail=True)
    return found[0].kernel_page_size if found else None


def hugepages_free(size: int) -> dict[int, int]:
    """{node: free hugetlb pages of ``size`` bytes} (node -1 = the system total)."""
    name = f"hugepages-{size // 1024}kB"
    out = {}
    for node in sorted(NODES.glob("node[0-9]*"), key=lambda p: int(p.name[4:])):
        f = node / "hugepages" / name / "free_hugepages"
        if f.exists():
            out[int(node.name[4:])] = int(f.read_text())
    total = HUGEPAGES / name / "free_hugepages"
    out[-1] = int(total.read_text()) if total.exists() else 0
    return out


def hugepages_error(err: int, size: int, length: int, node: int | None,
                    what: str) -> HugepagesError:
    free = hugepages_free(size)
    need = -(-length // size)
    per_node = ", ".join(f"node{n}: {c}" for n, c in free.items() if n >= 0) or "none"
    where = f"node {node}" if node is not None else "the system"
    target = (f"/sys/devices/system/node/node{node}/hugepages/hugepages-{size // 1024}kB/"
              "nr_hugepages" if node is not None else "/proc/sys/vm/nr_hugepages"
              if size == 2 << 20 else f"{HUGEPAGES}/hugepages-{size // 1024}kB/nr_hugepages")
    return HugepagesError(
        err, f"{what}: needs {need} free {human(size)} hugetlb pages on {where}; "
             f"free per node: {per_node} (total {free.get(-1, 0)})",
        hint=f"reserve them: echo {need} > {target} (or boot with hugepages=N; "
             f"ci/vm/run --hugepages N)")


def no_device(name: str | None, available: list[str], err: int = _errno.ENODEV) -> NoDeviceError:
    if available:
        return NoDeviceError(err, f"no RDMA device named {name!r}; present: "
                                  f"{', '.join(available)}",
                             hint="pick one of those, or None for the first")
    return NoDeviceError(
        err, "no RDMA device on this machine (/sys/class/infiniband is empty)",
        hint="create a soft-RoCE one: modprobe rdma_rxe && rdma link add rxe0 type rxe "
             "netdev IFACE; or run inside the test VM: ci/vm/run -- CMD")


def registration(err: int, *, call: str, addr: int, length: int, access: int,
                 max_mr_size: int | None = None,
                 device: str = "") -> RegistrationError | UnsupportedError:
    """The explained exception for ibv_reg_mr* failing with ``err`` on [addr, addr+length)."""
    what = (f"{call}({human(length)} at {addr:#x}, access={describe(access)}"
            f"{', ' + device if device else ''})")
    if err in (_errno.EOPNOTSUPP, _errno.ENOTSUP, _errno.EPROTONOSUPPORT):
        fsdax = _files(addr, length, "fsdax")
        if fsdax:
            return _fsdax(err, what, fsdax[0][1])
        return UnsupportedError(f"{what}: the device does not support this registration "
                               f"({_errno.errorcode.get(err, err)})",
                               hint="drop ON_DEMAND/RELAXED_ORDERING or use another device")
    if err == _errno.ENOMEM:
        return _enomem(err, what, addr, length, max_mr_size)
    if err == _errno.EFAULT:
        return _efault(err, what, addr, length, access)
    if err == _errno.EINVAL:
        return _einval(err, what, addr, length, access, max_mr_size)
    if err == _errno.EACCES:
        return RegistrationError(err, f"{what}: the kernel refused the access flags",
                                 hint="REMOTE_* on a read-only mapping, or the device lacks "
                                      "the access; check Access and the mapping's protection")
    return RegistrationError(err, what)


def _enomem(err: int, what: str, addr: int, length: int,
            max_mr_size: int | None) -> RegistrationError:
    npages = pages_spanned(addr, length)
    request = npages * PAGE
    soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    st = procfs.status()
    vm_pin, vm_lck = int(st.get("VmPin", 0)), int(st.get("VmLck", 0))
    cap = has_cap_ipc_lock()
    if not cap and soft != resource.RLIM_INFINITY and vm_pin + request > soft:
        return MemlockError(
            err, f"{what}: pinning {human(request)} ({npages} pages) would exceed "
                 f"RLIMIT_MEMLOCK {human(soft)}; already pinned VmPin {human(vm_pin)}, "
                 f"locked VmLck {human(vm_lck)}; no CAP_IPC_LOCK",
            hint=f"raise the limit: ulimit -l {(vm_pin + request) // 1024 + 1} (KiB) or "
                 "'unlimited'; or '* - memlock unlimited' in /etc/security/limits.conf "
                 "(LimitMEMLOCK= for systemd units); or grant CAP_IPC_LOCK")
    if max_mr_size and length > max_mr_size:
        return RegistrationError(err, f"{what}: {human(length)} exceeds the device's "
                                      f"max_mr_size {human(max_mr_size)}",
                                 hint="split the buffer into several MRs")
    try:
        max_maps = int(procfs.sysctl("vm/max_map_count"))
        nmaps = maps.count("self")
    except OSError:
        max_maps = nmaps = 0
    if max_maps and nmaps >= max_maps - 2:
        return RegistrationError(err, f"{what}: {nmaps} mappings, vm.max_map_count is "
                                      f"{max_maps}",
                                 hint="sysctl -w vm.max_map_count=N, or use fewer, larger "
                                      "buffers")
    return RegistrationError(
        err, f"{what}: out of memory but not memlock (limit "
             f"{'unlimited' if soft == resource.RLIM_INFINITY else human(soft)}, VmPin "
             f"{human(vm_pin)}, CAP_IPC_LOCK {'yes' if cap else 'no'}); the long-term pin "
             "may have failed to migrate pages out of ZONE_MOVABLE/CMA, or the kernel is "
             "out of memory",
        hint="check /proc/vmstat pgmigrate_fail and free memory; trace it with "
             "`rdmapin trace`")


def _efault(err: int, what: str, addr: int, length: int, access: int) -> RegistrationError:
    found = vmas(addr, addr + length)
    hole = _holes(addr, addr + length, found)
    if hole:
        return RegistrationError(err, f"{what}: {human(hole)} of the range is not mapped",
                                 hint="register memory the process owns, for as long as it "
                                      "stays mapped")
    if access & WRITABLE and any("w" not in v.perms for v in found):
        ro = next(v for v in found if "w" not in v.perms)
        return RegistrationError(err, f"{what}: the mapping {ro.start:#x}-{ro.end:#x} "
                                      f"({ro.perms} {escape(ro.path)}) is read-only but the access "
                                      f"{describe(access & WRITABLE)} needs write",
                                 hint="register read-only memory with "
                                      "Access.REMOTE_READ only, or map it writable")
    if access & WRITABLE:
        shared = [(v, f) for v, f in _files(addr, length, "pagecache") if v.shared]
        if shared:
            return _file_write_pin(err, what, access, shared[0][1])
    ro_shared = [v for v in found if v.shared and "w" not in v.perms]
    if not access & WRITABLE and ro_shared:
        # drivers/infiniband/core/umem.c before 6.2 ("RDMA/umem: remove FOLL_FORCE usage"):
        # a read-only MR was pinned FOLL_WRITE|FOLL_FORCE, which check_vma_flags refuses on
        # a shared mapping without VM_WRITE (no COW possible); 6.2+ pins without FOLL_WRITE.
        v = ro_shared[0]
        return RegistrationError(
            err, f"{what}: the mapping {v.start:#x}-{v.end:#x} ({v.perms} {escape(v.path)}) is "
                 "shared and read-only; this kernel's ib_umem_get pins even a read-only MR "
                 "for write (FOLL_WRITE|FOLL_FORCE, until Linux 6.2), which a shared mapping "
                 "without write permission cannot take",
            hint="map it PROT_READ|PROT_WRITE (a read-only MR then pins it without "
                 "writing), or MAP_PRIVATE, or on Linux 6.2 or later register it as it is")
    return RegistrationError(err, f"{what}: the kernel could not pin the pages (EFAULT)",
                             hint="is it an I/O or PFNMAP mapping (not pinnable)?")


def _files(addr: int, length: int, kind: str) -> list[tuple[maps.Vma, backing.FileBacking]]:
    """The mappings under the range whose file is backed by ``kind`` (rdmapin.backing)."""
    out = []
    for v in vmas(addr, addr + length):
        f = backing.of_path(v.path)
        if f is not None and f.kind == kind:
            out.append((v, f))
    return out


def _fsdax(err: int, what: str, f: backing.FileBacking) -> FsDaxPinError:
    # mm/gup.c check_vma_flags(), 6.1 and 6.12 alike: FOLL_LONGTERM && vma_is_fsdax(vma)
    # -> -EOPNOTSUPP, whatever the access; gup-fast gives up on devmap PTEs/PMDs under
    # FOLL_LONGTERM first, so the slow path always makes this check.
    return FsDaxPinError(
        err, f"{what}: the range maps {escape(f.where())}, a filesystem-DAX file "
             f"({f.source}); the kernel refuses every long-term pin (FOLL_LONGTERM, "
             "ib_umem_get's) of a DAX file's pages, read-only ones too, because the file "
             "system could then not truncate, punch or reflink a block a device holds "
             "(mm/gup.c check_vma_flags: vma_is_fsdax); nothing was pinned",
        hint="register device DAX instead (ndctl create-namespace -m devdax; "
             "rdmapin.alloc(n, path='/dev/daxN.M')), or on-demand paging (Access.ON_DEMAND) "
             "on a device that has it (mlx5; rxe has not), or a bounce buffer: register "
             "ordinary memory and copy to and from the file")


def _file_write_pin(err: int, what: str, access: int,
                    f: backing.FileBacking) -> FilePinError:
    # mm/gup.c since 6.5 (commit "mm/gup: disallow FOLL_LONGTERM GUP-nonfast writing to
    # file-backed mappings"): check_vma_flags -> writable_file_mapping_allowed() refuses
    # FOLL_PIN|FOLL_LONGTERM|FOLL_WRITE when vma_needs_dirty_tracking() (shared, writable,
    # page_mkwrite or a writeback-capable mapping): -EFAULT. tmpfs/shmem are exempt.
    return FilePinError(
        err, f"{what}: the range is a shared writable mapping of {escape(f.where())}, whose "
             "pages the file system writes back; since Linux 6.5 (\"mm/gup: disallow "
             "FOLL_LONGTERM GUP-nonfast writing to file-backed mappings\") the kernel "
             "refuses a writable long-term pin of such a mapping, because writes by the "
             f"device would bypass the file system's dirty tracking; access "
             f"{describe(access & WRITABLE)} makes ib_umem_get pin for write (this kernel: "
             f"{os.uname().release}); nothing was pinned",
        hint="register it read-only (access=Access.REMOTE_READ or 0: no write pin, which "
             "this kernel allows), or register anonymous, hugetlb or tmpfs/memfd memory and "
             "write the file with write(2), or use device DAX")


def _einval(err: int, what: str, addr: int, length: int, access: int,
            max_mr_size: int | None) -> RegistrationError:
    if access & NEEDS_LOCAL_WRITE and not access & Access.LOCAL_WRITE:
        return RegistrationError(err, f"{what}: {describe(access & NEEDS_LOCAL_WRITE)} "
                                      "requires LOCAL_WRITE (ib_check_mr_access)",
                                 hint="add Access.LOCAL_WRITE")
    if length == 0:
        return RegistrationError(err, f"{what}: zero-length region",
                                 hint="register at least one byte")
    if max_mr_size and length > max_mr_size:
        return RegistrationError(err, f"{what}: exceeds max_mr_size {human(max_mr_size)}",
                                 hint="split the buffer into several MRs")
    ps = kernel_page_size(addr)
    if ps and ps > PAGE and _fork_enabled():
        # With fork support on, libibverbs madvise(MADV_DONTFORK)s the range before
        # registering; on hugetlb that needs huge-page-aligned ranges and, per
        # ibv_fork_init(3), RDMAV_HUGEPAGES_SAFE=1 so it rounds to the real page size.
        aligned = "" if not (addr % ps or length % ps) else ", range not aligned to it"
        return RegistrationError(err, f"{what}: hugetlb mapping of {human(ps)} pages"
                                      f"{aligned}, and ibv_fork_init is on (libibverbs "
                                      "madvise(MADV_DONTFORK)s every registered range)",
                                 hint=f"set RDMAV_HUGEPAGES_SAFE=1 before ibv_fork_init and "
                                      f"align to {human(ps)}, or skip ibv_fork_init (not "
                                      "needed on kernels with copy-on-fork for pins)")
    return RegistrationError(err, f"{what}: invalid argument",
                             hint="check the access flags against dev.caps")


def _fork_enabled() -> bool:
    from rdmapin import _lib

    env = os.environ
    if _lib.fork_init_called or env.get("RDMAV_FORK_SAFE") or env.get("IBV_FORK_SAFE"):
        # Called (or forced by the environment): libibverbs madvises DONTFORK whatever
        # ibv_is_fork_initialized() reports, 'unneeded' included.
        return True
    return _lib.fork_status() == _lib.FORK_ENABLED


def zero_length(call: str, addr: int, access: int) -> RegistrationError:
    return registration(_errno.EINVAL, call=call, addr=addr, length=0, access=access)
