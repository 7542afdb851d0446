"""The only module that touches the cffi ``lib``: each wrapper turns the shim's -errno/NULL
into an exception (errno was saved by the shim at the failing call, never read later).

The register/deregister hot path is exported raw (``reg_mr``, ``dereg_mr``, ``errno``,
``gc``/``mr_free``) so rdmapin.pd and rdmapin.mr pay one C call per operation; the PD's list
of live MRs is kept by the shim. Failure branches come back here for the errno.
"""

from __future__ import annotations

import errno as _errno
from dataclasses import dataclass

from rdmapin.errors import DeviceError, NoDeviceError, RdmapinOSError, UnsupportedError

# The C shim's interface version (csrc/shim.c's rdmapin_verbs_api_version): bump both together
# whenever a declaration in csrc/shim.h changes, so a stale build is caught at import.
API_VERSION = 4
_REBUILD = ("rebuild it: pip install --force-reinstall rdmapin (in a checkout: "
            "pip install -e . or make venv; needs gcc and libibverbs-dev)")

try:
    from rdmapin._verbs import ffi, lib
except ImportError as _e:
    raise ImportError(f"rdmapin's C extension rdmapin._verbs cannot be loaded ({_e}): "
                      + _REBUILD) from _e
if lib.rdmapin_verbs_api_version() != API_VERSION:
    raise ImportError(f"rdmapin._verbs was built for shim API "
                      f"{lib.rdmapin_verbs_api_version()}, this rdmapin needs {API_VERSION}: "
                      + _REBUILD)

NULL = ffi.NULL
MAX_DEVICES = 64

# Hot path, used as is by rdmapin.mr.
reg_mr = lib.rdmapin_reg_mr
reg_mr_at = lib.rdmapin_reg_mr_at
reg_mr_iova2 = lib.rdmapin_reg_mr_iova2
dereg_mr = lib.rdmapin_dereg_mr
mr_free = lib.rdmapin_mr_free
errno = lib.rdmapin_errno
from_buffer = ffi.from_buffer
release = ffi.release
gc = ffi.gc

# ibv_fork_status
FORK_DISABLED, FORK_ENABLED, FORK_UNNEEDED = 0, 1, 2

UNSUPPORTED = (_errno.EOPNOTSUPP, _errno.ENOTSUP, _errno.ENOSYS, _errno.EPROTONOSUPPORT)


def _check(rc: int, what: str, exc: type[RdmapinOSError] = DeviceError) -> int:
    if rc < 0:
        raise exc(-rc, what)
    return rc


def _string(buf) -> str:
    return ffi.string(buf).decode()


@dataclass(frozen=True)
class RawDevice:
    name: str
    node_guid: int
    node_type: int
    transport_type: int
    ibdev_path: str


def list_devices() -> list[RawDevice]:
    """ibv_get_device_list, copied out. ENOSYS (no kernel verbs support) means: none."""
    out = ffi.new("struct rdmapin_device_info[]", MAX_DEVICES)
    n = lib.rdmapin_list_devices(out, MAX_DEVICES)
    if n == -_errno.ENOSYS:
        return []
    _check(n, "ibv_get_device_list")
    return [RawDevice(_string(d.name), d.node_guid, d.node_type, d.transport_type,
                      _string(d.ibdev_path)) for d in out[0:min(n, MAX_DEVICES)]]


def open_device(name: str | None):
    ctx = lib.rdmapin_open_device(name.encode() if name else NULL)
    if not ctx:
        err = lib.rdmapin_errno()
        exc = NoDeviceError if err in (_errno.ENODEV, _errno.ENOSYS) else DeviceError
        raise exc(err, f"ibv_open_device({name or 'first device'})")
    return ctx


def close_device(ctx) -> None:
    _check(lib.rdmapin_close_device(ctx), "ibv_close_device")


def context_device_name(ctx) -> str:
    buf = ffi.new("char[]", 64)
    lib.rdmapin_context_device_name(ctx, buf, 64)
    return _string(buf)


_CAP_FIELDS = ("node_guid", "sys_image_guid", "max_mr_size", "page_size_cap", "vendor_id",
               "vendor_part_id", "hw_ver", "max_qp", "max_cq", "max_mr", "max_pd", "max_mw",
               "device_cap_flags", "phys_port_cnt", "atomic_cap", "has_ex", "odp_general_caps",
               "odp_rc_caps", "odp_uc_caps", "odp_ud_caps", "device_cap_flags_ex")


def query_device(ctx) -> dict[str, int | str]:
    out = ffi.new("struct rdmapin_device_caps *")
    _check(lib.rdmapin_query_device(ctx, out), "ibv_query_device_ex")
    caps: dict[str, int | str] = {f: getattr(out, f) for f in _CAP_FIELDS}
    caps["fw_ver"] = _string(out.fw_ver)
    return caps


_PORT_FIELDS = ("state", "max_mtu", "active_mtu", "gid_tbl_len", "max_msg_sz", "lid",
                "link_layer", "active_width", "active_speed", "phys_state")


def query_port(ctx, port: int) -> dict[str, int]:
    out = ffi.new("struct rdmapin_port_attr *")
    _check(lib.rdmapin_query_port(ctx, port, out), f"ibv_query_port(port {port})")
    return {f: getattr(out, f) for f in _PORT_FIELDS}


def query_gid(ctx, port: int, index: int) -> bytes:
    raw = ffi.new("uint8_t[16]")
    _check(lib.rdmapin_query_gid(ctx, port, index, raw), f"ibv_query_gid({port}, {index})")
    return bytes(ffi.buffer(raw, 16))


def alloc_pd(ctx):
    """A new ibv_pd in rdmapin's wrapper (see wrap_pd)."""
    pd = lib.rdmapin_alloc_pd(ctx)
    if not pd:
        raise DeviceError(lib.rdmapin_errno(), "ibv_alloc_pd")
    try:
        return wrap_pd(pd)
    except BaseException:
        lib.rdmapin_dealloc_pd(pd)
        raise


def wrap_pd(pd):
    """The shim's ``struct rdmapin_pd`` over ``pd`` (which it keeps the list of live MRs
    of), freed when Python drops it."""
    p = lib.rdmapin_pd_wrap(pd)
    if not p:
        raise MemoryError("rdmapin_pd_wrap")
    return ffi.gc(p, lib.rdmapin_pd_free)


def dealloc_pd(p) -> None:
    _check(lib.rdmapin_pd_dealloc(p), "ibv_dealloc_pd")


def close_mrs(p) -> int:
    """Deregister every MR still on PD ``p``; 0 or the first -errno."""
    return lib.rdmapin_pd_close_mrs(p)


def reopen_pd(p) -> None:
    """Let PD ``p`` take new MRs again after close_mrs, when its close failed."""
    lib.rdmapin_pd_reopen(p)


def live_mrs(p) -> list:
    """Copies (addr, length, lkey, rkey, handle, access) of the MRs live on PD ``p``."""
    n = max(p.count, 1)
    while True:
        out = ffi.new("struct rdmapin_mr_info[]", n)
        got = lib.rdmapin_pd_mrs(p, out, n)
        if got <= n:
            return [(i.addr, i.length, i.lkey, i.rkey, i.handle, i.access)
                    for i in out[0:got]]
        n = got  # more were registered meanwhile


def pd_from_address(address: int):
    return ffi.cast("struct ibv_pd *", address)


def pd_device_name(pd) -> str:
    buf = ffi.new("char[]", 64)
    lib.rdmapin_pd_device_name(pd, buf, 64)
    return _string(buf)


def pd_handle(pd) -> int:
    return lib.rdmapin_pd_handle(pd)


def address_of(pd) -> int:
    return int(ffi.cast("uintptr_t", pd))


def void_p(address: int):
    return ffi.cast("void *", address)


def reg_dmabuf_mr(pd, offset: int, length: int, iova: int, fd: int, access: int):
    """The MR or None, with the errno, for rdmapin.mr to explain."""
    m = lib.rdmapin_reg_dmabuf_mr(pd, offset, length, iova, fd, access)
    return (m, 0) if m else (None, lib.rdmapin_errno())


def rereg_mr(m, flags: int, pd, addr, length: int, access: int) -> tuple[int, int]:
    """(-errno or 0, IBV_REREG_MR_ERR_* code); ``pd`` is the new rdmapin PD or None."""
    code = ffi.new("int *")
    rc = lib.rdmapin_rereg_mr(m, flags, pd if pd is not None else NULL,
                              addr if addr is not None else NULL, length, access, code)
    return rc, code[0]


def advise_mr(pd, advice: int, flags: int, addr: int, length: int, lkey: int) -> None:
    rc = lib.rdmapin_advise_mr(pd, advice, flags, addr, length, lkey)
    if rc < 0:
        if -rc in UNSUPPORTED:
            raise UnsupportedError(f"ibv_advise_mr: this device does not take advice "
                                   f"({_errno.errorcode.get(-rc, -rc)}); it needs ODP MRs")
        raise RdmapinOSError(-rc, f"ibv_advise_mr({length} B at {addr:#x})")


fork_init_called = False


def fork_init() -> None:
    global fork_init_called
    _check(lib.rdmapin_fork_init(), "ibv_fork_init", RdmapinOSError)
    fork_init_called = True


def fork_status() -> int:
    return lib.rdmapin_is_fork_initialized()


def mmap(length: int, align: int, extra_flags: int):
    """Anonymous RW mapping aligned to ``align``; (pointer, 0) or (None, errno)."""
    p = lib.rdmapin_mmap(length, align, extra_flags)
    return (p, 0) if p else (None, lib.rdmapin_errno())


def munmap(p, length: int) -> int:
    return lib.rdmapin_munmap(p, length)


def madvise(p, length: int, advice: int) -> int:
    """0 or -errno."""
    return lib.rdmapin_madvise(p, length, advice)


def char_p(p):
    return ffi.cast("char *", p)


def buffer(p, length: int):
    return ffi.buffer(p, length)
