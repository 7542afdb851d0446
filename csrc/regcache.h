/* The registration cache's C half (regcache.c): the index of cached MRs, the hit path, and
 * the invalidation source (a userfaultfd read by a C thread). Declarations cffi parses, in
 * the same conventions as shim.h (ints: 0/count or -errno; pointers: NULL + rdmapin_errno()).
 *
 * Why C: a hit must be one call (lookup, take a reference, move to the LRU front), and the
 * userfaultfd's UNMAP/REMOVE/REMAP events block the unmapping thread until they are read, so
 * the reader must never need Python's GIL (a numpy dealloc munmaps holding it). One lock
 * guards every cache's index and the source; nothing under it allocates, frees, registers
 * or waits: a thread blocked in free() -> brk -> our event may hold malloc's arena lock. */

/* One cached registration. Python reads the first fields; the rest is the cache's. Allocated
 * and freed by Python (ffi.new), never by C: the index and the dead list hold plain pointers
 * and Python keeps the entry alive until rdmapin_rc_reap or rdmapin_rc_put gives it back. */
struct rdmapin_rc_entry {
	uint64_t addr;              /* the MR's range: page-aligned, maybe grown */
	uint64_t length;
	uint32_t lkey;
	uint32_t rkey;
	int access;
	int refs;                   /* handles out */
	int state;                  /* RDMAPIN_RC_* below */
	int why;                    /* why it left the index (RDMAPIN_RC_WHY_*) */
	uint64_t id;                /* Python's key for the MemoryRegion that owns the MR */
	struct rdmapin_mr *mr;      /* the MR (owned by that MemoryRegion) */
	struct rdmapin_rc_entry *lru_prev;
	struct rdmapin_rc_entry *lru_next;
	struct rdmapin_rc_entry *dead_next;
};

/* Counters and sizes, copied out under the lock by rdmapin_rc_stats. */
struct rdmapin_rc_stats {
	uint64_t hits;
	uint64_t misses;
	uint64_t evictions;
	uint64_t invalidations;
	uint64_t merges;
	uint64_t passthrough;
	uint64_t regions;           /* in the index */
	uint64_t bytes;             /* pinned by the index's MRs */
	uint64_t retired;           /* out of the index, MR still registered (handles out) */
	uint64_t retired_bytes;
	uint64_t handles;           /* handles out */
	uint64_t events;            /* invalidation events the source read (all caches) */
};

struct rdmapin_rc;

/* A cache; NULL + errno. max_bytes/max_regions 0 = unlimited. */
struct rdmapin_rc *rdmapin_rc_new(uint64_t max_bytes, uint64_t max_regions);
/* Retire every entry (the caller deregisters what rdmapin_rc_reap then returns, and the
 * entries with handles out as they come back); the cache stays allocated for late puts. */
void rdmapin_rc_close(struct rdmapin_rc *c);
void rdmapin_rc_free(struct rdmapin_rc *c);
/* 1 when c was made before a fork() in this (child) process: nothing of it may be used. */
int rdmapin_rc_forked(struct rdmapin_rc *c);

/* The hit path: the live entry covering [addr, addr+len) with at least `access`, its refs
 * taken; NULL on a miss (errno 0), ESHUTDOWN when closed, ECHILD after fork. */
struct rdmapin_rc_entry *rdmapin_rc_get(struct rdmapin_rc *c, uint64_t addr, uint64_t len,
					int access);
/* A handle given back: 0, or 1 when e is out of the index and now idle: the caller
 * deregisters its MR and frees it. */
int rdmapin_rc_put(struct rdmapin_rc *c, struct rdmapin_rc_entry *e);

/* For a miss: the union of [*start, *end) with the live entries overlapping or adjacent to
 * it and the union of their access (*access in/out); returns how many there are. */
int rdmapin_rc_span(struct rdmapin_rc *c, uint64_t *start, uint64_t *end, int *access);
/* Make room for one more entry in the index (allocates outside the lock): 0 or -ENOMEM. */
int rdmapin_rc_reserve(struct rdmapin_rc *c);
/* Evict least recently used idle entries until `need` more bytes (and one more region) fit,
 * or all when `all`; then hand out every idle entry out of the index (evicted, invalidated,
 * merged) into out[] (up to max). Returns how many were handed out. */
int rdmapin_rc_reap(struct rdmapin_rc *c, uint64_t need, int all, struct rdmapin_rc_entry **out,
		    int max);
/* Put e (fields filled, refs 1) in the index, retiring the live entries it overlaps (merged)
 * - unless an invalidation event since `seq` overlapped its range: then -EAGAIN and nothing
 * changed (the caller deregisters and tries again). */
int rdmapin_rc_insert(struct rdmapin_rc *c, struct rdmapin_rc_entry *e, uint64_t seq);
/* What rdmapin_rc_miss did, beyond its return value. */
struct rdmapin_rc_miss_out {
	struct rdmapin_mr *mr;      /* the new MR (cached or pass-through), NULL on failure */
	uint64_t addr;              /* the range registered (or tried) */
	uint64_t length;
	int access;
	int dead;                   /* idle entries out of the index waiting for rdmapin_rc_reap */
	int watch_err;              /* errno of UFFDIO_REGISTER for a pass-through, 0 if shared */
};
/* A whole miss in one call: span the request [start, end) with its live neighbours (unless
 * `alone`; and not past max(budget, its own size)), grow it to `huge` pages inside
 * [map_lo, map_hi) when huge != 0, evict idle LRU entries to fit (deregistering their MRs,
 * outside the lock), watch the range (a hugetlb range is grown to whole huge pages), register
 * it on p, check that no page of it is shared memory (pagemap), and put e in the index.
 * Returns 0 (cached), 1 (registered, not cached: pass-through, see watch_err), or -errno
 * (the registration failed: out->addr/length say what was tried). */
int rdmapin_rc_miss(struct rdmapin_rc *c, struct rdmapin_pd *p, struct rdmapin_rc_entry *e,
		    uint64_t start, uint64_t end, uint64_t huge, uint64_t map_lo, uint64_t map_hi,
		    int access, int alone, struct rdmapin_rc_miss_out *out);
/* Count a registration that bypassed the index (its range has no invalidation source). */
void rdmapin_rc_passthrough(struct rdmapin_rc *c);
void rdmapin_rc_stats(struct rdmapin_rc *c, struct rdmapin_rc_stats *out);

/* The invalidation source: one userfaultfd per process, shared by all caches, registered in
 * WP mode (nothing is ever write-protected, so faults, THP included, stay the kernel's) with
 * UNMAP, REMOVE and REMAP events, read by a C thread. */
struct rdmapin_uffd_info {
	int fd;                     /* -1 when there is none */
	int err;                    /* why not (errno), 0 when there is one */
	uint64_t features;          /* what UFFDIO_API granted */
	uint64_t seq;               /* events read so far */
};
/* Start the source if needed: 0 or -errno (ENOSYS, EPERM: no userfaultfd for this process). */
int rdmapin_uffd_start(void);
void rdmapin_uffd_info(struct rdmapin_uffd_info *out);
/* Events read so far: a miss takes it before registering its range. */
uint64_t rdmapin_uffd_seq(void);
/* UFFDIO_REGISTER [start, start+len) in WP mode: 0 or -errno (EINVAL: a VMA the kernel
 * cannot watch, or a hugetlb range not aligned to its page size; EBUSY: another userfaultfd
 * has it). *ioctls gets the range's ioctls (hugetlb lacks UFFDIO_ZEROPAGE). */
int rdmapin_uffd_register(uint64_t start, uint64_t len, uint64_t *ioctls);
/* UFFDIO_UNREGISTER the parts of [start, start+len) no live entry of any cache covers. */
int rdmapin_uffd_unregister(uint64_t start, uint64_t len);
/* Stop the reader and close the userfaultfd (its ranges are unregistered with it) when no
 * cache is left; returns how many caches remain. */
int rdmapin_uffd_release(void);

/* Does nothing: the benchmark's floor for one call into the shim. */
int rdmapin_noop(void);
