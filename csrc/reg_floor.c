/* The speed floor for benchmarks/reg_cost.py: 4 KiB ibv_reg_mr + ibv_dereg_mr in a loop,
 * straight C, the same buffer and access flags rdmapin's benchmark uses.
 *
 *   cc -O2 -o reg_floor reg_floor.c -libverbs
 *   reg_floor [DEVICE [ITERATIONS [SIZE]]]      -> prints "<us per reg+dereg>" on stdout
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <infiniband/verbs.h>

static double now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

int main(int argc, char **argv)
{
	const char *name = argc > 1 ? argv[1] : NULL;
	long iters = argc > 2 ? atol(argv[2]) : 2000;
	size_t size = argc > 3 ? strtoull(argv[3], NULL, 0) : 4096;
	int access = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ;
	struct ibv_device **list;
	struct ibv_context *ctx = NULL;
	struct ibv_pd *pd;
	struct ibv_mr *mr;
	double t0, t1;
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
	/* Warm up: first registrations fault in the provider's and the kernel's caches. */
	for (i = 0; i < iters / 10 + 1; i++) {
		mr = ibv_reg_mr(pd, buf, size, access);
		if (!mr) {
			perror("reg_floor: ibv_reg_mr");
			return 1;
		}
		ibv_dereg_mr(mr);
	}
	t0 = now_us();
	for (i = 0; i < iters; i++) {
		mr = ibv_reg_mr(pd, buf, size, access);
		if (!mr) {
			perror("reg_floor: ibv_reg_mr");
			return 1;
		}
		ibv_dereg_mr(mr);
	}
	t1 = now_us();
	printf("%.3f\n", (t1 - t0) / iters);
	ibv_dealloc_pd(pd);
	ibv_close_device(ctx);
	return 0;
}
