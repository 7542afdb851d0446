/* Page cache: pinned pages of a file that leave its page cache under the pin (truncate, hole
 * punch, invalidation, reclaim): the MR keeps the old pages, the file has new ones.
 * Events: tracepoint filemap:mm_filemap_delete_from_page_cache (pfn, i_ino, index, s_dev;
 *         order since 6.2+, absent on 6.1), fired by __filemap_remove_folio for each folio a
 *         mapping drops. Every deleted page is counted (RPC_FILEMAP_DELETES); an event, and
 *         RPC_FILEMAP_PINNED_DELETES, only for a folio that may be DMA-pinned as
 *         folio_maybe_dma_pinned() decides (rp_maybe_dma_pinned). Without the struct page
 *         layout (BTF) every deletion is an event (refcount 0); the user side attributes by PFN.
 * -D parameters: HAVE_FILEMAP_ORDER (the tracepoint has order), and the struct page layout
 *   of bpf/migrate.c (RP_STRUCT_PAGE_SIZE, RP_PAGE_REFCOUNT_OFF, RP_PG_HEAD,
 *   RP_FOLIO_PINCOUNT_OFF, RP_VMEMMAP_BASE_PTR or RP_VMEMMAP_START).
 */
#include "rdmapin_events.h"

TRACEPOINT_PROBE(filemap, mm_filemap_delete_from_page_cache)
{
	struct rp_event ev;
	u64 nr = 1;
	s32 refcount = 0;

#ifdef HAVE_FILEMAP_ORDER
	nr = 1ULL << (args->order & 63);
#endif
	rp_count(RPC_FILEMAP_DELETES, nr);
#ifdef RP_STRUCT_PAGE_SIZE
	{
		u64 page = rp_vmemmap() + args->pfn * RP_STRUCT_PAGE_SIZE;
		u64 flags = 0;

		bpf_probe_read_kernel(&flags, sizeof(flags), (void *)page);
		if (!rp_maybe_dma_pinned(page, flags, &refcount))
			return 0;
	}
#endif
	rp_count(RPC_FILEMAP_PINNED_DELETES, nr);
	rp_init(&ev, RP_FILEMAP_DELETE);
	ev.filemap.pfn = args->pfn;
	ev.filemap.ino = args->i_ino;
	ev.filemap.index = args->index;
	ev.filemap.dev = args->s_dev;
	ev.filemap.nr_pages = nr;
	ev.filemap.refcount = refcount;
	rp_emit(args, &ev);
	return 0;
}
