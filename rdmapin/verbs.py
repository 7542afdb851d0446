"""The verbs layer in one import: devices, PDs, MRs (each in its own module)."""

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
from rdmapin.mr import MemoryRegion
from rdmapin.pd import ProtectionDomain

__all__ = ["Device", "DeviceCaps", "DeviceInfo", "MemoryRegion", "PortInfo",
           "ProtectionDomain", "devices", "fork_init", "fork_status", "open_device"]
