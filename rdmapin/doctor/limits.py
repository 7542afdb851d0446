"""What this process may pin and trace: RLIMIT_MEMLOCK, capabilities, fork, VMA count."""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
from collections.abc import Iterator

from rdmapin.doctor import Check, Status
from rdmapin.kernel import maps, procfs
from rdmapin.kernel.units import human

# include/uapi/linux/capability.h
CAP_DAC_OVERRIDE = 1
CAP_NET_ADMIN = 12
CAP_IPC_LOCK = 14
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39

_GRANT = ("systemd: AmbientCapabilities={caps} in the unit (with User=); from a shell "
          "that holds them: setpriv --inh-caps={sp} --ambient-caps={sp} -- CMD")


def effective_caps(pid: int | str = "self") -> int:
    """CapEff of ``pid`` as a bit mask (bit n = capability n)."""
    return int(str(procfs.status(pid)["CapEff"]), 16)


def has_cap(cap: int, mask: int | None = None) -> bool:
    return bool((effective_caps() if mask is None else mask) >> cap & 1)


def grant_fix(*caps: str) -> str:
    """How to hand ``caps`` (e.g. "ipc_lock") to a non-root process without full root."""
    return _GRANT.format(caps=" ".join(f"CAP_{c.upper()}" for c in caps),
                         sp=",".join(f"+{c}" for c in caps))


def _limit(v: int) -> str:
    return "unlimited" if v == resource.RLIM_INFINITY else human(v)


def memlock() -> Iterator[Check]:
    """ib_umem_get charges pinned pages to mm->pinned_vm and refuses past RLIMIT_MEMLOCK
    unless the caller has CAP_IPC_LOCK (drivers/infiniband/core/umem.c)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    cap = has_cap(CAP_IPC_LOCK)
    pinned = procfs.vm_pin()
    data = {"soft": None if soft == resource.RLIM_INFINITY else soft,
            "hard": None if hard == resource.RLIM_INFINITY else hard,
            "cap_ipc_lock": cap, "vm_pin": pinned}
    limits = f"rlimit {_limit(soft)}/{_limit(hard)}"
    if soft == resource.RLIM_INFINITY:
        yield Check("memlock", Status.PASS, f"unlimited (CAP_IPC_LOCK: {'yes' if cap else 'no'})",
                    data=data)
        return
    if cap:
        yield Check("memlock", Status.PASS, f"unlimited (CAP_IPC_LOCK: yes; {limits})",
                    data=data)
        return
    room = max(soft - pinned, 0)
    data["can_pin"] = room
    fix = ("ulimit -l unlimited" if hard == resource.RLIM_INFINITY else
           f"ulimit -l {hard // 1024} (the hard limit), then raise the hard limit:")
    fix += (" LimitMEMLOCK=infinity in the systemd unit or 'USER - memlock unlimited' in "
            "/etc/security/limits.d/; or grant CAP_IPC_LOCK: " + grant_fix("ipc_lock"))
    status = Status.FAIL if room == 0 else Status.WARN
    yield Check("memlock", status, f"can pin {human(room)} ({limits}, "
                f"{human(pinned)} pinned; CAP_IPC_LOCK: no)", fix=fix, data=data)


def capabilities() -> Iterator[Check]:
    mask = effective_caps()
    features = [
        ("cap pin", "pin past RLIMIT_MEMLOCK", [CAP_IPC_LOCK], ["ipc_lock"]),
        ("cap trace", "load BPF tracers", [CAP_BPF, CAP_PERFMON], ["bpf", "perfmon"]),
        ("cap pfn", "read PFNs in pagemap", [CAP_SYS_ADMIN], ["sys_admin"]),
        ("cap rdma-res", "read other MRs' keys", [CAP_NET_ADMIN], ["net_admin"]),
    ]
    for name, what, caps, cap_names in features:
        have = [has_cap(c, mask) for c in caps]
        # Before CAP_BPF/CAP_PERFMON (5.8) CAP_SYS_ADMIN covered tracing; it still does.
        ok = all(have) or (name == "cap trace" and has_cap(CAP_SYS_ADMIN, mask))
        label = "+".join(f"CAP_{c.upper()}" for c in cap_names)
        data = {"caps": [f"CAP_{c.upper()}" for c in cap_names], "have": ok}
        if ok:
            yield Check(name, Status.PASS, f"{label}: yes ({what})", data=data)
        else:
            fix = grant_fix(*cap_names)
            if name == "cap pfn":
                fix += "; /proc/kpageflags is also mode 0400 root"
            yield Check(name, Status.WARN, f"{label}: no (cannot {what})", fix=fix, data=data)


def kernel_copy_on_fork() -> bool | None:
    """The kernel's own answer (RDMA netlink SYS_ATTR_COPY_ON_FORK via `rdma system`).

    True: fork() copies pages that are DMA-pinned instead of sharing them copy-on-write, so
    the parent's MRs keep pointing at the parent's memory. None: the kernel does not say
    (no RDMA netlink, or a kernel older than the attribute).
    """
    if shutil.which("rdma") is None:
        return None
    proc = subprocess.run(["rdma", "-j", "system", "show"], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        return None
    try:
        rows = json.loads(proc.stdout)
    except json.JSONDecodeError:
        rows = []
    for row in rows if isinstance(rows, list) else [rows]:
        if isinstance(row, dict) and "copy-on-fork" in row:
            v = row["copy-on-fork"]
            return v if isinstance(v, bool) else str(v) in ("on", "1", "true")
    # iproute2 versions differ in the JSON key; the text form is stable: "copy-on-fork on".
    text = subprocess.run(["rdma", "system", "show"], capture_output=True, text=True,
                          check=False).stdout.split()
    if "copy-on-fork" in text:
        i = text.index("copy-on-fork")
        return i + 1 < len(text) and text[i + 1] == "on"
    return None


def libibverbs_fork_status() -> str | None:
    """ibv_is_fork_initialized() through rdmapin's verbs binding: 'unneeded' when the
    kernel reports copy-on-fork, else 'disabled' or 'enabled'; None without libibverbs."""
    try:
        from rdmapin.device import fork_status
    except ImportError:
        return None
    return fork_status()


def fork() -> Iterator[Check]:
    kernel = kernel_copy_on_fork()
    ibv = libibverbs_fork_status()
    data = {"kernel_copy_on_fork": kernel, "ibv_fork_status": ibv}
    if kernel or ibv == "unneeded":
        yield Check("fork", Status.PASS, "kernel copies pinned pages at fork (copy-on-fork "
                    "on): no ibv_fork_init needed", data=data)
        return
    said = ("kernel says copy-on-fork off" if kernel is False
            else "kernel does not report copy-on-fork (no RDMA netlink)")
    yield Check("fork", Status.WARN, f"{said}; ibv_is_fork_initialized: {ibv or '?'}",
                fix="a process that forks with live MRs must call ibv_fork_init() "
                    "(or set RDMAV_FORK_SAFE=1) before registering: MRs then get "
                    "MADV_DONTFORK; kernels that report copy-on-fork need neither",
                data=data)


def map_count() -> Iterator[Check]:
    limit = int(procfs.sysctl("vm/max_map_count"))
    used = maps.count("self")
    data = {"max_map_count": limit, "maps": used}
    # With ibv_fork_init every MR is madvise(MADV_DONTFORK)'d: up to 2 VMA splits each.
    room = (limit - used) // 2
    value = f"{used} of {limit} VMAs; room for ~{room} DONTFORK MRs"
    if used * 2 < limit:
        yield Check("maps", Status.PASS, value, data=data)
    else:
        yield Check("maps", Status.WARN, value, data=data,
                    fix=f"sysctl -w vm.max_map_count={max(limit * 4, 262144)}")
