"""rdmapin: userspace RDMA memory registration and pinning, and what it does to the kernel."""

from rdmapin.errors import (
    ClosedError,
    DeviceError,
    RdmapinError,
    RdmapinOSError,
    RegistrationError,
    UnsupportedError,
)

__version__ = "0.1.0"

__all__ = [
    "ClosedError",
    "DeviceError",
    "RdmapinError",
    "RdmapinOSError",
    "RegistrationError",
    "UnsupportedError",
    "__version__",
]
