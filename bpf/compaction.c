/* Compaction: runs, the pageblocks scanned and what was taken from them, deferrals.
 * Events: tracepoints compaction:mm_compaction_begin/end (status, latency),
 *         mm_compaction_isolate_migratepages (start_pfn, end_pfn, nr_scanned, nr_taken),
 *         mm_compaction_isolate_freepages and mm_compaction_fast_isolate_freepages (same),
 *         mm_compaction_migratepages (nr_migrated, nr_failed), mm_compaction_finished (ret),
 *         mm_compaction_deferred.
 * Counters kept to agree with /proc/vmstat: compact_migrate_scanned (migrate-side
 * nr_scanned), compact_free_scanned (free-side nr_scanned), compact_isolated (both nr_taken).
 * -D parameters: HAVE_FAST_ISOLATE_FREEPAGES, HAVE_COMPACTION_FINISHED,
 *   HAVE_COMPACTION_DEFERRED, RP_EMIT_FREE_SCANS (stream free-side scans too, not just count).
 */
#include "rdmapin_events.h"

/* The finished/deferred tracepoint structs bcc generates name `enum zone_type`; its
 * definition lives in linux/mmzone.h, far too heavy to compile in a guest for one 4-byte
 * field. A complete enum of the same size stands in (the values come from the format file). */
enum zone_type { RP_ZONE_TYPE_PLACEHOLDER };

BPF_HASH(rp_compact_inflight, u32, u64, RP_TID_SLOTS);
BPF_HISTOGRAM(rp_compact_lat_us, int, 64);

TRACEPOINT_PROBE(compaction, mm_compaction_begin)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	u64 ts = bpf_ktime_get_ns();
	struct rp_event ev;

	rp_compact_inflight.update(&tid, &ts);
	rp_count(RPC_COMPACTION_RUNS, 1);
	rp_init(&ev, RP_COMPACT_BEGIN);
	ev.compact.zone_start = args->zone_start;
	ev.compact.migrate_pfn = args->migrate_pfn;
	ev.compact.free_pfn = args->free_pfn;
	ev.compact.zone_end = args->zone_end;
	ev.compact.sync = args->sync;
	rp_emit(args, &ev);
	return 0;
}

TRACEPOINT_PROBE(compaction, mm_compaction_end)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	u64 *start = rp_compact_inflight.lookup(&tid);
	struct rp_event ev;

	rp_init(&ev, RP_COMPACT_END);
	ev.compact.zone_start = args->zone_start;
	ev.compact.migrate_pfn = args->migrate_pfn;
	ev.compact.free_pfn = args->free_pfn;
	ev.compact.zone_end = args->zone_end;
	ev.compact.sync = args->sync;
	ev.ret = args->status;
	if (start) {
		ev.compact.latency_ns = ev.ts_ns - *start;
		rp_compact_lat_us.increment(bpf_log2l(ev.compact.latency_ns / 1000));
		rp_compact_inflight.delete(&tid);
	}
	rp_emit(args, &ev);
	return 0;
}

TRACEPOINT_PROBE(compaction, mm_compaction_isolate_migratepages)
{
	struct rp_event ev;

	rp_count(RPC_COMPACT_MIGRATE_SCANNED, args->nr_scanned);
	rp_count(RPC_COMPACT_ISOLATED, args->nr_taken);
	rp_init(&ev, RP_ISOLATE_MIGRATE);
	ev.scan.start_pfn = args->start_pfn;
	ev.scan.end_pfn = args->end_pfn;
	ev.scan.nr_scanned = args->nr_scanned;
	ev.scan.nr_taken = args->nr_taken;
	rp_emit(args, &ev);
	return 0;
}

TRACEPOINT_PROBE(compaction, mm_compaction_isolate_freepages)
{
	rp_count(RPC_COMPACT_FREE_SCANNED, args->nr_scanned);
	rp_count(RPC_COMPACT_ISOLATED, args->nr_taken);
#ifdef RP_EMIT_FREE_SCANS
	struct rp_event ev;

	rp_init(&ev, RP_ISOLATE_FREE);
	ev.scan.start_pfn = args->start_pfn;
	ev.scan.end_pfn = args->end_pfn;
	ev.scan.nr_scanned = args->nr_scanned;
	ev.scan.nr_taken = args->nr_taken;
	rp_emit(args, &ev);
#endif
	return 0;
}

#ifdef HAVE_FAST_ISOLATE_FREEPAGES
TRACEPOINT_PROBE(compaction, mm_compaction_fast_isolate_freepages)
{
	rp_count(RPC_COMPACT_FREE_SCANNED, args->nr_scanned);
	rp_count(RPC_COMPACT_ISOLATED, args->nr_taken);
	return 0;
}
#endif

TRACEPOINT_PROBE(compaction, mm_compaction_migratepages)
{
	struct rp_event ev;

	rp_count(RPC_COMPACTION_MIGRATED, args->nr_migrated);
	rp_count(RPC_COMPACTION_MIGRATE_FAILED, args->nr_failed);
	rp_init(&ev, RP_COMPACT_MIGRATE);
	ev.compact_migrate.nr_migrated = args->nr_migrated;
	ev.compact_migrate.nr_failed = args->nr_failed;
	rp_emit(args, &ev);
	return 0;
}

#ifdef HAVE_COMPACTION_FINISHED
TRACEPOINT_PROBE(compaction, mm_compaction_finished)
{
	struct rp_event ev;

	rp_init(&ev, RP_COMPACT_FINISHED);
	ev.finished.nid = args->nid;
	ev.finished.zone = args->idx;
	ev.finished.order = args->order;
	ev.ret = args->ret;
	rp_emit(args, &ev);
	return 0;
}
#endif

#ifdef HAVE_COMPACTION_DEFERRED
TRACEPOINT_PROBE(compaction, mm_compaction_deferred)
{
	struct rp_event ev;

	rp_count(RPC_COMPACTION_DEFERRED, 1);
	rp_init(&ev, RP_COMPACT_DEFERRED);
	ev.deferred.nid = args->nid;
	ev.deferred.zone = args->idx;
	ev.deferred.order = args->order;
	ev.deferred.considered = args->considered;
	ev.deferred.defer_shift = args->defer_shift;
	rp_emit(args, &ev);
	return 0;
}
#endif
