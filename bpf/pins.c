/* The pin ledger: who pinned which user range long-term, while tracing.
 * Events: kprobe+kretprobe ib_umem_get(device, addr, size, access) -> struct ib_umem * (the
 *         RDMA core pins an MR's pages here with pin_user_pages_fast(FOLL_LONGTERM)),
 *         kprobe ib_umem_release(umem); kprobe+kretprobe pin_user_pages, pin_user_pages_fast
 *         and pin_user_pages_remote with FOLL_LONGTERM set, outside ib_umem_get (io_uring fixed
 *         buffers, VFIO, ...), one event at the return (pages pinned, or the error).
 *         Maps: rp_umem_live, the registrations alive now, rp_pin_recent, the other pins made
 *         and not yet read, and rp_umem_gen, bumped by each new one of either: the user side
 *         reads their pages from the pagemap while they are still pinned, not when it gets to
 *         the event (the ring is read in order, and behind a flood of folio failures a TCG
 *         guest was measured ~50 s late: long after a short-lived MR was released and its
 *         pages moved). A pin_user_pages* pin has no release event to pair with, so the user
 *         side deletes what it read from rp_pin_recent. With HAVE_MR_KEYS, rp_mr_umem names
 *         the umem each thread's last ib_umem_get returned, for bpf/mrkeys.c to write the MR's
 *         keys into its rp_umem_live entry when the RDMA core adds the MR.
 * -D parameters: HAVE_UMEM (ib_umem_get/release attachable), HAVE_MR_KEYS (bpf/mrkeys.c is
 *   loaded too), HAVE_PIN_USER, HAVE_PIN_FAST,
 *   HAVE_PIN_REMOTE (attach only), RP_FOLL_LONGTERM (the flag's value, from BTF or the
 *   kernel's mm.h; it moved from a #define to an enum after 6.1), RP_UMEM_SLOTS and
 *   RP_PIN_SLOTS (bounds of rp_umem_live and rp_pin_recent; a pin past them is read when its
 *   event is).
 */
#include "rdmapin_events.h"

struct rp_umem_call {
	u64 addr;
	u64 size;
	u64 access;
};

BPF_HASH(rp_umem_inflight, u32, struct rp_umem_call, RP_TID_SLOTS);

#ifndef RP_UMEM_SLOTS
#define RP_UMEM_SLOTS 16384
#endif

struct rp_umem_live {
	u64 ts_ns;	/* its RP_UMEM_GET event's: tells a reused umem pointer apart */
	u64 addr;
	u64 size;
	u32 pid;
	u32 keyed;	/* 1 once bpf/mrkeys.c wrote the MR's keys below */
	u32 lkey;
	u32 rkey;
	char device[RP_IBDEV_NAME_LEN];
};

BPF_HASH(rp_umem_live, u64, struct rp_umem_live, RP_UMEM_SLOTS);	/* umem -> range */
BPF_ARRAY(rp_umem_gen, u64, 1);
#ifdef HAVE_MR_KEYS
BPF_HASH(rp_mr_umem, u32, u64, RP_TID_SLOTS);	/* tid -> umem its ib_umem_get returned */
#endif

#ifndef RP_PIN_SLOTS
#define RP_PIN_SLOTS 4096
#endif

struct rp_pin_call {
	u64 start;
	u64 nr_pages;
	u64 gup_flags;
};

struct rp_pin_done {
	u64 start;
	u64 nr_pages;	/* pinned: the call's return */
	u32 pid;
	u32 pad;
};

BPF_HASH(rp_pin_inflight, u32, struct rp_pin_call, RP_TID_SLOTS);
BPF_HASH(rp_pin_recent, u64, struct rp_pin_done, RP_PIN_SLOTS);	/* event ts_ns -> range */

static __always_inline void rp_gen_bump(void)
{
	int zero = 0;
	u64 *gen = rp_umem_gen.lookup(&zero);

	if (gen)
		__sync_fetch_and_add(gen, 1);
}

/* ib_umem_get(struct ib_device *device, unsigned long addr, size_t size, int access) */
int rp_umem_get(struct pt_regs *ctx)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct rp_umem_call call = {
		.addr = PT_REGS_PARM2(ctx), .size = PT_REGS_PARM3(ctx), .access = PT_REGS_PARM4(ctx),
	};
	struct rp_event ev;

	rp_umem_inflight.update(&tid, &call);
	rp_init(&ev, RP_UMEM_BEGIN);
	ev.umem.addr = call.addr;
	ev.umem.size = call.size;
	ev.umem.access = call.access;
	rp_emit(ctx, &ev);
	return 0;
}

int rp_umem_get_ret(struct pt_regs *ctx)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct rp_umem_call *call = rp_umem_inflight.lookup(&tid);
	long umem = PT_REGS_RC(ctx);
	struct rp_event ev;

	if (!call)
		return 0;
	rp_init(&ev, RP_UMEM_GET);
	ev.umem.addr = call->addr;
	ev.umem.size = call->size;
	ev.umem.access = call->access;
	rp_umem_inflight.delete(&tid);
	if (umem < 0 && umem >= -4095) {	/* IS_ERR() */
		ev.ret = umem;
	} else {
		struct rp_umem_live live = {};
		u64 key = umem;

		live.ts_ns = ev.ts_ns;
		live.addr = ev.umem.addr;
		live.size = ev.umem.size;
		live.pid = ev.pid;
		ev.umem.umem = umem;
		rp_count(RPC_UMEM_GETS, 1);
		rp_count(RPC_UMEM_BYTES, ev.umem.size);
		rp_umem_live.update(&key, &live);
#ifdef HAVE_MR_KEYS
		rp_mr_umem.update(&tid, &key);
#endif
		rp_gen_bump();
	}
	rp_emit(ctx, &ev);
	return 0;
}

/* ib_umem_release(struct ib_umem *umem) */
int rp_umem_release(struct pt_regs *ctx)
{
	struct rp_event ev;
	u64 umem = PT_REGS_PARM1(ctx);

	if (!umem)
		return 0;
	rp_umem_live.delete(&umem);
#ifdef HAVE_MR_KEYS
	{	/* released before any MR took it (the driver's reg_user_mr failed) */
		u32 tid = (u32)bpf_get_current_pid_tgid();
		u64 *mine = rp_mr_umem.lookup(&tid);

		if (mine && *mine == umem)
			rp_mr_umem.delete(&tid);
	}
#endif
	rp_count(RPC_UMEM_RELEASES, 1);
	rp_init(&ev, RP_UMEM_RELEASE);
	ev.umem.umem = umem;
	rp_emit(ctx, &ev);
	return 0;
}

static __always_inline int rp_pin(struct pt_regs *ctx, u64 start, u64 nr_pages, u64 gup_flags)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct rp_pin_call call = { .start = start, .nr_pages = nr_pages, .gup_flags = gup_flags };

	if (!(gup_flags & RP_FOLL_LONGTERM) || rp_umem_inflight.lookup(&tid))
		return 0;
	rp_pin_inflight.update(&tid, &call);
	return 0;
}

/* The return of any of the three: the number of pages pinned (int or long), or -errno. */
int rp_pin_ret(struct pt_regs *ctx)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct rp_pin_call *call = rp_pin_inflight.lookup(&tid);
	long pinned = (int)PT_REGS_RC(ctx);
	struct rp_event ev;

	if (!call)
		return 0;
	rp_init(&ev, RP_PIN_LONGTERM);
	ev.pin.start = call->start;
	ev.pin.nr_pages = pinned > 0 ? pinned : 0;
	ev.pin.requested = call->nr_pages;
	ev.pin.gup_flags = call->gup_flags;
	rp_pin_inflight.delete(&tid);
	if (pinned < 0) {
		ev.ret = pinned;
	} else if (pinned > 0) {
		struct rp_pin_done done = {
			.start = ev.pin.start, .nr_pages = ev.pin.nr_pages, .pid = ev.pid, .pad = 0,
		};
		u64 key = ev.ts_ns;

		rp_count(RPC_LONGTERM_PINS, ev.pin.nr_pages);
		rp_pin_recent.update(&key, &done);
		rp_gen_bump();
	}
	rp_emit(ctx, &ev);
	return 0;
}

/* pin_user_pages(unsigned long start, unsigned long nr_pages, unsigned int gup_flags, ...):
 * io_uring's fixed buffers (IORING_REGISTER_BUFFERS) on 6.1 */
int rp_pin_user(struct pt_regs *ctx)
{
	return rp_pin(ctx, PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), (u32)PT_REGS_PARM3(ctx));
}

/* pin_user_pages_fast(unsigned long start, int nr_pages, unsigned int gup_flags, ...) */
int rp_pin_fast(struct pt_regs *ctx)
{
	return rp_pin(ctx, PT_REGS_PARM1(ctx), (u32)PT_REGS_PARM2(ctx), (u32)PT_REGS_PARM3(ctx));
}

/* pin_user_pages_remote(struct mm_struct *mm, unsigned long start, unsigned long nr_pages,
 *                       unsigned int gup_flags, ...) */
int rp_pin_remote(struct pt_regs *ctx)
{
	return rp_pin(ctx, PT_REGS_PARM2(ctx), PT_REGS_PARM3(ctx), (u32)PT_REGS_PARM4(ctx));
}
