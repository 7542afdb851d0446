/* Declarations cffi parses (no preprocessor here): the libibverbs types rdmapin touches,
 * kept opaque where Python never reads a field, and the rdmapin_* shim functions of shim.c.
 *
 * Error convention (one place, rdmapin/_lib.py, turns it into exceptions):
 *   - int-returning calls return 0 (or a count) on success and -errno on failure;
 *   - pointer-returning calls return NULL and leave errno, saved right after the failing
 *     verbs call, in a thread-local the caller reads with rdmapin_errno().
 * This file is both real C (shim.c includes it) and the cdef, so it declares only plain
 * structs of its own; libibverbs types stay opaque.
 * So Python never reads a global errno after the fact, and the hot path (register) needs
 * no out-parameter allocation. */

struct ibv_context;
struct ibv_device;

struct ibv_pd;
struct ibv_mr;

struct rdmapin_mr;

/* A PD as rdmapin holds it: the ibv_pd (allocated here or borrowed from pyverbs) and the
 * list of its live MRs. Keeping the list here, not in Python, is what lets register/close
 * cost one C call each (benchmarks/reg_cost.py): closing the PD deregisters the MRs still
 * on it, and the registry reads them from here. Freed by rdmapin_pd_free (Python's
 * ffi.gc), never by close, so a racing register never touches freed memory. */
struct rdmapin_pd {
	struct ibv_pd *pd;
	int closing;                /* set by rdmapin_pd_close_mrs: no new MR joins */
	int count;                  /* MRs on the list */
	int inflight;               /* registrations and closes running outside the lock */
	struct rdmapin_mr *first;
	unsigned int gen;           /* the fork generation that wrapped it (see shim.c) */
};

/* One registration as Python sees it: the keys and range as plain integers, read straight
 * from this struct (no casts, no second call). Owned by the Python MemoryRegion through
 * ffi.gc(m, rdmapin_mr_free): it outlives deregistration, so lkey stays readable for
 * messages and a reader racing with close reads stale numbers, never freed memory. */
struct rdmapin_mr {
	uint64_t addr;
	uint64_t length;
	uint32_t lkey;
	uint32_t rkey;
	uint32_t handle;
	int access;
	struct ibv_mr *mr;          /* NULL once deregistered (or while a close is in flight) */
	struct rdmapin_pd *owner;   /* NULL once off its PD's list */
	struct rdmapin_mr *prev;
	struct rdmapin_mr *next;
	int busy;                   /* a close is deregistering it outside the lock */
	int orphan;                 /* Python dropped it but ibv_dereg_mr failed: PD close frees */
	unsigned int gen;           /* the fork generation that registered it (see shim.c) */
};

/* What the registry copies out of a PD's list. */
struct rdmapin_mr_info {
	uint64_t addr;
	uint64_t length;
	uint32_t lkey;
	uint32_t rkey;
	uint32_t handle;
	int access;
};

/* errno saved by the last failing pointer-returning shim call in this thread. */
int rdmapin_errno(void);

/* The version of the declarations in this file; rdmapin/_lib.py's API_VERSION must equal it
 * (bump both when a declaration changes), so a stale build is refused at import. 2: the
 * unused rdmapin_device_count and rdmapin_device_name are gone, rdmapin_pd_reopen is new;
 * 3: rdmapin_reg_many and the registration cache (regcache.h); 4: rdmapin_pd_dealloc
 * (dealloc by the wrapper, so a fork child leaves the parent's PD alone), the gen fields. */
int rdmapin_verbs_api_version(void);

/* Device list: names and GUIDs copied out, so Python holds no pointer into the list. */
struct rdmapin_device_info {
	char name[64];
	char ibdev_path[256];
	uint64_t node_guid;        /* host byte order */
	int node_type;
	int transport_type;
};
/* Fills up to max entries; returns how many devices exist (may exceed max) or -errno. */
int rdmapin_list_devices(struct rdmapin_device_info *out, int max);

/* Open by name; NULL or "" opens the first device. NULL + rdmapin_errno() on failure
 * (ENODEV: no device of that name / none at all). */
struct ibv_context *rdmapin_open_device(const char *name);
int rdmapin_close_device(struct ibv_context *ctx);
int rdmapin_context_device_name(struct ibv_context *ctx, char *buf, size_t len);

struct rdmapin_device_caps {
	char fw_ver[64];
	uint64_t node_guid;
	uint64_t sys_image_guid;
	uint64_t max_mr_size;
	uint64_t page_size_cap;
	uint32_t vendor_id;
	uint32_t vendor_part_id;
	uint32_t hw_ver;
	int max_qp;
	int max_cq;
	int max_mr;
	int max_pd;
	int max_mw;
	unsigned int device_cap_flags;
	int phys_port_cnt;
	int atomic_cap;
	int has_ex;                /* ibv_query_device_ex answered; the fields below are valid */
	uint64_t odp_general_caps;
	uint32_t odp_rc_caps;
	uint32_t odp_uc_caps;
	uint32_t odp_ud_caps;
	uint64_t device_cap_flags_ex;
};
int rdmapin_query_device(struct ibv_context *ctx, struct rdmapin_device_caps *out);

struct rdmapin_port_attr {
	int state;
	int max_mtu;
	int active_mtu;
	int gid_tbl_len;
	uint32_t max_msg_sz;
	uint16_t lid;
	int link_layer;
	int active_width;
	int active_speed;
	int phys_state;
};
int rdmapin_query_port(struct ibv_context *ctx, int port, struct rdmapin_port_attr *out);
int rdmapin_query_gid(struct ibv_context *ctx, int port, int index, uint8_t *raw16);

struct ibv_pd *rdmapin_alloc_pd(struct ibv_context *ctx);
int rdmapin_dealloc_pd(struct ibv_pd *pd);
/* The device a PD belongs to, also for a PD allocated by someone else (pyverbs). */
int rdmapin_pd_device_name(struct ibv_pd *pd, char *buf, size_t len);
uint32_t rdmapin_pd_handle(struct ibv_pd *pd);

/* rdmapin's PD over an ibv_pd; NULL + errno (ENOMEM). rdmapin_pd_free is ffi.gc's
 * destructor: it forgets (never deregisters) MRs still listed and frees the wrapper. */
struct rdmapin_pd *rdmapin_pd_wrap(struct ibv_pd *pd);
void rdmapin_pd_free(struct rdmapin_pd *p);
/* ibv_dealloc_pd of p's PD: 0 or -errno. In a fork child of the process that wrapped p, 0
 * without the call: the PD is the parent's (the uverbs file is shared across fork, so the
 * child's destroy would destroy it for the parent). */
int rdmapin_pd_dealloc(struct rdmapin_pd *p);
/* Refuse new MRs, wait for registrations and closes in flight, then deregister every MR
 * still on p: 0, or the first -errno (those MRs stay listed; a second call retries them).
 * After it, ibv_dealloc_pd meets no MR of rdmapin's. */
int rdmapin_pd_close_mrs(struct rdmapin_pd *p);
/* Take new MRs again: the PD's close failed after rdmapin_pd_close_mrs, so it stays open. */
void rdmapin_pd_reopen(struct rdmapin_pd *p);
/* Copy up to max live MRs of p into out; returns how many p has. */
int rdmapin_pd_mrs(struct rdmapin_pd *p, struct rdmapin_mr_info *out, int max);

/* The hot path: one call, the MR back (keys are read from it) and on p's list, or NULL +
 * errno (ESHUTDOWN: p is closing). Zero length fails with EINVAL here;
 * IBV_ACCESS_OPTIONAL_RANGE flags go through ibv_reg_mr_iova2 as libibverbs' own inline
 * ibv_reg_mr would. _at takes the address as an integer. */
struct rdmapin_mr *rdmapin_reg_mr(struct rdmapin_pd *p, void *addr, size_t length, int access);
struct rdmapin_mr *rdmapin_reg_mr_at(struct rdmapin_pd *p, uint64_t addr, size_t length,
				     int access);
struct rdmapin_mr *rdmapin_reg_mr_iova2(struct rdmapin_pd *p, void *addr, size_t length,
					uint64_t iova, unsigned int access);
struct rdmapin_mr *rdmapin_reg_dmabuf_mr(struct rdmapin_pd *p, uint64_t offset, size_t length,
					 uint64_t iova, int fd, int access);
/* ibv_dereg_mr and off the PD's list: 0; 1 when m was already closed (by its PD, another
 * thread, an earlier close); -errno when ibv_dereg_mr failed (then nothing changed). */
int rdmapin_dereg_mr(struct rdmapin_mr *m);
/* ffi.gc's destructor for an MR's Python owner: deregisters it if still live, frees it. */
void rdmapin_mr_free(struct rdmapin_mr *m);
/* Returns 0 or -errno and refreshes m's fields (and moves m to new_p's list when the PD
 * changes); *rereg_err gets ibv_rereg_mr's own IBV_REREG_MR_ERR_* code. */
int rdmapin_rereg_mr(struct rdmapin_mr *m, int flags, struct rdmapin_pd *new_p, void *addr,
		     size_t length, int access, int *rereg_err);
int rdmapin_advise_mr(struct ibv_pd *pd, int advice, uint32_t flags, uint64_t addr,
		      uint32_t length, uint32_t lkey);

int rdmapin_fork_init(void);
int rdmapin_is_fork_initialized(void);

/* Page-size-aware anonymous memory for rdmapin.memory: an `align`-aligned mapping of
 * `length` bytes (the over-allocation is trimmed, so no other mapping is touched).
 * NULL + rdmapin_errno() on failure. */
void *rdmapin_mmap(size_t length, size_t align, int extra_flags);
int rdmapin_munmap(void *addr, size_t length);
int rdmapin_madvise(void *addr, size_t length, int advice);

/* register_many: n registrations in one call, all or none. out[i] gets each MR (on p's list,
 * owned by the caller through rdmapin_mr_free as rdmapin_reg_mr's are). Returns n, or -(i+1)
 * when registration i failed: the i done before it are deregistered and freed, and *err
 * holds its errno. */
int rdmapin_reg_many(struct rdmapin_pd *p, const uint64_t *addrs, const uint64_t *lengths,
		     int n, int access, struct rdmapin_mr **out, int *err);
