/* Page migration: how many pages moved or stayed, why, and which folio refused.
 * Events: tracepoint migrate:mm_migrate_pages (succeeded, failed, thp_succeeded, thp_failed,
 *         thp_split, mode, reason), migrate:mm_migrate_pages_start (mode, reason; latency),
 *         and one folio_fail per failed attempt to move one folio (PFN, order, refcount,
 *         mapcount, pincount), from whichever of the two steps refused it:
 *         unmap: fexit (or, without BPF trampolines, kprobe+kretprobe) try_to_migrate_one
 *                returned false, so the folio stays mapped and this attempt fails (-EAGAIN)
 *                before move_to_new_folio: every long-term-pinned private anonymous page
 *                (anon-exclusive and maybe DMA-pinned: page_try_share_anon_rmap -EBUSY);
 *         move:  fexit (or kprobe+kretprobe) move_to_new_folio < 0: an unmapped folio whose
 *                extra references refuse the move (pinned shmem and page cache: -EAGAIN).
 *         The kernel tries a refused folio up to NR_MAX_MIGRATE_PAGES_RETRY (10) times in one
 *         migrate_pages call and counts it once in pgmigrate_fail; so is it here: the first
 *         refused attempt of a folio in a call is the event (and RPC_FOLIO_FAILURES), the
 *         call's further attempts on it only count (RPC_FOLIO_RETRIES). Ten events per
 *         pinned page overflowed a 16 MiB ring for one 64 MiB MR and took minutes to drain.
 * -D parameters (rdmapin.trace.loader, from rdmapin.trace.features):
 *   HAVE_MIGRATE_START        migrate:mm_migrate_pages_start exists
 *   HAVE_MOVE_TO_NEW_FOLIO    move_to_new_folio is kprobe-able
 *   HAVE_FEXIT_MOVE_TO_NEW_FOLIO  ... and in BTF with BPF trampolines: use fexit
 *   HAVE_TRY_TO_MIGRATE_ONE, HAVE_FEXIT_TRY_TO_MIGRATE_ONE   the same for try_to_migrate_one
 *   RP_TTU_SPLIT_HUGE_PMD     enum ttu_flags value (BTF) marking a THP split's unmap, not a
 *                             migration attempt
 *   RP_FOLIO_SEEN_SLOTS       bound of the folio -> last migrate call map (an LRU: a folio
 *                             evicted mid-call is reported again, never hidden)
 *   RP_VMEMMAP_BASE_PTR       address of the kernel variable vmemmap_base (KASLR), or
 *   RP_VMEMMAP_START          the fixed vmemmap start when memory is not randomized
 *   RP_STRUCT_PAGE_SIZE, RP_PAGE_REFCOUNT_OFF, RP_PAGE_MAPCOUNT_OFF, RP_PG_HEAD,
 *   RP_FOLIO_ORDER_OFF, RP_FOLIO_ORDER_MASK, RP_FOLIO_PINCOUNT_OFF   (from BTF)
 */
#include "rdmapin_events.h"
#include <linux/migrate_mode.h>	/* enum migrate_mode in the tracepoint's struct */

struct rp_migrate_call {
	u64 ts_ns;
	s32 reason;
	u32 mode;
};

BPF_HASH(rp_migrate_inflight, u32, struct rp_migrate_call, RP_TID_SLOTS);
BPF_HISTOGRAM(rp_migrate_lat_us, int, 64);

#ifdef HAVE_MIGRATE_START
TRACEPOINT_PROBE(migrate, mm_migrate_pages_start)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct rp_migrate_call call = {
		.ts_ns = bpf_ktime_get_ns(), .reason = args->reason, .mode = args->mode,
	};

	rp_migrate_inflight.update(&tid, &call);
	return 0;
}
#endif

TRACEPOINT_PROBE(migrate, mm_migrate_pages)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct rp_migrate_call *call = rp_migrate_inflight.lookup(&tid);
	struct rp_event ev;

	rp_count(RPC_PGMIGRATE_SUCCESS, args->succeeded);
	rp_count(RPC_PGMIGRATE_FAIL, args->failed);
	rp_count(RPC_THP_MIGRATION_SUCCESS, args->thp_succeeded);
	rp_count(RPC_THP_MIGRATION_FAIL, args->thp_failed);
	rp_count(RPC_THP_MIGRATION_SPLIT, args->thp_split);
	rp_count(RPC_MIGRATE_CALLS, 1);

	rp_init(&ev, RP_MIGRATE);
	ev.reason = args->reason;
	ev.mode = args->mode;
	ev.migrate.succeeded = args->succeeded;
	ev.migrate.failed = args->failed;
	ev.migrate.thp_succeeded = args->thp_succeeded;
	ev.migrate.thp_failed = args->thp_failed;
	ev.migrate.thp_split = args->thp_split;
	if (call) {
		ev.migrate.latency_ns = ev.ts_ns - call->ts_ns;
		rp_migrate_lat_us.increment(bpf_log2l(ev.migrate.latency_ns / 1000));
		rp_migrate_inflight.delete(&tid);
	}
	rp_emit(args, &ev);
	return 0;
}

#if defined(HAVE_MOVE_TO_NEW_FOLIO) || defined(HAVE_TRY_TO_MIGRATE_ONE)
struct folio;
struct vm_area_struct;

#define RP_EAGAIN 11

#ifndef RP_FOLIO_SEEN_SLOTS
#define RP_FOLIO_SEEN_SLOTS 65536
#endif

/* The migrate_pages call (thread and start time) that last reported a folio. */
struct rp_folio_seen {
	u64 call_ts;
	u32 tid;
	u32 pad;
};

BPF_TABLE("lru_hash", u64, struct rp_folio_seen, rp_folio_seen, RP_FOLIO_SEEN_SLOTS);

/* One failed attempt to move folio ``src`` (-EAGAIN: extra references, i.e. pinned): an
 * event for the first attempt in a migrate_pages call, a count for the retries. Outside a
 * known call (no mm_migrate_pages_start, or tracing began mid-call) every attempt is one. */
static __always_inline int rp_folio_failed(void *ctx, u64 src, int rc, u32 stage)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct rp_migrate_call *call;
	struct rp_event ev;
	u64 flags = 0;
	s32 refcount = 0, mapcount = 0, pincount = 0;
	u8 order = 0;

	call = rp_migrate_inflight.lookup(&tid);
	if (call) {
		struct rp_folio_seen now = { .call_ts = call->ts_ns, .tid = tid, .pad = 0 };
		struct rp_folio_seen *seen = rp_folio_seen.lookup(&src);

		if (seen && seen->call_ts == now.call_ts && seen->tid == now.tid) {
			rp_count(RPC_FOLIO_RETRIES, 1);
			return 0;
		}
		rp_folio_seen.update(&src, &now);
	}
	rp_count(RPC_FOLIO_FAILURES, 1);
	rp_init(&ev, RP_FOLIO_FAIL);
	ev.ret = rc;
	if (call) {
		ev.reason = call->reason;
		ev.mode = call->mode;
	}
	ev.folio.pfn = (src - rp_vmemmap()) / RP_STRUCT_PAGE_SIZE;
	bpf_probe_read_kernel(&flags, sizeof(flags), (void *)src);
	bpf_probe_read_kernel(&refcount, sizeof(refcount), (void *)(src + RP_PAGE_REFCOUNT_OFF));
	bpf_probe_read_kernel(&mapcount, sizeof(mapcount), (void *)(src + RP_PAGE_MAPCOUNT_OFF));
	if (flags & (1UL << RP_PG_HEAD)) {
		u64 word = 0;

		bpf_probe_read_kernel(&word, sizeof(word), (void *)(src + RP_FOLIO_ORDER_OFF));
		order = word & RP_FOLIO_ORDER_MASK;
#ifdef RP_FOLIO_PINCOUNT_OFF
		bpf_probe_read_kernel(&pincount, sizeof(pincount),
				      (void *)(src + RP_FOLIO_PINCOUNT_OFF));
#endif
	} else {
		pincount = (u32)refcount / RP_GUP_PIN_COUNTING_BIAS;	/* unsigned: BPF has no sdiv */
	}
	ev.folio.order = order;
	ev.folio.refcount = refcount;
	ev.folio.mapcount = mapcount + 1;	/* _mapcount starts at -1 */
	ev.folio.pincount = pincount;
	ev.folio.stage = stage;
	rp_emit(ctx, &ev);
	return 0;
}
#endif /* HAVE_MOVE_TO_NEW_FOLIO || HAVE_TRY_TO_MIGRATE_ONE */

#ifdef HAVE_MOVE_TO_NEW_FOLIO

#ifdef HAVE_FEXIT_MOVE_TO_NEW_FOLIO
/* fexit: arguments and return value in one BPF trampoline call, far cheaper than a
 * kprobe+kretprobe pair on a function every migrated folio passes through. */
KRETFUNC_PROBE(move_to_new_folio, struct folio *dst, struct folio *src, enum migrate_mode mode,
	       int rc)
{
	u64 addr = 0;

	if (rc >= 0)
		return 0;
	/* src is a BTF pointer the verifier will not do arithmetic on; read its value as a
	 * plain number (from the stack copy) to compute the PFN. */
	bpf_probe_read_kernel(&addr, sizeof(addr), &src);
	return rp_folio_failed(ctx, addr, rc, RP_STAGE_MOVE);
}
#else
BPF_HASH(rp_folio_inflight, u32, u64, RP_TID_SLOTS);

/* move_to_new_folio(struct folio *dst, struct folio *src, enum migrate_mode mode) */
int rp_move_to_new_folio(struct pt_regs *ctx)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	u64 src = PT_REGS_PARM2(ctx);

	rp_folio_inflight.update(&tid, &src);
	return 0;
}

int rp_move_to_new_folio_ret(struct pt_regs *ctx)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	u64 *srcp = rp_folio_inflight.lookup(&tid);
	int rc = PT_REGS_RC(ctx);
	u64 src;

	if (!srcp)
		return 0;
	src = *srcp;
	rp_folio_inflight.delete(&tid);
	if (rc >= 0)
		return 0;
	return rp_folio_failed(ctx, src, rc, RP_STAGE_MOVE);
}
#endif /* HAVE_FEXIT_MOVE_TO_NEW_FOLIO */
#endif /* HAVE_MOVE_TO_NEW_FOLIO */

#ifdef HAVE_TRY_TO_MIGRATE_ONE
/* try_to_migrate_one(struct folio *folio, struct vm_area_struct *vma, unsigned long address,
 *                    void *arg) -> bool: rmap_walk's callback that swaps one mapping of the
 * folio for a migration entry; false stops the walk with the folio still mapped, and the
 * migration attempt (migrate_folio_unmap / unmap_and_move) ends with -EAGAIN, never reaching
 * move_to_new_folio. ``arg`` is the enum ttu_flags. */
static __always_inline int rp_unmap_failed(void *ctx, u64 folio, u64 flags)
{
#ifdef RP_TTU_SPLIT_HUGE_PMD
	if (flags & RP_TTU_SPLIT_HUGE_PMD)
		return 0;	/* split_huge_page's unmap_folio: a split, not a migration */
#endif
	return rp_folio_failed(ctx, folio, -RP_EAGAIN, RP_STAGE_UNMAP);
}

#ifdef HAVE_FEXIT_TRY_TO_MIGRATE_ONE
/* fexit: called for every mapping of every folio any migration moves, so a trampoline, not
 * a kprobe pair. ``ok`` is the bool return: only its low byte is defined. */
KRETFUNC_PROBE(try_to_migrate_one, struct folio *folio, struct vm_area_struct *vma,
	       unsigned long address, void *arg, u8 ok)
{
	u64 addr = 0, flags = 0;

	if (ok)
		return 0;
	bpf_probe_read_kernel(&addr, sizeof(addr), &folio);	/* BTF pointer -> number */
	bpf_probe_read_kernel(&flags, sizeof(flags), &arg);
	return rp_unmap_failed(ctx, addr, flags);
}
#else
struct rp_unmap_call {
	u64 folio;
	u64 flags;
};

BPF_HASH(rp_unmap_inflight, u32, struct rp_unmap_call, RP_TID_SLOTS);

int rp_try_to_migrate_one(struct pt_regs *ctx)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct rp_unmap_call call = { .folio = PT_REGS_PARM1(ctx), .flags = PT_REGS_PARM4(ctx) };

	rp_unmap_inflight.update(&tid, &call);
	return 0;
}

int rp_try_to_migrate_one_ret(struct pt_regs *ctx)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct rp_unmap_call *callp = rp_unmap_inflight.lookup(&tid);
	u8 ok = PT_REGS_RC(ctx) & 0xff;
	struct rp_unmap_call call;

	if (!callp)
		return 0;
	call = *callp;
	rp_unmap_inflight.delete(&tid);
	if (ok)
		return 0;
	return rp_unmap_failed(ctx, call.folio, call.flags);
}
#endif /* HAVE_FEXIT_TRY_TO_MIGRATE_ONE */
#endif /* HAVE_TRY_TO_MIGRATE_ONE */
