/* The VM test bed's smoke probe (tests/vm/test_bed.py): proves a tracepoint program and a
 * kprobe both load and fire on the guest kernel.
 * Events: tracepoint migrate:mm_migrate_pages (succeeded, failed), kprobe ib_umem_get (size).
 */
#include <uapi/linux/ptrace.h>
#include <linux/migrate_mode.h>  /* enum migrate_mode, used by the tracepoint's struct */

enum smoke_slot { SMOKE_MIGRATED, SMOKE_FAILED, SMOKE_UMEM_CALLS, SMOKE_UMEM_BYTES, SMOKE_NR };

BPF_ARRAY(counts, u64, SMOKE_NR);

static __always_inline void add(int slot, u64 n)
{
	u64 *v = counts.lookup(&slot);

	if (v)
		__sync_fetch_and_add(v, n);
}

TRACEPOINT_PROBE(migrate, mm_migrate_pages)
{
	add(SMOKE_MIGRATED, args->succeeded);
	add(SMOKE_FAILED, args->failed);
	return 0;
}

struct ib_device;

int kprobe__ib_umem_get(struct pt_regs *ctx, struct ib_device *device, unsigned long addr,
			size_t size)
{
	add(SMOKE_UMEM_CALLS, 1);
	add(SMOKE_UMEM_BYTES, size);
	return 0;
}
