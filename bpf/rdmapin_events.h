/* One event record and one counter layout, shared by every rdmapin probe (bpf/ files) and by
 * rdmapin.trace, which reads them from this file. Included once per program: the loader
 * concatenates the bpf/ files.
 *
 * Build-time parameters (-D, set by rdmapin.trace.loader from what the kernel offers):
 *   RP_RINGBUF            use a BPF ring buffer (else a perf buffer)
 *   RP_RINGBUF_PAGES      ring/perf buffer size in pages (power of two)
 *   RP_TID_SLOTS          bound of the per-thread in-flight maps
 */
#ifndef RDMAPIN_EVENTS_H
#define RDMAPIN_EVENTS_H

#include <uapi/linux/ptrace.h>	/* struct pt_regs; kept small: big headers cost minutes to
				 * compile in a TCG guest (linux/sched.h alone ~4x the program) */

#define RP_COMM_LEN 16	/* TASK_COMM_LEN, the size bpf_get_current_comm() fills */

#ifndef RP_RINGBUF_PAGES
#define RP_RINGBUF_PAGES 1024
#endif
#ifndef RP_TID_SLOTS
#define RP_TID_SLOTS 4096
#endif

/* The event layout, in one place: this file. rdmapin.trace.layout reads enum rp_kind,
 * enum rp_folio_stage, enum rp_counter, the per-kind structs and struct rp_event from it (one
 * declaration per line, as written here), builds the record the user side decodes from them
 * and checks its size against RP_EVENT_SIZE, as the compiler does below.
 *
 * Every event has the generic fields of struct rp_event; what else it carries is the union
 * member whose comment names its kind. The kind's comment says where it comes from and what
 * ret (and reason, mode) mean for it; a generic field it does not set stays 0 (-1 reason).
 */
enum rp_kind {
	RP_MIGRATE = 1,		/* migrate:mm_migrate_pages; reason, mode */
	RP_FOLIO_FAIL,		/* one refused attempt to migrate a folio; ret=-errno,
				 * reason and mode of its migrate_pages call when known */
	RP_COMPACT_BEGIN,	/* compaction:mm_compaction_begin */
	RP_COMPACT_END,		/* compaction:mm_compaction_end; ret=status */
	RP_ISOLATE_MIGRATE,	/* compaction:mm_compaction_isolate_migratepages */
	RP_ISOLATE_FREE,	/* compaction:mm_compaction_isolate_freepages (+ fast_) */
	RP_COMPACT_MIGRATE,	/* compaction:mm_compaction_migratepages */
	RP_COMPACT_FINISHED,	/* compaction:mm_compaction_finished; ret=status */
	RP_COMPACT_DEFERRED,	/* compaction:mm_compaction_deferred */
	RP_ISOLATION_TEST,	/* page_isolation:test_pages_isolated; ret=-EBUSY on failure */
	RP_COLLAPSE,		/* huge_memory:mm_collapse_huge_page that failed; ret=status */
	RP_UMEM_BEGIN,		/* ib_umem_get entry */
	RP_UMEM_GET,		/* ib_umem_get return; ret=0 or -errno */
	RP_UMEM_RELEASE,	/* ib_umem_release */
	RP_PIN_LONGTERM,	/* pin_user_pages*(FOLL_LONGTERM) outside ib_umem_get; ret=-errno */
	RP_FILEMAP_DELETE,	/* filemap:mm_filemap_delete_from_page_cache of a maybe-pinned
				 * folio (truncate, hole punch, invalidate, reclaim) */
	RP_FILEMAP_WRITEBACK,	/* __folio_start_writeback of a maybe-pinned folio of a file
				 * (bpf/writeback.c): written back while a device may write it */
	RP_MR_KEYS,		/* rdma_restrack_add of the MR over an ib_umem_get this thread
				 * made (bpf/mrkeys.c): its keys and device */
};

enum rp_folio_stage {		/* struct rp_folio.stage: the step that refused the folio */
	RP_STAGE_MOVE = 0,	/* move_to_new_folio < 0 */
	RP_STAGE_UNMAP = 1,	/* try_to_migrate_one could not unmap it */
};

struct rp_migrate {
	u64 succeeded;
	u64 failed;
	u64 thp_succeeded;
	u64 thp_failed;
	u64 thp_split;
	u64 latency_ns;		/* since mm_migrate_pages_start; 0 when not seen */
};

struct rp_folio {
	u64 pfn;
	u64 order;
	u64 refcount;
	u64 mapcount;		/* _mapcount + 1 */
	u64 pincount;
	u64 stage;		/* enum rp_folio_stage */
};

struct rp_compact {
	u64 zone_start;
	u64 migrate_pfn;
	u64 free_pfn;
	u64 zone_end;
	u64 sync;
	u64 latency_ns;		/* RP_COMPACT_END: since its begin; 0 when not seen */
};

struct rp_scan {
	u64 start_pfn;
	u64 end_pfn;
	u64 nr_scanned;
	u64 nr_taken;
};

struct rp_compact_migrate {
	u64 nr_migrated;
	u64 nr_failed;
};

struct rp_compact_finished {
	u64 nid;
	u64 zone;		/* zone index */
	u64 order;
};

struct rp_compact_deferred {
	u64 nid;
	u64 zone;		/* zone index */
	u64 order;
	u64 considered;
	u64 defer_shift;
};

struct rp_isolation_test {
	u64 start_pfn;
	u64 end_pfn;
	u64 fin_pfn;		/* the first PFN still busy; end_pfn when all isolated */
};

struct rp_collapse {
	u64 mm;
	u64 isolated;
};

struct rp_umem {
	u64 addr;
	u64 size;
	u64 umem;		/* struct ib_umem *; 0 at the entry and on failure */
	u64 access;
};

struct rp_pin {
	u64 start;
	u64 nr_pages;		/* pinned: the call's return, 0 on failure */
	u64 requested;
	u64 gup_flags;
};

struct rp_filemap {
	u64 pfn;		/* the folio's first PFN */
	u64 ino;
	u64 index;		/* page offset in the file */
	u64 dev;		/* the super block's dev_t, as the kernel encodes it */
	u64 nr_pages;		/* 1 << order (1 where the tracepoint has no order) */
	u64 refcount;		/* the folio's _refcount then; 0 when its layout is unknown */
};

#define RP_IBDEV_NAME_LEN 16	/* of IB_DEVICE_NAME_MAX (64): "rxe0", "mlx5_0" fit */

struct rp_mr_keys {
	u64 umem;		/* struct ib_umem * the MR maps */
	u64 get_ts;		/* ts_ns of that umem's RP_UMEM_GET event */
	u64 length;		/* ib_mr.length */
	u32 lkey;
	u32 rkey;
	char device[RP_IBDEV_NAME_LEN];	/* ib_device.name, cut to 15 bytes */
};

struct rp_event {
	u64 ts_ns;
	u32 pid;		/* tgid of the task the kernel ran this in */
	u32 tid;
	char comm[RP_COMM_LEN];
	u32 kind;		/* enum rp_kind */
	s32 reason;		/* migrate reason (names from the format file), -1 if unknown */
	s32 ret;		/* status / -errno, kind-specific */
	u32 mode;
	union {			/* by kind: the member whose comment names it */
		struct rp_migrate migrate;		/* RP_MIGRATE */
		struct rp_folio folio;			/* RP_FOLIO_FAIL */
		struct rp_compact compact;		/* RP_COMPACT_BEGIN, RP_COMPACT_END */
		struct rp_scan scan;			/* RP_ISOLATE_MIGRATE, RP_ISOLATE_FREE */
		struct rp_compact_migrate compact_migrate;	/* RP_COMPACT_MIGRATE */
		struct rp_compact_finished finished;	/* RP_COMPACT_FINISHED */
		struct rp_compact_deferred deferred;	/* RP_COMPACT_DEFERRED */
		struct rp_isolation_test isolation;	/* RP_ISOLATION_TEST */
		struct rp_collapse collapse;		/* RP_COLLAPSE */
		struct rp_umem umem;	/* RP_UMEM_BEGIN, RP_UMEM_GET, RP_UMEM_RELEASE */
		struct rp_pin pin;			/* RP_PIN_LONGTERM */
		struct rp_filemap filemap;	/* RP_FILEMAP_DELETE, RP_FILEMAP_WRITEBACK */
		struct rp_mr_keys mr;			/* RP_MR_KEYS */
	};
};

#define RP_EVENT_SIZE 96
_Static_assert(sizeof(struct rp_event) == RP_EVENT_SIZE, "struct rp_event changed size");

/* Totals summed per CPU by the user side, named there as here without RPC_ and in lower
 * case; "[vmstat]" marks the ones that must equal /proc/vmstat's counter of that name. */
enum rp_counter {
	RPC_PGMIGRATE_SUCCESS,		/* [vmstat] */
	RPC_PGMIGRATE_FAIL,		/* [vmstat] */
	RPC_THP_MIGRATION_SUCCESS,	/* [vmstat] */
	RPC_THP_MIGRATION_FAIL,		/* [vmstat] */
	RPC_THP_MIGRATION_SPLIT,	/* [vmstat] */
	RPC_MIGRATE_CALLS,
	RPC_COMPACT_MIGRATE_SCANNED,	/* [vmstat] */
	RPC_COMPACT_FREE_SCANNED,	/* [vmstat] */
	RPC_COMPACT_ISOLATED,		/* [vmstat] */
	RPC_COMPACTION_RUNS,
	RPC_COMPACTION_MIGRATED,
	RPC_COMPACTION_MIGRATE_FAILED,
	RPC_COMPACTION_DEFERRED,
	RPC_FOLIO_FAILURES,		/* folios refused, once per migrate_pages call (events) */
	RPC_FOLIO_RETRIES,		/* that call's further refused attempts (not events) */
	RPC_ISOLATION_TESTS,
	RPC_ISOLATION_FAILURES,
	RPC_COLLAPSE_CALLS,
	RPC_COLLAPSE_FAILURES,
	RPC_UMEM_GETS,
	RPC_UMEM_BYTES,
	RPC_UMEM_RELEASES,
	RPC_LONGTERM_PINS,
	RPC_FILEMAP_DELETES,		/* pages deleted from any page cache */
	RPC_FILEMAP_PINNED_DELETES,	/* of them, pages of maybe-pinned folios (events) */
	RPC_WRITEBACK_PAGES,		/* pages whose writeback started (any file, swap) */
	RPC_WRITEBACK_PINNED,		/* of them, pages of maybe-pinned file folios (events) */
	RPC_LOST_EVENTS,		/* events the buffer refused: reported, never silent */
	RPC_NR,
};

#ifndef RP_USER_SIDE
BPF_PERCPU_ARRAY(rp_totals, u64, RPC_NR);
#ifdef RP_RINGBUF
BPF_RINGBUF_OUTPUT(rp_events, RP_RINGBUF_PAGES);
#else
BPF_PERF_OUTPUT(rp_events);
#endif

static __always_inline void rp_count(int slot, u64 n)
{
	u64 *v = rp_totals.lookup(&slot);

	if (v)
		*v += n;	/* per-CPU slot: no atomics needed */
}

static __always_inline void rp_init(struct rp_event *ev, u32 kind)
{
	u64 id = bpf_get_current_pid_tgid();

	__builtin_memset(ev, 0, sizeof(*ev));
	ev->ts_ns = bpf_ktime_get_ns();
	ev->pid = id >> 32;
	ev->tid = (u32)id;
	ev->kind = kind;
	ev->reason = -1;
	bpf_get_current_comm(&ev->comm, sizeof(ev->comm));
}

static __always_inline void rp_emit(void *ctx, struct rp_event *ev)
{
#ifdef RP_RINGBUF
	if (rp_events.ringbuf_output(ev, sizeof(*ev), 0) < 0)
		rp_count(RPC_LOST_EVENTS, 1);
#else
	if (rp_events.perf_submit(ctx, ev, sizeof(*ev)) < 0)
		rp_count(RPC_LOST_EVENTS, 1);
#endif
}

/* include/linux/mm.h: small folios count pins in _refcount, this much each */
#define RP_GUP_PIN_COUNTING_BIAS 1024

#ifdef RP_STRUCT_PAGE_SIZE
/* struct page array's start (rdmapin.trace.features._folio_layout: RP_VMEMMAP_BASE_PTR, the
 * address of vmemmap_base under KASLR, or RP_VMEMMAP_START): PFN <-> struct page *. */
static __always_inline u64 rp_vmemmap(void)
{
#ifdef RP_VMEMMAP_BASE_PTR
	u64 base = 0;

	bpf_probe_read_kernel(&base, sizeof(base), (void *)RP_VMEMMAP_BASE_PTR);
	return base;
#else
	return RP_VMEMMAP_START;
#endif
}

/* folio_maybe_dma_pinned() (include/linux/mm.h) of the struct page at ``page`` whose flags
 * word is ``flags``: _pincount > 0 for a large folio (where the layout has it), _refcount >=
 * GUP_PIN_COUNTING_BIAS for a small one. ``*refcount`` gets the _refcount read. */
static __always_inline int rp_maybe_dma_pinned(u64 page, u64 flags, s32 *refcount)
{
	bpf_probe_read_kernel(refcount, sizeof(*refcount), (void *)(page + RP_PAGE_REFCOUNT_OFF));
#ifdef RP_FOLIO_PINCOUNT_OFF
	if (flags & (1UL << RP_PG_HEAD)) {
		s32 pincount = 0;

		bpf_probe_read_kernel(&pincount, sizeof(pincount),
				      (void *)(page + RP_FOLIO_PINCOUNT_OFF));
		return pincount > 0;
	}
#endif
	return *refcount >= RP_GUP_PIN_COUNTING_BIAS;
}
#endif /* RP_STRUCT_PAGE_SIZE */
#endif /* RP_USER_SIDE */

#endif /* RDMAPIN_EVENTS_H */
