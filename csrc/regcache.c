/* The registration cache's index, hit path and invalidation source; see regcache.h for the
 * rules (one lock, nothing under it allocates, frees, registers or waits). Included by the
 * cffi build after shim.c, so it shares fail_null and the thread-local errno. */
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/userfaultfd.h>

#include "regcache.h"

#define RC_LIVE 1               /* in the index: get() may return it */
#define RC_RETIRED 2            /* out of the index; its MR lives until its handles are back */

enum { WHY_NONE, WHY_INVALIDATED, WHY_MERGED, WHY_EVICTED, WHY_CLOSED };

/* The events the cache needs: without all three it cannot be exact, so it does not start. */
#define UFFD_NEEDED (UFFD_FEATURE_EVENT_UNMAP | UFFD_FEATURE_EVENT_REMOVE | \
		     UFFD_FEATURE_EVENT_REMAP)
#define RING 256                /* recent invalidated ranges a miss checks its range against */

struct rdmapin_rc {
	uint64_t max_bytes;
	uint64_t max_regions;
	struct rdmapin_rc_entry **index;   /* live entries, sorted by addr, never overlapping */
	int n;
	int cap;
	struct rdmapin_rc_entry lru;       /* sentinel: lru.lru_next is the most recent */
	struct rdmapin_rc_entry *dead;     /* retired and idle: for the caller to deregister */
	struct rdmapin_rc_stats st;
	unsigned int gen;                  /* src.gen when made: another value means forked */
	int closed;
	struct rdmapin_rc *next_cache;
	struct rdmapin_rc *prev_cache;
};

static struct {
	pthread_mutex_t lock;
	int fd;
	int wake;                          /* eventfd that stops the reader */
	int err;
	int running;
	int ncaches;
	int atfork;
	int pagemap;                       /* /proc/self/pagemap, for the shared-memory check */
	unsigned int gen;                  /* bumped in a fork child */
	uint64_t features;
	uint64_t seq;
	pthread_t reader;
	struct { uint64_t seq, start, end; } ring[RING];
	struct rdmapin_rc *caches;
} src = { .lock = PTHREAD_MUTEX_INITIALIZER, .fd = -1, .wake = -1, .pagemap = -1 };

/* -- the index (all under src.lock) ----------------------------------------------------- */

/* The position of the last entry whose addr <= addr, or -1. */
static int index_floor(struct rdmapin_rc *c, uint64_t addr)
{
	int lo = 0, hi = c->n - 1, at = -1;

	while (lo <= hi) {
		int mid = (lo + hi) / 2;

		if (c->index[mid]->addr <= addr) {
			at = mid;
			lo = mid + 1;
		} else {
			hi = mid - 1;
		}
	}
	return at;
}

/* The first entry that may overlap or touch [start, end) (touch: adjacent counts). */
static int index_first(struct rdmapin_rc *c, uint64_t start)
{
	int i = index_floor(c, start);

	if (i < 0)
		return 0;
	return c->index[i]->addr + c->index[i]->length >= start ? i : i + 1;
}

static void index_cut(struct rdmapin_rc *c, int i)
{
	memmove(&c->index[i], &c->index[i + 1], (size_t)(c->n - i - 1) * sizeof(c->index[0]));
	c->n--;
}

static void lru_unlink(struct rdmapin_rc_entry *e)
{
	e->lru_prev->lru_next = e->lru_next;
	e->lru_next->lru_prev = e->lru_prev;
	e->lru_prev = e->lru_next = NULL;
}

static void lru_front(struct rdmapin_rc *c, struct rdmapin_rc_entry *e)
{
	e->lru_prev = &c->lru;
	e->lru_next = c->lru.lru_next;
	c->lru.lru_next->lru_prev = e;
	c->lru.lru_next = e;
}

/* Take e (already cut from the index) out of service; idle ones go to the dead list. */
static void retire(struct rdmapin_rc *c, struct rdmapin_rc_entry *e, int why)
{
	lru_unlink(e);
	e->state = RC_RETIRED;
	e->why = why;
	c->st.regions--;
	c->st.bytes -= e->length;
	c->st.retired++;
	c->st.retired_bytes += e->length;
	if (e->refs == 0) {
		e->dead_next = c->dead;
		c->dead = e;
	}
}

static void given_back(struct rdmapin_rc *c, struct rdmapin_rc_entry *e)
{
	c->st.retired--;
	c->st.retired_bytes -= e->length;
}

/* Retire the live entries overlapping [start, end) (touching ones too when `touch`). */
static int retire_range(struct rdmapin_rc *c, uint64_t start, uint64_t end, int touch, int why)
{
	int i = index_first(c, start), hit = 0;

	while (i < c->n) {
		struct rdmapin_rc_entry *e = c->index[i];
		uint64_t e_end = e->addr + e->length;

		if (touch ? e->addr > end : e->addr >= end)
			break;
		if (touch ? e_end < start : e_end <= start) {
			i++;
			continue;
		}
		index_cut(c, i);
		retire(c, e, why);
		hit++;
	}
	return hit;
}

static int over_budget(struct rdmapin_rc *c, uint64_t need)
{
	return (c->max_bytes && c->st.bytes + need > c->max_bytes) ||
	       (c->max_regions && c->st.regions + 1 > c->max_regions);
}

/* -- the invalidation source --------------------------------------------------------------- */

/* One event read (under src.lock): the range no longer maps what the MRs over it pinned. */
static void invalidate(uint64_t start, uint64_t end)
{
	struct rdmapin_rc *c;

	src.seq++;
	src.ring[src.seq % RING].seq = src.seq;
	src.ring[src.seq % RING].start = start;
	src.ring[src.seq % RING].end = end;
	for (c = src.caches; c; c = c->next_cache)
		c->st.invalidations += retire_range(c, start, end, 0, WHY_INVALIDATED);
}

struct reader_fds {
	int fd;
	int wake;
};

static struct reader_fds reader_arg;

/* The reader: no Python, no allocation. Reading an UNMAP/REMOVE/REMAP event is what lets the
 * thread that caused it go on, and it is read under src.lock, so once that thread's munmap
 * (or madvise, or mremap) has returned, any get() that takes the lock after it finds the
 * entries over the range already retired. */
static void *reader_main(void *arg)
{
	struct reader_fds fds = *(struct reader_fds *)arg;
	struct uffd_msg msgs[32];
	sigset_t all;

	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);  /* signals stay Python's main thread's */
	for (;;) {
		struct pollfd p[2] = { { fds.fd, POLLIN, 0 }, { fds.wake, POLLIN, 0 } };
		ssize_t n;
		int i;

		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (p[1].revents)
			break;
		pthread_mutex_lock(&src.lock);
		while ((n = read(fds.fd, msgs, sizeof(msgs))) > 0) {
			for (i = 0; i < n / (ssize_t)sizeof(msgs[0]); i++) {
				struct uffd_msg *m = &msgs[i];

				if (m->event == UFFD_EVENT_UNMAP || m->event == UFFD_EVENT_REMOVE)
					invalidate(m->arg.remove.start, m->arg.remove.end);
				else if (m->event == UFFD_EVENT_REMAP)
					invalidate(m->arg.remap.from,
						   m->arg.remap.from + m->arg.remap.len);
			}
		}
		pthread_mutex_unlock(&src.lock);
	}
	return NULL;
}

static void atfork_prepare(void)
{
	pthread_mutex_lock(&src.lock);
}

static void atfork_parent(void)
{
	pthread_mutex_unlock(&src.lock);
}

/* The child has no reader thread and its VMAs are not registered (no UFFD_FEATURE_EVENT_FORK):
 * the parent's caches are dead here, and a cache made in the child starts a source of its own. */
static void atfork_child(void)
{
	pthread_mutex_init(&src.lock, NULL);
	src.gen++;
	if (src.fd >= 0)
		close(src.fd);
	if (src.wake >= 0)
		close(src.wake);
	if (src.pagemap >= 0)
		close(src.pagemap);  /* opened as the parent's /proc/self */
	src.fd = src.wake = src.pagemap = -1;
	src.running = 0;
	src.err = 0;
	src.caches = NULL;
	src.ncaches = 0;
}

static int uffd_open(uint64_t features, uint64_t *granted)
{
	struct uffdio_api api = { .api = UFFD_API, .features = features };
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);

	if (fd < 0 && errno == EINVAL)  /* before 5.11: no user-mode-only flag */
		fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return -errno;
	if (ioctl(fd, UFFDIO_API, &api)) {
		int err = errno;

		close(fd);
		return -err;
	}
	*granted = api.features;
	return fd;
}

/* Under src.lock. */
static int source_start(void)
{
	uint64_t offered = 0, granted = 0;
	int fd, wake, rc;

	if (src.running)
		return 0;
	/* UFFDIO_API answers once per fd: ask what is offered on one, then open the real one. */
	fd = uffd_open(0, &offered);
	if (fd < 0)
		return src.err = -fd, fd;
	close(fd);
	if ((offered & UFFD_NEEDED) != UFFD_NEEDED)
		return src.err = EOPNOTSUPP, -EOPNOTSUPP;
	fd = uffd_open(offered & (UFFD_NEEDED | UFFD_FEATURE_WP_HUGETLBFS_SHMEM), &granted);
	if (fd < 0)
		return src.err = -fd, fd;
	wake = eventfd(0, EFD_CLOEXEC);
	if (wake < 0) {
		rc = -errno;
		close(fd);
		return src.err = -rc, rc;
	}
	reader_arg.fd = fd;
	reader_arg.wake = wake;
	rc = pthread_create(&src.reader, NULL, reader_main, &reader_arg);
	if (rc) {
		close(fd);
		close(wake);
		return src.err = rc, -rc;
	}
	src.fd = fd;
	src.wake = wake;
	if (src.pagemap < 0)
		src.pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	src.features = granted;
	src.running = 1;
	src.err = 0;
	return 0;
}

int rdmapin_uffd_start(void)
{
	int rc;

	pthread_mutex_lock(&src.lock);
	rc = source_start();
	pthread_mutex_unlock(&src.lock);
	return rc;
}

void rdmapin_uffd_info(struct rdmapin_uffd_info *out)
{
	pthread_mutex_lock(&src.lock);
	out->fd = src.running ? src.fd : -1;
	out->err = src.err;
	out->features = src.features;
	out->seq = src.seq;
	pthread_mutex_unlock(&src.lock);
}

uint64_t rdmapin_uffd_seq(void)
{
	uint64_t seq;

	pthread_mutex_lock(&src.lock);
	seq = src.seq;
	pthread_mutex_unlock(&src.lock);
	return seq;
}

int rdmapin_uffd_register(uint64_t start, uint64_t len, uint64_t *ioctls)
{
	struct uffdio_register r = { .range = { start, len }, .mode = UFFDIO_REGISTER_MODE_WP };
	int fd;

	pthread_mutex_lock(&src.lock);
	fd = src.running ? src.fd : -1;
	pthread_mutex_unlock(&src.lock);
	if (fd < 0)
		return -ENOSYS;
	/* Outside the lock: the ioctl takes mmap_lock, and the reader must never wait. */
	if (ioctl(fd, UFFDIO_REGISTER, &r))
		return -errno;
	*ioctls = r.ioctls;
	return 0;
}

int rdmapin_uffd_unregister(uint64_t start, uint64_t len)
{
	uint64_t gaps[16][2], at = start, end = start + len;
	struct rdmapin_rc *c;
	int n = 0, i, fd;

	pthread_mutex_lock(&src.lock);
	fd = src.running ? src.fd : -1;
	/* Walk the covered parts of [start, end) over every cache, in address order enough for
	 * a few gaps: anything not covered by a live entry is unregistered. */
	while (fd >= 0 && at < end && n < 16) {
		uint64_t next = end, cover_end = 0;

		for (c = src.caches; c; c = c->next_cache) {
			int j = index_first(c, at);

			for (; j < c->n && c->index[j]->addr < end; j++) {
				struct rdmapin_rc_entry *e = c->index[j];

				if (e->addr <= at && e->addr + e->length > at) {
					if (e->addr + e->length > cover_end)
						cover_end = e->addr + e->length;
				} else if (e->addr > at && e->addr < next) {
					next = e->addr;
				}
			}
		}
		if (cover_end) {
			at = cover_end;
			continue;
		}
		gaps[n][0] = at;
		gaps[n][1] = next;
		n++;
		at = next;
	}
	pthread_mutex_unlock(&src.lock);
	for (i = 0; i < n; i++) {
		struct uffdio_range r = { gaps[i][0], gaps[i][1] - gaps[i][0] };

		ioctl(fd, UFFDIO_UNREGISTER, &r);  /* a VMA gone or changed since: nothing to do */
	}
	return n;
}

int rdmapin_uffd_release(void)
{
	int fd, wake, left;
	pthread_t reader;

	pthread_mutex_lock(&src.lock);
	left = src.ncaches;
	if (left || !src.running) {
		pthread_mutex_unlock(&src.lock);
		return left;
	}
	fd = src.fd;
	wake = src.wake;
	reader = src.reader;
	src.running = 0;
	src.fd = src.wake = -1;
	pthread_mutex_unlock(&src.lock);
	eventfd_write(wake, 1);
	pthread_join(reader, NULL);
	close(wake);
	close(fd);  /* the kernel unregisters every range of this userfaultfd */
	return 0;
}

/* -- caches ---------------------------------------------------------------------------------- */

struct rdmapin_rc *rdmapin_rc_new(uint64_t max_bytes, uint64_t max_regions)
{
	struct rdmapin_rc *c = calloc(1, sizeof(*c));

	if (!c)
		return fail_null(ENOMEM);
	c->max_bytes = max_bytes;
	c->max_regions = max_regions;
	c->lru.lru_next = c->lru.lru_prev = &c->lru;
	pthread_mutex_lock(&src.lock);
	if (!src.atfork && pthread_atfork(atfork_prepare, atfork_parent, atfork_child) == 0)
		src.atfork = 1;
	c->gen = src.gen;
	c->next_cache = src.caches;
	if (src.caches)
		src.caches->prev_cache = c;
	src.caches = c;
	src.ncaches++;
	pthread_mutex_unlock(&src.lock);
	return c;
}

int rdmapin_rc_forked(struct rdmapin_rc *c)
{
	return c->gen != src.gen;
}

/* Under src.lock: off the source's list (not in a fork child, where the list is gone). */
static void unlist(struct rdmapin_rc *c)
{
	if (c->gen != src.gen || !(c->prev_cache || c->next_cache || src.caches == c))
		return;
	if (c->prev_cache)
		c->prev_cache->next_cache = c->next_cache;
	else
		src.caches = c->next_cache;
	if (c->next_cache)
		c->next_cache->prev_cache = c->prev_cache;
	c->prev_cache = c->next_cache = NULL;
	src.ncaches--;
}

void rdmapin_rc_close(struct rdmapin_rc *c)
{
	pthread_mutex_lock(&src.lock);
	if (!c->closed && c->gen == src.gen) {
		while (c->n) {
			struct rdmapin_rc_entry *e = c->index[c->n - 1];

			c->n--;
			retire(c, e, WHY_CLOSED);
		}
	}
	c->closed = 1;
	unlist(c);
	pthread_mutex_unlock(&src.lock);
}

void rdmapin_rc_free(struct rdmapin_rc *c)
{
	pthread_mutex_lock(&src.lock);
	unlist(c);
	pthread_mutex_unlock(&src.lock);
	free(c->index);
	free(c);
}

struct rdmapin_rc_entry *rdmapin_rc_get(struct rdmapin_rc *c, uint64_t addr, uint64_t len,
					int access)
{
	struct rdmapin_rc_entry *e;
	int i;

	pthread_mutex_lock(&src.lock);
	if (c->closed || c->gen != src.gen) {
		int err = c->gen != src.gen ? ECHILD : ESHUTDOWN;

		pthread_mutex_unlock(&src.lock);
		return fail_null(err);
	}
	i = len && addr + len > addr ? index_floor(c, addr) : -1;  /* empty or wrapping: miss */
	if (i >= 0) {
		e = c->index[i];
		if (addr + len <= e->addr + e->length && (e->access & access) == access) {
			e->refs++;
			c->st.hits++;
			c->st.handles++;
			lru_unlink(e);
			lru_front(c, e);
			pthread_mutex_unlock(&src.lock);
			return e;
		}
	}
	pthread_mutex_unlock(&src.lock);
	rdmapin_saved_errno = 0;
	return NULL;
}

int rdmapin_rc_put(struct rdmapin_rc *c, struct rdmapin_rc_entry *e)
{
	int idle;

	pthread_mutex_lock(&src.lock);
	e->refs--;
	c->st.handles--;
	idle = e->refs == 0 && e->state != RC_LIVE;
	if (idle)
		given_back(c, e);
	pthread_mutex_unlock(&src.lock);
	return idle;
}

int rdmapin_rc_span(struct rdmapin_rc *c, uint64_t *start, uint64_t *end, int *access)
{
	int i, n = 0;

	pthread_mutex_lock(&src.lock);
	for (i = index_first(c, *start); i < c->n && c->index[i]->addr <= *end; i++) {
		struct rdmapin_rc_entry *e = c->index[i];

		if (e->addr < *start)
			*start = e->addr;
		if (e->addr + e->length > *end)
			*end = e->addr + e->length;
		*access |= e->access;
		n++;
	}
	pthread_mutex_unlock(&src.lock);
	return n;
}

int rdmapin_rc_reserve(struct rdmapin_rc *c)
{
	struct rdmapin_rc_entry **grown, **old;
	int cap;

	for (;;) {
		pthread_mutex_lock(&src.lock);
		if (c->n < c->cap) {
			pthread_mutex_unlock(&src.lock);
			return 0;
		}
		cap = c->cap ? 2 * c->cap : 64;
		pthread_mutex_unlock(&src.lock);
		grown = malloc((size_t)cap * sizeof(*grown));
		if (!grown)
			return -ENOMEM;
		pthread_mutex_lock(&src.lock);
		if (c->cap >= cap) {  /* another thread grew it meanwhile */
			pthread_mutex_unlock(&src.lock);
			free(grown);
			continue;
		}
		memcpy(grown, c->index, (size_t)c->n * sizeof(*grown));
		old = c->index;
		c->index = grown;
		c->cap = cap;
		pthread_mutex_unlock(&src.lock);
		free(old);
	}
}

int rdmapin_rc_reap(struct rdmapin_rc *c, uint64_t need, int mode,
		    struct rdmapin_rc_entry **out, int max)
{
	struct rdmapin_rc_entry *e, *prev;
	int n = 0;

	pthread_mutex_lock(&src.lock);
	/* mode 1: make room for `need` bytes and one region; 2: evict every idle entry. */
	for (e = c->lru.lru_prev; mode && e != &c->lru; e = prev) {
		prev = e->lru_prev;
		if (mode == 1 && !over_budget(c, need))
			break;
		if (e->refs)
			continue;
		index_cut(c, index_floor(c, e->addr));
		retire(c, e, WHY_EVICTED);
		c->st.evictions++;
	}
	while (c->dead && n < max) {
		e = c->dead;
		c->dead = e->dead_next;
		e->dead_next = NULL;
		given_back(c, e);
		out[n++] = e;
	}
	pthread_mutex_unlock(&src.lock);
	return n;
}

/* Under src.lock: did an event since `seq` touch [start, end)? (Unknown counts as yes.) */
static int invalidated_since(uint64_t seq, uint64_t start, uint64_t end)
{
	uint64_t s;

	if (src.seq - seq >= RING)
		return 1;
	for (s = seq + 1; s <= src.seq; s++) {
		if (src.ring[s % RING].start < end && src.ring[s % RING].end > start)
			return 1;
	}
	return 0;
}

int rdmapin_rc_insert(struct rdmapin_rc *c, struct rdmapin_rc_entry *e, uint64_t seq)
{
	int i;

	pthread_mutex_lock(&src.lock);
	if (c->closed || c->gen != src.gen) {
		int err = c->gen != src.gen ? ECHILD : ESHUTDOWN;

		pthread_mutex_unlock(&src.lock);
		return -err;
	}
	if (invalidated_since(seq, e->addr, e->addr + e->length)) {
		pthread_mutex_unlock(&src.lock);
		return -EAGAIN;
	}
	if (c->n >= c->cap) {  /* rdmapin_rc_reserve first */
		pthread_mutex_unlock(&src.lock);
		return -ENOMEM;
	}
	c->st.merges += retire_range(c, e->addr, e->addr + e->length, 0, WHY_MERGED);
	i = index_floor(c, e->addr) + 1;
	memmove(&c->index[i + 1], &c->index[i], (size_t)(c->n - i) * sizeof(c->index[0]));
	c->index[i] = e;
	c->n++;
	e->state = RC_LIVE;
	e->why = WHY_NONE;
	e->refs = 1;
	lru_front(c, e);
	c->st.regions++;
	c->st.bytes += e->length;
	c->st.misses++;
	c->st.handles++;
	pthread_mutex_unlock(&src.lock);
	return 0;
}

void rdmapin_rc_passthrough(struct rdmapin_rc *c)
{
	pthread_mutex_lock(&src.lock);
	c->st.passthrough++;
	c->st.misses++;
	pthread_mutex_unlock(&src.lock);
}

void rdmapin_rc_stats(struct rdmapin_rc *c, struct rdmapin_rc_stats *out)
{
	pthread_mutex_lock(&src.lock);
	*out = c->st;
	out->events = src.seq;
	pthread_mutex_unlock(&src.lock);
}

/* PM_FILE (bit 61 of a pagemap entry): a page-cache or shared-anonymous page. Readable
 * without privileges (only PFNs are hidden). The pages are present: just registered. */
static int range_shared(uint64_t start, uint64_t end)
{
	uint64_t ent[512];
	uint64_t a;
	int fd = src.pagemap;

	if (fd < 0)
		return 1;  /* cannot tell: do not cache */
	for (a = start; a < end;) {
		uint64_t n = (end - a) / 4096;
		ssize_t got;
		uint64_t i;

		if (n > 512)
			n = 512;
		got = pread(fd, ent, n * 8, (off_t)(a / 4096 * 8));
		if (got <= 0)
			return 1;
		for (i = 0; i < (uint64_t)got / 8; i++) {
			if (ent[i] >> 61 & 1)
				return 1;
		}
		a += (uint64_t)got / 8 * 4096;
	}
	return 0;
}

static uint64_t down(uint64_t x, uint64_t to) { return x - x % to; }
static uint64_t up(uint64_t x, uint64_t to) { return x % to ? x - x % to + to : x; }

/* [*lo, *hi) grown to `huge` pages, clipped to [map_lo, map_hi). */
static void grow(uint64_t *lo, uint64_t *hi, uint64_t huge, uint64_t map_lo, uint64_t map_hi)
{
	if (!huge)
		return;
	*lo = down(*lo, huge) < map_lo ? map_lo : down(*lo, huge);
	*hi = up(*hi, huge) > map_hi ? map_hi : up(*hi, huge);
}

static void drop_mr(struct rdmapin_mr *m)
{
	rdmapin_dereg_mr(m);  /* its MemoryRegion sees it closed; Python frees it */
}

/* Evict to fit `need` more bytes; deregister the evicted MRs after the lock is dropped. */
static void evict_for(struct rdmapin_rc *c, uint64_t need)
{
	struct rdmapin_mr *gone[64];
	struct rdmapin_rc_entry *e, *prev;
	int n, i;

	do {
		n = 0;
		pthread_mutex_lock(&src.lock);
		for (e = c->lru.lru_prev; e != &c->lru && n < 64 && over_budget(c, need); e = prev) {
			prev = e->lru_prev;
			if (e->refs)
				continue;
			index_cut(c, index_floor(c, e->addr));
			retire(c, e, WHY_EVICTED);
			c->st.evictions++;
			gone[n++] = e->mr;
		}
		pthread_mutex_unlock(&src.lock);
		for (i = 0; i < n; i++)
			drop_mr(gone[i]);
	} while (n == 64);
}

/* UFFDIO_REGISTER [*lo, *hi), growing a hugetlb range to whole huge pages: 0 or -errno. */
static int watch(uint64_t *lo, uint64_t *hi)
{
	static const uint64_t sizes[] = { 2 << 20, 1 << 30 };
	uint64_t ioctls;
	int rc = rdmapin_uffd_register(*lo, *hi - *lo, &ioctls);
	unsigned int i;

	for (i = 0; rc == -EINVAL && i < 2; i++) {
		uint64_t glo = down(*lo, sizes[i]), ghi = up(*hi, sizes[i]);

		if ((glo != *lo || ghi != *hi) && rdmapin_uffd_register(glo, ghi - glo, &ioctls) == 0) {
			*lo = glo;
			*hi = ghi;
			return 0;
		}
	}
	return rc;
}

int rdmapin_rc_miss(struct rdmapin_rc *c, struct rdmapin_pd *p, struct rdmapin_rc_entry *e,
		    uint64_t start, uint64_t end, uint64_t huge, uint64_t map_lo, uint64_t map_hi,
		    int access, int alone, struct rdmapin_rc_miss_out *out)
{
	int attempt, rc = -EAGAIN;

	memset(out, 0, sizeof(*out));
	for (attempt = 0; attempt < 4 && rc == -EAGAIN; attempt++) {
		uint64_t lo = start, hi = end, olo = start, ohi = end, seq;
		int acc = access, i, werr;
		struct rdmapin_mr *m;

		grow(&olo, &ohi, huge, map_lo, map_hi);
		pthread_mutex_lock(&src.lock);
		if (c->closed || c->gen != src.gen) {
			rc = c->gen != src.gen ? -ECHILD : -ESHUTDOWN;
			pthread_mutex_unlock(&src.lock);
			return rc;
		}
		for (i = alone ? c->n : index_first(c, lo); i < c->n && c->index[i]->addr <= end;
		     i++) {
			struct rdmapin_rc_entry *n = c->index[i];

			lo = n->addr < lo ? n->addr : lo;
			hi = n->addr + n->length > hi ? n->addr + n->length : hi;
			acc |= n->access;
		}
		pthread_mutex_unlock(&src.lock);
		grow(&lo, &hi, huge, map_lo, map_hi);
		if (hi - lo > (c->max_bytes > ohi - olo ? c->max_bytes : ohi - olo)) {
			lo = olo;  /* merging with its neighbours would outgrow the budget */
			hi = ohi;
			acc = access;
		}
		evict_for(c, hi - lo);
		seq = rdmapin_uffd_seq();
		werr = -watch(&lo, &hi);
		out->addr = lo;
		out->length = hi - lo;
		out->access = acc;
		m = rdmapin_reg_mr_at(p, lo, hi - lo, acc);
		if (!m) {
			rc = -rdmapin_saved_errno;
			break;
		}
		out->mr = m;
		if (werr || range_shared(lo, hi)) {
			if (!werr)
				rdmapin_uffd_unregister(lo, hi - lo);
			out->watch_err = werr;
			pthread_mutex_lock(&src.lock);
			c->st.passthrough++;
			c->st.misses++;
			pthread_mutex_unlock(&src.lock);
			rc = 1;
			break;
		}
		e->addr = m->addr;
		e->length = m->length;
		e->lkey = m->lkey;
		e->rkey = m->rkey;
		e->access = acc;
		e->mr = m;
		rc = rdmapin_rc_reserve(c);
		if (!rc)
			rc = rdmapin_rc_insert(c, e, seq);
		if (rc) {  /* EAGAIN: the mapping changed while it was registered: again */
			rdmapin_dereg_mr(m);
			rdmapin_mr_free(m);
			out->mr = NULL;
		}
	}
	pthread_mutex_lock(&src.lock);
	for (struct rdmapin_rc_entry *d = c->dead; d; d = d->dead_next)
		out->dead++;
	pthread_mutex_unlock(&src.lock);
	return rc;
}

int rdmapin_noop(void)
{
	return 0;
}
