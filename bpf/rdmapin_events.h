/* One event record and one counter layout, shared by every rdmapin probe (bpf/ files) and read
 * by rdmapin.trace (which takes the struct's layout from the compiled program, so the two
 * sides cannot drift). Included once per program: the loader concatenates the bpf/ files.
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

enum rp_kind {
	RP_MIGRATE = 1,		/* migrate:mm_migrate_pages: a=succeeded b=failed c=thp_ok d=thp_fail e=thp_split f=latency ns */
	RP_FOLIO_FAIL,		/* one refused attempt to migrate a folio: a=pfn b=order c=refcount d=mapcount e=pincount
			 * f=stage (0 move_to_new_folio < 0, 1 try_to_migrate_one could not unmap), ret=-errno */
	RP_COMPACT_BEGIN,	/* compaction:mm_compaction_begin: a=zone_start b=migrate_pfn c=free_pfn d=zone_end e=sync */
	RP_COMPACT_END,		/* compaction:mm_compaction_end: same, ret=status, f=latency ns */
	RP_ISOLATE_MIGRATE,	/* mm_compaction_isolate_migratepages: a=start_pfn b=end_pfn c=nr_scanned d=nr_taken */
	RP_ISOLATE_FREE,	/* mm_compaction_isolate_freepages (+ fast_): same fields */
	RP_COMPACT_MIGRATE,	/* mm_compaction_migratepages: a=nr_migrated b=nr_failed */
	RP_COMPACT_FINISHED,	/* mm_compaction_finished: a=nid b=zone idx c=order, ret=status */
	RP_COMPACT_DEFERRED,	/* mm_compaction_deferred: a=nid b=zone idx c=order d=considered e=defer_shift */
	RP_ISOLATION_TEST,	/* page_isolation:test_pages_isolated: a=start_pfn b=end_pfn c=fin_pfn, ret=-EBUSY on failure */
	RP_COLLAPSE,		/* huge_memory:mm_collapse_huge_page: b=isolated, ret=status */
	RP_UMEM_BEGIN,		/* ib_umem_get entry: a=addr b=size d=access */
	RP_UMEM_GET,		/* ib_umem_get return: a=addr b=size c=umem d=access, ret=0 or -errno */
	RP_UMEM_RELEASE,	/* ib_umem_release: c=umem */
	RP_PIN_LONGTERM,	/* pin_user_pages*(FOLL_LONGTERM) outside ib_umem_get: a=start b=nr_pages d=gup_flags */
};

struct rp_event {
	u64 ts_ns;
	u32 pid;	/* tgid of the task the kernel ran this in */
	u32 tid;
	char comm[RP_COMM_LEN];
	u32 kind;	/* enum rp_kind */
	s32 reason;	/* migrate reason (enum names from the format file), -1 when unknown */
	s32 ret;	/* status / -errno, kind-specific */
	u32 mode;
	u64 a, b, c, d, e, f;
};

/* Totals that must agree with /proc/vmstat, summed per CPU by the user side. */
enum rp_counter {
	RPC_MIGRATE_SUCCEEDED,	/* pgmigrate_success */
	RPC_MIGRATE_FAILED,	/* pgmigrate_fail */
	RPC_THP_SUCCEEDED,	/* thp_migration_success */
	RPC_THP_FAILED,		/* thp_migration_fail */
	RPC_THP_SPLIT,		/* thp_migration_split */
	RPC_MIGRATE_CALLS,
	RPC_COMPACT_MIGRATE_SCANNED,	/* compact_migrate_scanned */
	RPC_COMPACT_FREE_SCANNED,	/* compact_free_scanned */
	RPC_COMPACT_ISOLATED,		/* compact_isolated */
	RPC_COMPACT_RUNS,
	RPC_COMPACT_MIGRATED,
	RPC_COMPACT_MIGRATE_FAILED,
	RPC_COMPACT_DEFERRED,
	RPC_FOLIO_FAILS,	/* folios refused, once per migrate_pages call (the events) */
	RPC_FOLIO_RETRIES,	/* that call's further refused attempts on them (not events) */
	RPC_ISOLATION_TESTS,
	RPC_ISOLATION_FAILS,
	RPC_COLLAPSE_CALLS,
	RPC_COLLAPSE_FAILS,
	RPC_UMEM_GETS,
	RPC_UMEM_BYTES,
	RPC_UMEM_RELEASES,
	RPC_PIN_LONGTERM,
	RPC_LOST,		/* events the buffer refused: reported, never silent */
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
		rp_count(RPC_LOST, 1);
#else
	if (rp_events.perf_submit(ctx, ev, sizeof(*ev)) < 0)
		rp_count(RPC_LOST, 1);
#endif
}
#endif /* RP_USER_SIDE */

#endif /* RDMAPIN_EVENTS_H */
