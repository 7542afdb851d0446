/* THP collapse (khugepaged): a collapse that failed, e.g. over a pinned small page.
 * Events: tracepoint huge_memory:mm_collapse_huge_page (mm, isolated, status; status names
 *         come from the format file, 1 is "succeeded" on 6.1 and 6.18).
 * -D parameters: RP_COLLAPSE_SUCCEEDED (the status value named "succeeded").
 */
#include "rdmapin_events.h"

#ifndef RP_COLLAPSE_SUCCEEDED
#define RP_COLLAPSE_SUCCEEDED 1
#endif

TRACEPOINT_PROBE(huge_memory, mm_collapse_huge_page)
{
	struct rp_event ev;

	rp_count(RPC_COLLAPSE_CALLS, 1);
	if (args->status == RP_COLLAPSE_SUCCEEDED)
		return 0;
	rp_count(RPC_COLLAPSE_FAILURES, 1);
	rp_init(&ev, RP_COLLAPSE);
	ev.collapse.mm = (u64)args->mm;
	ev.collapse.isolated = args->isolated;
	ev.ret = args->status;
	rp_emit(args, &ev);
	return 0;
}
