"""The kernel's interfaces, one module each: the only code in rdmapin that opens /proc, /sys,
tracefs, BTF, kallsyms or kcore (drgn's helpers/linux layout). Upper layers (pages, physmap,
trace, doctor, cli) read the kernel only through these; this package imports nothing of
rdmapin but the error types. Each module names the kernel source it mirrors and the kernels
it was checked on (Debian's 6.1 and 6.12 in the guests, 6.18 on the development host).

arch        page geometry (PAGE_SIZE, PAGE_SHIFT, PMD_PAGES)
units       the one byte formatter
printable   the one escaper of names other users choose (comm, mapping paths)
procfs      /proc/PID/status, comm; /proc/vmstat, /proc/meminfo; /proc/sys
maps        /proc/PID/maps and /proc/PID/smaps (Vma)
pagemap     /proc/PID/pagemap
kpageflags  /proc/kpageflags (per PFN and whole-memory scans)
kcore       /proc/kcore: struct page pin counts
kallsyms    /proc/kallsyms
btf         /sys/kernel/btf/vmlinux
mmzone      /proc/zoneinfo, buddyinfo, pagetypeinfo, iomem, extfrag
memblock    /sys/devices/system/memory: PFN -> node and zone
tracefs     mount points, tracepoint format files, kprobe-able functions
rdma_res    the kernel's RDMA resource tracking (nldev, through iproute2's rdma)
statx       statx(2): STATX_ATTR_DAX, device numbers
mountinfo   /proc/PID/mountinfo: the mount (file system, source, dax=) holding a file
nvdimm      /sys/bus/nd and /sys/bus/dax: pmem namespaces, device-DAX instances
"""
