/* An MR's keys and device, from the kernel, on the thread that registers it.
 * Events: kprobe rdma_restrack_add(struct rdma_restrack_entry *res) (ib_core, exported). The
 *         RDMA core adds a user MR to its resource tracking right after the driver's
 *         reg_user_mr returned it with lkey and rkey set, and with mr->device set
 *         (ib_uverbs_reg_mr; ib_uverbs_rereg_mr when the driver made a new MR;
 *         drivers/infiniband/core/uverbs_cmd.c, 6.1 and 6.12), on the thread whose
 *         ib_umem_get pinned the MR's pages inside reg_user_mr (bpf/pins.c keeps that umem in
 *         rp_mr_umem). The struct ib_mr around res (container_of) gives lkey, rkey, length
 *         and its device's name: they go into the umem's rp_umem_live entry, which the user
 *         side reads with the pages, and into an RP_MR_KEYS event. Every add on the thread
 *         takes its umem: a CQ or QP over a umem (mlx5 and others) consumes its own.
 *         Left to the user side's fallback (the kernel's MR list over netlink): an MR whose
 *         length is not its umem's, MRs without an ib_umem_get on this thread (ODP's
 *         ib_umem_odp_get, dma-buf's ib_umem_dmabuf_get, kernel MRs), and a rereg that
 *         changes the translation in place (a new umem, no add).
 * -D parameters (rdmapin.trace.features, from BTF): RP_MR_RES_OFF, RP_MR_LKEY_OFF,
 *   RP_MR_RKEY_OFF, RP_MR_LENGTH_OFF, RP_MR_DEVICE_OFF (struct ib_mr), RP_IBDEV_NAME_OFF
 *   (struct ib_device), RP_RES_TYPE_OFF (struct rdma_restrack_entry), RP_RESTRACK_MR (enum
 *   rdma_restrack_type). Needs bpf/pins.c (rp_mr_umem, rp_umem_live) before it.
 */
#include "rdmapin_events.h"

int rp_mr_keys(struct pt_regs *ctx)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	u64 *mine = rp_mr_umem.lookup(&tid);
	u64 res = PT_REGS_PARM1(ctx);
	u64 mr = res - RP_MR_RES_OFF;
	struct rp_umem_live *live;
	struct rp_umem_live keyed;
	struct rp_event ev;
	u64 umem, length = 0, dev = 0;
	u32 type = 0;

	if (!mine)
		return 0;
	umem = *mine;
	rp_mr_umem.delete(&tid);
	bpf_probe_read_kernel(&type, sizeof(type), (void *)(res + RP_RES_TYPE_OFF));
	if (type != RP_RESTRACK_MR)
		return 0;
	live = rp_umem_live.lookup(&umem);
	if (!live)
		return 0;
	bpf_probe_read_kernel(&length, sizeof(length), (void *)(mr + RP_MR_LENGTH_OFF));
	if (length != live->size)
		return 0;
	/* A whole new value, not fields written in place: the user side reads the entry while
	 * this runs, and an update swaps the element in one step. */
	__builtin_memcpy(&keyed, live, sizeof(keyed));
	bpf_probe_read_kernel(&keyed.lkey, sizeof(keyed.lkey), (void *)(mr + RP_MR_LKEY_OFF));
	bpf_probe_read_kernel(&keyed.rkey, sizeof(keyed.rkey), (void *)(mr + RP_MR_RKEY_OFF));
	bpf_probe_read_kernel(&dev, sizeof(dev), (void *)(mr + RP_MR_DEVICE_OFF));
	bpf_probe_read_kernel_str(keyed.device, sizeof(keyed.device),
				  (void *)(dev + RP_IBDEV_NAME_OFF));
	keyed.keyed = 1;
	rp_umem_live.update(&umem, &keyed);
	rp_gen_bump();

	rp_init(&ev, RP_MR_KEYS);
	ev.mr.umem = umem;
	ev.mr.get_ts = keyed.ts_ns;
	ev.mr.length = length;
	ev.mr.lkey = keyed.lkey;
	ev.mr.rkey = keyed.rkey;
	__builtin_memcpy(ev.mr.device, keyed.device, sizeof(ev.mr.device));
	rp_emit(ctx, &ev);
	return 0;
}
