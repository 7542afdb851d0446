"""io_uring fixed buffers: a real long-term pin outside RDMA, by raw syscalls (no liburing).

IORING_REGISTER_BUFFERS pins the buffer's pages with pin_user_pages(FOLL_WRITE |
FOLL_LONGTERM) (io_uring/rsrc.c, 6.1) and charges them to the process's VmPin, as an MR does.
"""

from __future__ import annotations

import ctypes
import os

SYS_IO_URING_SETUP = 425  # x86_64
SYS_IO_URING_REGISTER = 427
IORING_REGISTER_BUFFERS = 0
IORING_UNREGISTER_BUFFERS = 1
PARAMS_BYTES = 120  # struct io_uring_params; zeroed = defaults

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def _check(rc: int, what: str) -> int:
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return rc


class FixedBuffer:
    """[addr, addr + length) registered with a fresh ring until ``close()``."""

    def __init__(self, addr: int, length: int) -> None:
        params = ctypes.create_string_buffer(PARAMS_BYTES)
        self.fd = _check(_libc.syscall(ctypes.c_long(SYS_IO_URING_SETUP), ctypes.c_uint(4),
                                       params), "io_uring_setup")
        iov = _Iovec(addr, length)
        try:
            _check(_libc.syscall(ctypes.c_long(SYS_IO_URING_REGISTER), ctypes.c_uint(self.fd),
                                 ctypes.c_uint(IORING_REGISTER_BUFFERS), ctypes.byref(iov),
                                 ctypes.c_uint(1)), "io_uring_register(REGISTER_BUFFERS)")
        except OSError:
            os.close(self.fd)
            raise

    def close(self) -> None:
        """Unpin now (closing the ring alone frees its buffers later, on a workqueue)."""
        if self.fd < 0:
            return
        try:
            _check(_libc.syscall(ctypes.c_long(SYS_IO_URING_REGISTER), ctypes.c_uint(self.fd),
                                 ctypes.c_uint(IORING_UNREGISTER_BUFFERS), None,
                                 ctypes.c_uint(0)), "io_uring_register(UNREGISTER_BUFFERS)")
        finally:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> FixedBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
