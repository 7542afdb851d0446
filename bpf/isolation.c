/* Page isolation for memory offline and alloc_contig_range: a range that would not isolate.
 * Events: tracepoint page_isolation:test_pages_isolated (start_pfn, end_pfn, fin_pfn; the
 *         test failed when fin_pfn < end_pfn, fin_pfn being the first PFN still busy).
 */
#include "rdmapin_events.h"

#ifndef RP_EBUSY
#define RP_EBUSY 16
#endif

TRACEPOINT_PROBE(page_isolation, test_pages_isolated)
{
	struct rp_event ev;
	int failed = args->fin_pfn < args->end_pfn;

	rp_count(RPC_ISOLATION_TESTS, 1);
	rp_count(RPC_ISOLATION_FAILURES, failed);
	rp_init(&ev, RP_ISOLATION_TEST);
	ev.isolation.start_pfn = args->start_pfn;
	ev.isolation.end_pfn = args->end_pfn;
	ev.isolation.fin_pfn = args->fin_pfn;
	ev.ret = failed ? -RP_EBUSY : 0;
	rp_emit(args, &ev);
	return 0;
}
