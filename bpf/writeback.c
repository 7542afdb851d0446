/* Writeback: pinned pages of a file written back under the pin. The file system writes a page
 * to disk (and write-protects its mappings for the next dirtying) while a device may be
 * writing the same page through an MR: what the disk gets is torn or stale, and a device's
 * write after it leaves the page changed without the file system knowing (the "filesystem
 * problem" of long-term pins, which 6.5 answered by refusing writable pins of such mappings).
 * Events: kprobe __folio_start_writeback(struct folio *, bool keep_write) (mm/page-writeback.c,
 *         6.1 and 6.12; folio_start_writeback() and 6.1's set_page_writeback() call it),
 *         entered once for each folio whose writeback starts. Every such page is counted
 *         (RPC_WRITEBACK_PAGES); an event, and RPC_WRITEBACK_PINNED, only for a folio of a
 *         file (not anonymous or swap cache) that folio_maybe_dma_pinned() would call pinned
 *         (rp_maybe_dma_pinned), with the same fields as RP_FILEMAP_DELETE: PFN, the inode's
 *         number, the page's index in the file, the super block's dev_t.
 * A folio already under writeback is skipped (6.1 returns early then; 6.12 forbids it).
 * -D parameters: HAVE_WRITEBACK, the struct page layout of bpf/migrate.c (RP_STRUCT_PAGE_SIZE,
 *   RP_PAGE_REFCOUNT_OFF, RP_PG_HEAD, RP_FOLIO_ORDER_OFF, RP_FOLIO_ORDER_MASK,
 *   RP_FOLIO_PINCOUNT_OFF, RP_VMEMMAP_BASE_PTR or RP_VMEMMAP_START), and from BTF:
 *   RP_PG_WRITEBACK, RP_FOLIO_MAPPING_OFF, RP_FOLIO_INDEX_OFF, RP_MAPPING_HOST_OFF,
 *   RP_INODE_INO_OFF, RP_INODE_SB_OFF, RP_SB_DEV_OFF.
 */
#include "rdmapin_events.h"

#define RP_PAGE_MAPPING_FLAGS 3UL	/* PAGE_MAPPING_ANON | PAGE_MAPPING_MOVABLE */

#ifdef HAVE_WRITEBACK
int rp_folio_start_writeback(struct pt_regs *ctx)
{
	u64 folio = PT_REGS_PARM1(ctx);
	u64 flags = 0, nr = 1, mapping = 0, host = 0, sb = 0, ino = 0, index = 0;
	u32 dev = 0;
	s32 refcount = 0;
	struct rp_event ev;

	bpf_probe_read_kernel(&flags, sizeof(flags), (void *)folio);
	if (flags & (1UL << RP_PG_WRITEBACK))
		return 0;
	if (flags & (1UL << RP_PG_HEAD)) {
		u64 word = 0;

		bpf_probe_read_kernel(&word, sizeof(word), (void *)(folio + RP_FOLIO_ORDER_OFF));
		nr = 1ULL << ((word & RP_FOLIO_ORDER_MASK) & 63);
	}
	rp_count(RPC_WRITEBACK_PAGES, nr);
	if (!rp_maybe_dma_pinned(folio, flags, &refcount))
		return 0;
	bpf_probe_read_kernel(&mapping, sizeof(mapping), (void *)(folio + RP_FOLIO_MAPPING_OFF));
	if (!mapping || (mapping & RP_PAGE_MAPPING_FLAGS))
		return 0;	/* anonymous (swap cache): no file to name */
	bpf_probe_read_kernel(&index, sizeof(index), (void *)(folio + RP_FOLIO_INDEX_OFF));
	bpf_probe_read_kernel(&host, sizeof(host), (void *)(mapping + RP_MAPPING_HOST_OFF));
	if (host) {
		bpf_probe_read_kernel(&ino, sizeof(ino), (void *)(host + RP_INODE_INO_OFF));
		bpf_probe_read_kernel(&sb, sizeof(sb), (void *)(host + RP_INODE_SB_OFF));
	}
	if (sb)
		bpf_probe_read_kernel(&dev, sizeof(dev), (void *)(sb + RP_SB_DEV_OFF));
	rp_count(RPC_WRITEBACK_PINNED, nr);
	rp_init(&ev, RP_FILEMAP_WRITEBACK);
	ev.filemap.pfn = (folio - rp_vmemmap()) / RP_STRUCT_PAGE_SIZE;
	ev.filemap.ino = ino;
	ev.filemap.index = index;
	ev.filemap.dev = dev;
	ev.filemap.nr_pages = nr;
	ev.filemap.refcount = refcount;
	rp_emit(ctx, &ev);
	return 0;
}
#endif /* HAVE_WRITEBACK */
