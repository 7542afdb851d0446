/* The speed floor for rdmapin's registration benchmark: 4 KiB ibv_reg_mr + ibv_dereg_mr in a
 * loop, straight C, the same buffer and access flags rdmapin's benchmark uses.
 *
 * Two builds of this file (rdmapin/bench.py compiles both at run time):
 *   cc -O2 -o reg_floor reg_floor.c -libverbs
 *     reg_floor [DEVICE [ITERATIONS [SIZE]]]   -> "<us per reg+dereg>" on stdout; a process
 *     of its own, with its own device context and PD
 *   cc -O2 -shared -fPIC -DREG_FLOOR_LIB -o libreg_floor.so reg_floor.c -libverbs
 *     rdmapin_floor_loop() called once per round from the benchmark's own process, on the PD
 *     and buffer rdmapin registers: the same kernel state, interleaved with rdmapin's rounds,
 *     so what is left between the two is the Python side alone.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <infiniband/verbs.h>

double rdmapin_floor_loop(struct ibv_pd *pd, void *buf, size_t size, int access, long iters,
			  long warmup);

static double now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

/* us per reg+dereg over iters, after warmup untimed ones; -errno if a registration fails. */
double rdmapin_floor_loop(struct ibv_pd *pd, void *buf, size_t size, int access, long iters,
			  long warmup)
{
	struct ibv_mr *mr;
	double t0 = 0;
	long i;

	for (i = -warmup; i < iters; i++) {
		if (i == 0)
			t0 = now_us();
		mr = ibv_reg_mr(pd, buf, size, access);
		if (!mr)
			return -(double)(errno ? errno : EIO);
		ibv_dereg_mr(mr);
	}
	return iters > 0 ? (now_us() - t0) / iters : 0;
}

#ifndef REG_FLOOR_LIB
int main(int argc, char **argv)
{
	const char *name = argc > 1 ? argv[1] : NULL;
	long iters = argc > 2 ? atol(argv[2]) : 2000;
	size_t size = argc > 3 ? strtoull(argv[3], NULL, 0) : 4096;
	int access = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ;
	struct ibv_device **list;
	struct ibv_context *ctx = NULL;
	struct ibv_pd *pd;
	double us;
	char *buf;
	long i;
	int n = 0;

	list = ibv_get_device_list(&n);
	if (!list || n == 0) {
		fprintf(stderr, "reg_floor: no RDMA device\n");
		return 2;
	}
	for (i = 0; i < n && !ctx; i++)
		if (!name || !strcmp(ibv_get_device_name(list[i]), name))
			ctx = ibv_open_device(list[i]);
	ibv_free_device_list(list);
	if (!ctx) {
		fprintf(stderr, "reg_floor: cannot open %s\n", name ? name : "a device");
		return 2;
	}
	pd = ibv_alloc_pd(ctx);
	buf = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (!pd || buf == MAP_FAILED) {
		perror("reg_floor: pd/mmap");
		return 2;
	}
	memset(buf, 1, size);
	/* Warm-up: the first registrations fault in the provider's and the kernel's caches. */
	us = rdmapin_floor_loop(pd, buf, size, access, iters, iters / 10 + 1);
	if (us < 0) {
		fprintf(stderr, "reg_floor: ibv_reg_mr: %s\n", strerror((int)-us));
		return 1;
	}
	printf("%.3f\n", us);
	ibv_dealloc_pd(pd);
	ibv_close_device(ctx);
	return 0;
}
#endif
