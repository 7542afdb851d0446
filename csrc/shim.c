/* rdmapin's thin C layer over libibverbs, compiled by cffi in API mode (csrc/build_shim.py).
 * Conventions in shim.h: ints are 0/count or -errno; pointers are NULL with errno saved at
 * the failing call in a thread-local (rdmapin_errno()). */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <endian.h>
#include <infiniband/verbs.h>

#include "shim.h"

static __thread int rdmapin_saved_errno;

/* Fork generation: bumped in every fork child. A PD or MR remembers the generation that made
 * it; in a child (another generation) destroying it would be wrong, because the child shares
 * the parent's uverbs file: its ibv_dereg_mr or ibv_dealloc_pd destroys the parent's object
 * (tests/vm/test_fork.py, before this: a child closing, or just collecting, what it inherited
 * failed the test and the parent then died of SIGSEGV). So in a child those closes only
 * forget the object. A child's own PDs and MRs are its generation: closed for real. */
static unsigned int fork_gen;

static void fork_gen_child(void)
{
	fork_gen++;
}

__attribute__((constructor)) static void fork_gen_init(void)
{
	pthread_atfork(NULL, NULL, fork_gen_child);
}

/* Save errno of the call that just failed; always returns NULL for the caller to return. */
static void *fail_null(int err)
{
	rdmapin_saved_errno = err ? err : EIO;
	return NULL;
}

int rdmapin_errno(void)
{
	return rdmapin_saved_errno;
}

int rdmapin_verbs_api_version(void)
{
	return 4;
}

int rdmapin_list_devices(struct rdmapin_device_info *out, int max)
{
	int i, n = 0;
	struct ibv_device **list = ibv_get_device_list(&n);

	if (!list)
		return -errno;
	for (i = 0; i < n && i < max; i++) {
		struct ibv_device *d = list[i];

		snprintf(out[i].name, sizeof(out[i].name), "%s", ibv_get_device_name(d));
		snprintf(out[i].ibdev_path, sizeof(out[i].ibdev_path), "%s", d->ibdev_path);
		out[i].node_guid = be64toh(ibv_get_device_guid(d));
		out[i].node_type = d->node_type;
		out[i].transport_type = d->transport_type;
	}
	ibv_free_device_list(list);
	return n;
}

struct ibv_context *rdmapin_open_device(const char *name)
{
	int i, n = 0, err;
	struct ibv_context *ctx = NULL;
	struct ibv_device **list = ibv_get_device_list(&n);

	if (!list)
		return fail_null(errno);
	for (i = 0; i < n; i++) {
		if (name && name[0] && strcmp(ibv_get_device_name(list[i]), name))
			continue;
		errno = 0;
		ctx = ibv_open_device(list[i]);
		err = errno;
		ibv_free_device_list(list);
		return ctx ? ctx : fail_null(err);
	}
	ibv_free_device_list(list);
	return fail_null(ENODEV);
}

int rdmapin_close_device(struct ibv_context *ctx)
{
	return ibv_close_device(ctx) ? -(errno ? errno : EIO) : 0;
}

int rdmapin_context_device_name(struct ibv_context *ctx, char *buf, size_t len)
{
	snprintf(buf, len, "%s", ibv_get_device_name(ctx->device));
	return 0;
}

int rdmapin_query_device(struct ibv_context *ctx, struct rdmapin_device_caps *out)
{
	struct ibv_device_attr_ex ex;
	struct ibv_device_attr *a = &ex.orig_attr;
	int rc;

	memset(&ex, 0, sizeof(ex));
	memset(out, 0, sizeof(*out));
	rc = ibv_query_device_ex(ctx, NULL, &ex);
	if (rc == 0) {
		out->has_ex = 1;
		out->odp_general_caps = ex.odp_caps.general_caps;
		out->odp_rc_caps = ex.odp_caps.per_transport_caps.rc_odp_caps;
		out->odp_uc_caps = ex.odp_caps.per_transport_caps.uc_odp_caps;
		out->odp_ud_caps = ex.odp_caps.per_transport_caps.ud_odp_caps;
		out->device_cap_flags_ex = ex.device_cap_flags_ex;
	} else {
		rc = ibv_query_device(ctx, a);
		if (rc)
			return -rc;
	}
	snprintf(out->fw_ver, sizeof(out->fw_ver), "%s", a->fw_ver);
	out->node_guid = be64toh(a->node_guid);
	out->sys_image_guid = be64toh(a->sys_image_guid);
	out->max_mr_size = a->max_mr_size;
	out->page_size_cap = a->page_size_cap;
	out->vendor_id = a->vendor_id;
	out->vendor_part_id = a->vendor_part_id;
	out->hw_ver = a->hw_ver;
	out->max_qp = a->max_qp;
	out->max_cq = a->max_cq;
	out->max_mr = a->max_mr;
	out->max_pd = a->max_pd;
	out->max_mw = a->max_mw;
	out->device_cap_flags = a->device_cap_flags;
	out->phys_port_cnt = a->phys_port_cnt;
	out->atomic_cap = a->atomic_cap;
	return 0;
}

int rdmapin_query_port(struct ibv_context *ctx, int port, struct rdmapin_port_attr *out)
{
	struct ibv_port_attr a;
	int rc;

	memset(&a, 0, sizeof(a));
	rc = ibv_query_port(ctx, (uint8_t)port, &a);
	if (rc)
		return -rc;
	out->state = a.state;
	out->max_mtu = a.max_mtu;
	out->active_mtu = a.active_mtu;
	out->gid_tbl_len = a.gid_tbl_len;
	out->max_msg_sz = a.max_msg_sz;
	out->lid = a.lid;
	out->link_layer = a.link_layer;
	out->active_width = a.active_width;
	out->active_speed = a.active_speed;
	out->phys_state = a.phys_state;
	return 0;
}

int rdmapin_query_gid(struct ibv_context *ctx, int port, int index, uint8_t *raw16)
{
	union ibv_gid gid;

	if (ibv_query_gid(ctx, (uint8_t)port, index, &gid))
		return -(errno ? errno : EINVAL);
	memcpy(raw16, gid.raw, 16);
	return 0;
}

struct ibv_pd *rdmapin_alloc_pd(struct ibv_context *ctx)
{
	struct ibv_pd *pd = ibv_alloc_pd(ctx);

	return pd ? pd : fail_null(errno);
}

int rdmapin_dealloc_pd(struct ibv_pd *pd)
{
	int rc = ibv_dealloc_pd(pd);

	return rc ? -rc : 0;
}

int rdmapin_pd_device_name(struct ibv_pd *pd, char *buf, size_t len)
{
	snprintf(buf, len, "%s", ibv_get_device_name(pd->context->device));
	return 0;
}

uint32_t rdmapin_pd_handle(struct ibv_pd *pd)
{
	return pd->handle;
}

/* One lock for every PD's MR list: taken for a few pointer updates per register/close, and
 * held across ibv_dereg_mr only on the rare paths (PD close, an MR collected unclosed). */
static pthread_mutex_t mr_lock = PTHREAD_MUTEX_INITIALIZER;
/* Broadcast when a PD's inflight count drops to 0 (a PD close waits for it). */
static pthread_cond_t mr_idle = PTHREAD_COND_INITIALIZER;

static void inflight_done(struct rdmapin_pd *p)
{
	if (--p->inflight == 0 && p->closing)
		pthread_cond_broadcast(&mr_idle);
}

/* Start a registration on p: 0, or -ESHUTDOWN when p is closing. */
static int inflight_begin(struct rdmapin_pd *p)
{
	int rc = 0;

	pthread_mutex_lock(&mr_lock);
	if (p->closing)
		rc = -ESHUTDOWN;
	else
		p->inflight++;
	pthread_mutex_unlock(&mr_lock);
	return rc;
}

static void link_mr(struct rdmapin_pd *p, struct rdmapin_mr *m)
{
	m->owner = p;
	m->prev = NULL;
	m->next = p->first;
	if (p->first)
		p->first->prev = m;
	p->first = m;
	p->count++;
}

static void unlink_mr(struct rdmapin_mr *m)
{
	struct rdmapin_pd *p = m->owner;

	if (!p)
		return;
	if (m->prev)
		m->prev->next = m->next;
	else
		p->first = m->next;
	if (m->next)
		m->next->prev = m->prev;
	m->owner = NULL;
	m->prev = m->next = NULL;
	p->count--;
}

struct rdmapin_pd *rdmapin_pd_wrap(struct ibv_pd *pd)
{
	struct rdmapin_pd *p = calloc(1, sizeof(*p));

	if (!p)
		return fail_null(ENOMEM);
	p->pd = pd;
	p->gen = fork_gen;
	return p;
}

int rdmapin_pd_dealloc(struct rdmapin_pd *p)
{
	return p->gen == fork_gen ? rdmapin_dealloc_pd(p->pd) : 0;
}

void rdmapin_pd_free(struct rdmapin_pd *p)
{
	pthread_mutex_lock(&mr_lock);
	while (p->first)
		unlink_mr(p->first);
	pthread_mutex_unlock(&mr_lock);
	free(p);
}

int rdmapin_pd_close_mrs(struct rdmapin_pd *p)
{
	struct rdmapin_mr *m, *next;
	int err = 0, rc;

	pthread_mutex_lock(&mr_lock);
	p->closing = 1;
	while (p->inflight)
		pthread_cond_wait(&mr_idle, &mr_lock);
	for (m = p->first; m; m = next) {
		next = m->next;
		if (!m->mr)
			continue;
		rc = m->gen == fork_gen ? ibv_dereg_mr(m->mr) : 0;
		if (rc) {
			if (!err)
				err = -rc;
			continue;
		}
		m->mr = NULL;
		unlink_mr(m);
		if (m->orphan)
			free(m);
	}
	pthread_mutex_unlock(&mr_lock);
	return err;
}

void rdmapin_pd_reopen(struct rdmapin_pd *p)
{
	pthread_mutex_lock(&mr_lock);
	p->closing = 0;
	pthread_mutex_unlock(&mr_lock);
}

int rdmapin_pd_mrs(struct rdmapin_pd *p, struct rdmapin_mr_info *out, int max)
{
	struct rdmapin_mr *m;
	int n = 0;

	pthread_mutex_lock(&mr_lock);
	for (m = p->first; m; m = m->next) {
		if (!m->mr)
			continue;
		if (n < max) {
			out[n].addr = m->addr;
			out[n].length = m->length;
			out[n].lkey = m->lkey;
			out[n].rkey = m->rkey;
			out[n].handle = m->handle;
			out[n].access = m->access;
		}
		n++;
	}
	pthread_mutex_unlock(&mr_lock);
	return n;
}

static void fill_mr(struct rdmapin_mr *m)
{
	m->addr = (uintptr_t)m->mr->addr;
	m->length = m->mr->length;
	m->lkey = m->mr->lkey;
	m->rkey = m->mr->rkey;
	m->handle = m->mr->handle;
}

/* Finish a registration begun with inflight_begin: wrap the fresh ibv_mr for Python and put
 * it on p's list; if either cannot be done (no memory, p closing meanwhile), undo it. */
static struct rdmapin_mr *wrap_mr(struct rdmapin_pd *p, struct ibv_mr *mr, int access)
{
	int err = mr ? ENOMEM : (errno ? errno : EIO);
	struct rdmapin_mr *m = mr ? calloc(1, sizeof(*m)) : NULL;

	if (m) {
		m->mr = mr;
		m->access = access;
		m->gen = fork_gen;
		fill_mr(m);
	}
	pthread_mutex_lock(&mr_lock);
	if (m && !p->closing) {
		link_mr(p, m);
		inflight_done(p);
		pthread_mutex_unlock(&mr_lock);
		return m;
	}
	if (m)
		err = ESHUTDOWN;
	if (mr)
		ibv_dereg_mr(mr);  /* still counted in flight: the PD's close waits for this */
	inflight_done(p);
	pthread_mutex_unlock(&mr_lock);
	free(m);
	return fail_null(err);
}

struct rdmapin_mr *rdmapin_reg_mr(struct rdmapin_pd *p, void *addr, size_t length, int access)
{
	if (!length)
		return fail_null(EINVAL);
	if (inflight_begin(p))
		return fail_null(ESHUTDOWN);
	/* The real symbol, not the inline dispatcher (access is not a compile-time constant
	 * here); optional-range flags need ibv_reg_mr_iova2, as in the dispatcher. */
	if (access & IBV_ACCESS_OPTIONAL_RANGE)
		return wrap_mr(p, ibv_reg_mr_iova2(p->pd, addr, length, (uintptr_t)addr, access),
			       access);
	return wrap_mr(p, (ibv_reg_mr)(p->pd, addr, length, access), access);
}

struct rdmapin_mr *rdmapin_reg_mr_at(struct rdmapin_pd *p, uint64_t addr, size_t length,
				     int access)
{
	return rdmapin_reg_mr(p, (void *)(uintptr_t)addr, length, access);
}

struct rdmapin_mr *rdmapin_reg_mr_iova2(struct rdmapin_pd *p, void *addr, size_t length,
					uint64_t iova, unsigned int access)
{
	if (inflight_begin(p))
		return fail_null(ESHUTDOWN);
	return wrap_mr(p, ibv_reg_mr_iova2(p->pd, addr, length, iova, access), (int)access);
}

struct rdmapin_mr *rdmapin_reg_dmabuf_mr(struct rdmapin_pd *p, uint64_t offset, size_t length,
					 uint64_t iova, int fd, int access)
{
	if (inflight_begin(p))
		return fail_null(ESHUTDOWN);
	return wrap_mr(p, ibv_reg_dmabuf_mr(p->pd, offset, length, iova, fd, access), access);
}

int rdmapin_dereg_mr(struct rdmapin_mr *m)
{
	struct rdmapin_pd *p;
	struct ibv_mr *mr;
	int rc;

	pthread_mutex_lock(&mr_lock);
	mr = m->mr;
	if (!mr || m->busy) {
		pthread_mutex_unlock(&mr_lock);
		return 1;
	}
	m->busy = 1;  /* claimed: a second close returns 1 */
	p = m->owner;
	if (p)
		p->inflight++;  /* the PD's close waits for this one */
	pthread_mutex_unlock(&mr_lock);
	rc = m->gen == fork_gen ? ibv_dereg_mr(mr) : 0;  /* a fork child forgets the parent's */
	pthread_mutex_lock(&mr_lock);
	m->busy = 0;
	if (!rc) {
		m->mr = NULL;
		unlink_mr(m);
	}
	if (p)
		inflight_done(p);
	pthread_mutex_unlock(&mr_lock);
	return rc ? -rc : 0;
}

void rdmapin_mr_free(struct rdmapin_mr *m)
{
	pthread_mutex_lock(&mr_lock);
	if (m->mr && m->gen == fork_gen && ibv_dereg_mr(m->mr)) {
		m->orphan = 1;  /* still registered: stays listed, its PD's close frees it */
		pthread_mutex_unlock(&mr_lock);
		return;
	}
	m->mr = NULL;
	unlink_mr(m);
	pthread_mutex_unlock(&mr_lock);
	free(m);
}

int rdmapin_rereg_mr(struct rdmapin_mr *m, int flags, struct rdmapin_pd *new_p, void *addr,
		     size_t length, int access, int *rereg_err)
{
	int rc;

	errno = 0;
	rc = ibv_rereg_mr(m->mr, flags, new_p ? new_p->pd : NULL, addr, length, access);
	*rereg_err = rc;
	if (rc)
		return -(errno ? errno : EINVAL);
	pthread_mutex_lock(&mr_lock);
	fill_mr(m);
	if (flags & IBV_REREG_MR_CHANGE_ACCESS)
		m->access = access;
	if (new_p && new_p != m->owner) {
		unlink_mr(m);
		link_mr(new_p, m);
	}
	pthread_mutex_unlock(&mr_lock);
	return 0;
}

int rdmapin_advise_mr(struct ibv_pd *pd, int advice, uint32_t flags, uint64_t addr,
		      uint32_t length, uint32_t lkey)
{
	struct ibv_sge sge = { .addr = addr, .length = length, .lkey = lkey };
	int rc = ibv_advise_mr(pd, (enum ibv_advise_mr_advice)advice, flags, &sge, 1);

	return rc ? -rc : 0;
}

int rdmapin_fork_init(void)
{
	int rc = ibv_fork_init();

	return rc ? -rc : 0;
}

int rdmapin_is_fork_initialized(void)
{
	return (int)ibv_is_fork_initialized();
}

void *rdmapin_mmap(size_t length, size_t align, int extra_flags)
{
	size_t span = length + (align > 4096 ? align : 0);
	char *p, *start;

	p = mmap(NULL, span, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | extra_flags, -1, 0);
	if (p == MAP_FAILED)
		return fail_null(errno);
	if (span == length)
		return p;
	/* Trim the over-allocation on both sides; only our own mapping is touched. */
	start = (char *)(((uintptr_t)p + align - 1) & ~((uintptr_t)align - 1));
	if (start > p)
		munmap(p, start - p);
	if (p + span > start + length)
		munmap(start + length, (p + span) - (start + length));
	return start;
}

int rdmapin_munmap(void *addr, size_t length)
{
	return munmap(addr, length) ? -errno : 0;
}

int rdmapin_madvise(void *addr, size_t length, int advice)
{
	return madvise(addr, length, advice) ? -errno : 0;
}

int rdmapin_reg_many(struct rdmapin_pd *p, const uint64_t *addrs, const uint64_t *lengths,
		     int n, int access, struct rdmapin_mr **out, int *err)
{
	int i, j;

	for (i = 0; i < n; i++) {
		out[i] = rdmapin_reg_mr(p, (void *)(uintptr_t)addrs[i], lengths[i], access);
		if (out[i])
			continue;
		*err = rdmapin_saved_errno;
		for (j = i - 1; j >= 0; j--) {  /* all or none: undo, newest first */
			rdmapin_dereg_mr(out[j]);
			rdmapin_mr_free(out[j]);
			out[j] = NULL;
		}
		return -(i + 1);
	}
	return n;
}
