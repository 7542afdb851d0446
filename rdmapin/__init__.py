"""rdmapin: userspace RDMA memory registration and pinning, and what it does to the kernel."""

from rdmapin import errors
from rdmapin.access import Access
from rdmapin.device import (
    Device,
    DeviceCaps,
    DeviceInfo,
    PortInfo,
    devices,
    fork_init,
    fork_status,
    open_device,
)
from rdmapin.errors import (
    AllocationError,
    BufferTypeError,
    ClosedError,
    DeviceError,
    ForkedError,
    HugepagesError,
    MemlockError,
    NoDeviceError,
    RdmapinError,
    RdmapinOSError,
    RegistrationError,
    RendezvousError,
    UnsupportedError,
    WorkCompletionError,
)
from rdmapin.memory import Buffer, alloc, empty
from rdmapin.mr import MemoryRegion
from rdmapin.pd import ProtectionDomain
from rdmapin.regcache import CacheHandle, CacheStats, CacheWarning, RegCache
from rdmapin.wc import WcStatus, explain_wc

__version__ = "0.1.0"

__all__ = [
    "Access",
    "AllocationError",
    "Buffer",
    "BufferTypeError",
    "CacheHandle",
    "CacheStats",
    "CacheWarning",
    "ClosedError",
    "Device",
    "DeviceCaps",
    "DeviceError",
    "DeviceInfo",
    "ForkedError",
    "HugepagesError",
    "MemlockError",
    "MemoryRegion",
    "NoDeviceError",
    "PortInfo",
    "ProtectionDomain",
    "RdmapinError",
    "RdmapinOSError",
    "RegCache",
    "RegistrationError",
    "RendezvousError",
    "UnsupportedError",
    "WcStatus",
    "WorkCompletionError",
    "__version__",
    "alloc",
    "devices",
    "empty",
    "errors",
    "explain_wc",
    "fork_init",
    "fork_status",
    "open_device",
]
