"""The registration cache against the ways the field's caches went wrong: every change of a
cached range's mapping (munmap + MAP_FIXED, mremap, MADV_DONTNEED, munmap of the middle, a
numpy array born where a freed one was) is followed by an RDMA WRITE through the handle the
cache returns next, and the bytes must land in the new memory. Plus the budget, threads with
a remapper racing them, fork, growth to huge pages, pass-through, register_many."""

from __future__ import annotations

import errno
import gc
import json
import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import rawmem
from verbs_util import DEVICE

import rdmapin
from rdmapin import Access, CacheWarning, ForkedError
from rdmapin.kernel import procfs, rdma_res

pytestmark = [pytest.mark.rdma, pytest.mark.vm]
pytest_plugins = ("verbs_fixtures",)

RW = Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ
KIB = 1024
TOP = Path(__file__).resolve().parents[2]


@pytest.fixture
def bed(pins):
    """(pair, pd, cache, src): a loopback QP pair and a cache on one PD; src is a 4 MiB
    registered source of pattern bytes for RDMA WRITEs into what the cache returns."""
    from loopback import LoopbackPair
    from pyverbs.device import Context
    from pyverbs.pd import PD

    with Context(name=DEVICE) as ctx, PD(ctx) as vpd:
        pd = rdmapin.ProtectionDomain.from_pyverbs(vpd)
        pair = LoopbackPair(ctx, vpd)
        src = rdmapin.alloc(4 << 20)
        try:
            with pd.register(src, RW) as src_mr:
                cache = pd.cache()
                yield pair, pd, cache, src, src_mr
                cache.close()
        finally:
            pair.close()
            pd.close()


def write_through(bed, h, pattern: int) -> None:
    """RDMA WRITE `pattern` bytes into the handle's memory with its rkey."""
    pair, _, _, src, src_mr = bed
    src[:h.length] = pattern
    pair.write(src_mr.addr, h.length, src_mr.lkey, h.addr, h.rkey)


def kernel_lkeys() -> set[int]:
    """The lkeys of this process's MRs in the kernel's resource tracker."""
    return {m.lkey for m in rdma_res.mrs(os.getpid())}


def test_hit_after_miss_and_stats(bed):
    _, _, cache, _, _ = bed
    buf = rdmapin.alloc(64 * KIB)
    before = procfs.vm_pin()
    with cache.get(buf, RW) as h1:
        assert h1.cached and h1.offset == 0 and h1.length == 64 * KIB
        lkey = h1.lkey
    with cache.get(buf[4 * KIB:8 * KIB], RW) as h2:  # inside: the same MR
        assert h2.lkey == lkey and h2.offset == 4 * KIB and h2.addr == buf.addr + 4 * KIB
        write_through(bed, h2, 7)
        assert (buf[4 * KIB:8 * KIB] == 7).all() and (buf[:4 * KIB] == 0).all()
    s = cache.stats()
    assert (s.hits, s.misses, s.regions, s.handles_out) == (1, 1, 1, 0)
    assert s.bytes_pinned == 64 * KIB == procfs.vm_pin() - before
    assert "hits=1 misses=1" in repr(cache)
    assert lkey in kernel_lkeys()
    assert cache.flush() == 1 and cache.stats().regions == 0
    assert lkey not in kernel_lkeys()


@pytest.mark.parametrize("how", ["munmap+fixed", "fixed-over"])
def test_remap_at_same_address_is_never_a_stale_hit(bed, how):
    _, _, cache, _, _ = bed
    n = 256 * KIB
    addr = rawmem.mmap(n)
    try:
        rawmem.view(addr, n)[:] = 1
        with cache.get((addr, n), RW) as h:
            old_lkey = h.lkey
        if how == "munmap+fixed":
            rawmem.munmap(addr, n)
        assert rawmem.mmap(n, addr, fixed=True) == addr
        rawmem.view(addr, n)[:] = 2
        assert cache.stats().invalidations == 1
        with cache.get((addr, n), RW) as h:
            assert h.lkey != old_lkey
            write_through(bed, h, 3)
        assert (rawmem.view(addr, n) == 3).all()  # the new memory got the bytes
        assert old_lkey not in kernel_lkeys()
    finally:
        rawmem.munmap(addr, n)


def test_mremap_moves_a_cached_region(bed):
    _, _, cache, _, _ = bed
    n = 128 * KIB
    addr = rawmem.mmap(n)
    other = rawmem.mmap(n)
    try:
        rawmem.view(addr, n)[:] = 1
        cache.get((addr, n), RW).release()
        assert rawmem.mremap(addr, n, other) == other  # other's pages go, addr's move there
        assert rawmem.mmap(n, addr, fixed=True) == addr
        for where in (addr, other):
            with cache.get((where, n), RW) as h:
                write_through(bed, h, 5 if where == addr else 6)
        assert (rawmem.view(addr, n) == 5).all() and (rawmem.view(other, n) == 6).all()
        assert cache.stats().invalidations >= 1
    finally:
        rawmem.munmap(addr, n)
        rawmem.munmap(other, n)


@pytest.mark.parametrize("how", ["dontneed", "munmap-middle"])
def test_part_of_a_cached_region_changes(bed, how):
    _, _, cache, _, _ = bed
    n = 64 * KIB
    addr = rawmem.mmap(n)
    try:
        rawmem.view(addr, n)[:] = 1
        cache.get((addr, n), RW).release()
        mid = addr + 16 * KIB
        if how == "dontneed":
            rawmem.madvise(mid, 4 * KIB, rawmem.MADV_DONTNEED)
        else:
            rawmem.munmap(mid, 4 * KIB)
            rawmem.mmap(4 * KIB, mid, fixed=True)
        with cache.get((addr, n), RW) as h:
            write_through(bed, h, 9)
        assert (rawmem.view(addr, n) == 9).all()
        assert cache.stats().invalidations == 1
    finally:
        rawmem.munmap(addr, n)


def test_numpy_array_born_where_a_freed_one_was(bed):
    _, _, cache, _, _ = bed
    n = 64 << 20  # above glibc's largest mmap threshold: always its own mapping
    a = np.zeros(n, np.uint8)
    where = a.ctypes.data
    cache.get(a, RW).release()
    del a
    gc.collect()
    b = np.ones(n, np.uint8)
    assert b.ctypes.data == where, "the new array did not land at the freed one's address"
    with cache.get(b[:1 << 20], RW) as h:
        write_through(bed, h, 4)
    assert (b[:1 << 20] == 4).all() and (b[1 << 20:] == 1).all()
    assert cache.stats().invalidations >= 1


def test_budget_bounds_pins(bed):
    _, pd, _, _, _ = bed
    budget, req = 1 << 20, 128 * KIB
    cache = pd.cache(max_bytes=budget)
    bufs = [rawmem.mmap(req) for _ in range(24)]  # 3 MiB of requests through a 1 MiB budget
    base = procfs.vm_pin()
    peak = 0
    try:
        for _ in range(2):
            for a in bufs:
                with cache.get((a, req), RW):
                    peak = max(peak, procfs.vm_pin() - base)
        s = cache.stats()
        assert peak <= budget + req and s.bytes_pinned <= budget
        assert s.evictions >= len(bufs) and s.hits == 0
        assert procfs.vm_pin() - base == s.bytes_pinned
    finally:
        cache.close()
        for a in bufs:
            rawmem.munmap(a, req)


MEMLOCK_SCRIPT = r"""
import json, rdmapin
from rdmapin import MemlockError
n, req = 24, 128 * 1024
bufs = [rdmapin.alloc(req) for _ in range(n)]
out = {}
with rdmapin.open_device("rxe0") as dev, dev.alloc_pd() as pd:
    held = []
    try:
        for b in bufs:
            held.append(pd.register(b))
        out["plain"] = "ok"
    except MemlockError as e:
        out["plain"] = f"MemlockError after {len(held)}: {e}"
    for m in held:
        m.close()
    cache = pd.cache()
    out["budget"] = [cache.max_bytes, cache.budget_source]
    for b in bufs:
        with cache.get(b) as h:
            pass
    # A budget above the limit, the first cache still holding its idle MRs: only the ENOMEM
    # retry, evicting the idle MRs of both caches, can succeed.
    big = pd.cache(max_bytes=1 << 30)
    for b in bufs:
        big.get(b).release()
    s, t = cache.stats(), big.stats()
    out["cache"] = [s.misses, s.evictions, s.bytes_pinned]
    out["retry"] = [t.misses, t.evictions]
    cache.close(); big.close()
print(json.dumps(out))
"""


def test_memlock_limit_cache_evicts_where_register_fails(pins):
    limit = 1 << 20
    cmd = ["prlimit", f"--memlock={limit}", "setpriv", "--inh-caps=-ipc_lock",
           "--bounding-set=-ipc_lock", sys.executable, "-c", MEMLOCK_SCRIPT]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["plain"].startswith("MemlockError after 8"), res  # 8 x 128 KiB = the limit
    assert res["budget"] == [limit, "RLIMIT_MEMLOCK less VmPin"]
    misses, evictions, pinned = res["cache"]
    # Neighbouring buffers merge into MRs up to the budget, so fewer evictions than misses.
    assert misses == 24 and evictions >= 2 and pinned <= limit
    assert res["retry"][0] == 24 and res["retry"][1] >= 2


def test_threads_with_a_remapper(bed):
    """4 threads get/transfer/release over overlapping slot ranges while a fifth remaps
    slots with new contents: every transfer reads what the CPU sees (no stale hit), no
    crash, no hang, and the pins come back after close (the bed's fixture checks)."""
    from loopback import LoopbackPair

    pair0, pd, cache, _, _ = bed
    slots, slot = 8, 64 * KIB
    base = rawmem.mmap(slots * slot)
    gen = [1] * slots
    locks = [threading.Lock() for _ in range(slots)]
    for i in range(slots):
        rawmem.view(base + i * slot, slot)[:] = gen[i]
    errors: list[str] = []
    stop = threading.Event()

    def remapper() -> None:
        rng = np.random.default_rng(1)
        while not stop.wait(0.005):
            i = int(rng.integers(slots))
            with locks[i]:
                gen[i] = gen[i] % 250 + 1
                rawmem.mmap(slot, base + i * slot, fixed=True)
                rawmem.view(base + i * slot, slot)[:] = gen[i]

    def worker(k: int) -> None:
        rng = np.random.default_rng(10 + k)
        dst = rdmapin.alloc(2 * slot)
        pair = LoopbackPair(pair0.ctx, pd_pyverbs)
        try:
            with pd.register(dst, RW) as dmr:
                for _ in range(40):
                    i = int(rng.integers(slots - 1))
                    span = int(rng.integers(1, 3))
                    held = locks[i:i + span]
                    for lk in held:
                        lk.acquire()
                    try:
                        want = np.concatenate([np.full(slot, gen[j], np.uint8)
                                               for j in range(i, i + span)])
                        with cache.get((base + i * slot, span * slot), RW) as h:
                            pair.write(h.addr, h.length, h.lkey, dmr.addr, dmr.rkey)
                        if not np.array_equal(dst[:span * slot], want):
                            errors.append(f"slot {i}+{span}: stale bytes")
                    finally:
                        for lk in held:
                            lk.release()
        except Exception as e:  # reported by the main thread
            errors.append(f"worker {k}: {e!r}")
        finally:
            pair.close()

    pd_pyverbs = pd._owner
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    rt = threading.Thread(target=remapper)
    rt.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    stop.set()
    rt.join(timeout=60)
    try:
        assert not any(t.is_alive() for t in [*threads, rt]), "a thread hung"
        assert not errors, errors[:5]
        s = cache.stats()
        assert s.invalidations > 0 and s.hits > 0 and s.handles_out == 0
    finally:
        rawmem.munmap(base, slots * slot)


def test_fork_child_never_uses_the_parents_mrs(bed):
    _, _, cache, _, _ = bed
    buf = rdmapin.alloc(64 * KIB)
    cache.get(buf, RW).release()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: get must refuse, close must not deregister the parent's MRs
        code = 1
        try:
            cache.get(buf, RW)
        except ForkedError:
            code = 0
            cache.close()
            gc.collect()  # the MR objects are gone here: none may deregister
        except BaseException:
            code = 2
        os.write(w, bytes([code]))
        os._exit(0)
    os.close(w)
    code = os.read(r, 1)
    os.close(r)
    os.waitpid(pid, 0)
    assert code == b"\x00"
    with cache.get(buf, RW) as h:  # the parent's cache is intact
        write_through(bed, h, 8)
    assert (buf == 8).all() and cache.stats().hits == 1


@pytest.mark.parametrize("pages", ["thp", "2m"])
def test_huge_backing_grows_the_mr_to_huge_pages(bed, pages):
    _, _, cache, _, _ = bed
    buf = rdmapin.alloc(4 << 20, pages)
    if pages == "thp" and buf.backing != "thp":
        pytest.fail(f"THP backing not obtained ({buf.backing}): the guest must give THP")
    with cache.get(buf[(2 << 20) + 4 * KIB:(2 << 20) + 8 * KIB], RW) as h:
        mr = h.mr
        assert (mr.addr, mr.length) == (buf.addr + (2 << 20), 2 << 20)
        assert h.offset == 4 * KIB
        report = mr.pages()
        kind = "thp_2m" if pages == "thp" else "hugetlb_2m"
        assert report.backing_pages[kind] == 512 and report.backing_folios[kind] == 1
    with cache.get(buf[(2 << 20) + 64 * KIB:(3 << 20)], RW) as h2:
        assert h2.lkey == mr.lkey  # a neighbour inside the huge page: a hit


def test_plain_buffer_is_not_grown_and_neighbours_merge(bed):
    _, _, cache, _, _ = bed
    buf = rdmapin.alloc(64 * KIB)
    with cache.get(buf[:8 * KIB], RW) as a:
        assert a.mr.length == 8 * KIB
        with cache.get(buf[8 * KIB:16 * KIB], RW) as b:  # adjacent: one MR over both
            assert (b.mr.addr, b.mr.length) == (buf.addr, 16 * KIB)
            assert cache.stats().retired == 1  # a's MR stays while a is out
    s = cache.stats()
    assert (s.regions, s.retired, s.merges) == (1, 0, 1)


def test_shared_memory_passes_through(bed):
    """Shared anonymous memory and a memfd: truncation and hole punching raise no
    userfaultfd event, so their MRs are not cached (said once), and still work."""
    import mmap

    _, _, cache, _, _ = bed
    n = 64 * KIB
    shared = rawmem.mmap(n, shared=True)
    fd = os.memfd_create("rdmapin-test")
    os.ftruncate(fd, n)
    try:
        with warnings.catch_warnings(record=True) as seen, mmap.mmap(fd, n) as memfd:
            warnings.simplefilter("always")
            for target in ((shared, n), memfd, (shared, n)):
                h = cache.get(target, RW)
                assert not h.cached
                write_through(bed, h, 3)
                h.release()
            assert memfd[:n] == bytes([3]) * n
        assert (rawmem.view(shared, n) == 3).all()
        reasons = [str(w.message) for w in seen if issubclass(w.category, CacheWarning)]
        assert len(reasons) == 1 and "shared memory" in reasons[0], reasons
        s = cache.stats()
        assert s.passthrough == 3 and s.regions == 0 and s.handles_out == 0
    finally:
        os.close(fd)
        rawmem.munmap(shared, n)


def test_close_with_handles_out(bed):
    _, pd, _, _, _ = bed
    cache = pd.cache()
    buf = rdmapin.alloc(64 * KIB)
    h = cache.get(buf, RW)
    cache.close()
    with pytest.raises(rdmapin.ClosedError):
        h.lkey  # noqa: B018
    with pytest.raises(rdmapin.ClosedError):
        cache.get(buf, RW)
    h.release()  # late: nothing left to do
    assert "closed" in repr(cache)


def test_register_many_all_or_none(pd):
    base = procfs.vm_pin()
    bufs = [rdmapin.alloc(4 * KIB) for _ in range(200)]
    mrs = pd.register_many(bufs, RW)
    assert len(mrs) == 200 and len({m.lkey for m in mrs}) == 200
    assert procfs.vm_pin() - base == 200 * 4 * KIB
    for m in mrs:
        m.close()
    hole = rawmem.mmap(4 * KIB)
    rawmem.munmap(hole, 4 * KIB)
    with pytest.raises(rdmapin.RegistrationError) as e:
        pd.register_many([*bufs[:100], (hole, 4 * KIB), *bufs[100:]], RW)
    assert e.value.index == 100 and "buffer 100 of 201" in str(e.value)
    assert procfs.vm_pin() == base
    with pytest.raises(rdmapin.RegistrationError) as e:  # refused before any verbs call
        pd.register_many([*bufs[:3], b"read-only"], RW)
    assert e.value.index == 3 and e.value.errno == errno.EFAULT
    assert procfs.vm_pin() == base


def test_unprivileged_process_gets_a_watching_cache(pins):
    """sysctl vm.unprivileged_userfaultfd=0 and no CAP_SYS_PTRACE still allow user-mode-only
    userfaultfds (5.11+): the cache works for an unprivileged process."""
    script = ("import rdmapin, json\n"
              "with rdmapin.open_device('rxe0') as d, d.alloc_pd() as pd:\n"
              "    c = pd.cache(max_bytes=1<<20); b = rdmapin.alloc(65536)\n"
              "    c.get(b).release(); h = c.get(b); print(json.dumps([c.source_error, "
              "h.cached])); h.release(); c.close()\n")
    cmd = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
           "--inh-caps=-all", "--bounding-set=-all", sys.executable, "-c", script]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd="/")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [0, True]

