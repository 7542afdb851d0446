/* A small process that holds memory regions, for benchmarks/exporter_cost.py: a hundred of
 * these fit a 2 GiB guest where a hundred Python registrars would not.
 *
 *   cc -O2 -o mr_holder mr_holder.c -libverbs
 *   mr_holder DEVICE COUNT SIZE   -> registers COUNT MRs of SIZE bytes (separate 4 KiB-page
 *                                    buffers, each its own mapping), says "ready" on stdout,
 *                                    and holds them until stdin closes.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <infiniband/verbs.h>

static struct ibv_context *open_named(const char *name)
{
	struct ibv_device **list = ibv_get_device_list(NULL);
	struct ibv_context *ctx = NULL;
	int i;

	for (i = 0; list && list[i]; i++)
		if (!strcmp(ibv_get_device_name(list[i]), name))
			ctx = ibv_open_device(list[i]);
	if (list)
		ibv_free_device_list(list);
	return ctx;
}

int main(int argc, char **argv)
{
	struct ibv_context *ctx;
	struct ibv_pd *pd;
	long count, size, i;
	char sink[64];

	if (argc != 4) {
		fprintf(stderr, "usage: mr_holder DEVICE COUNT SIZE\n");
		return 2;
	}
	count = atol(argv[2]);
	size = atol(argv[3]);
	ctx = open_named(argv[1]);
	if (!ctx) {
		fprintf(stderr, "mr_holder: cannot open %s: %s\n", argv[1], strerror(errno));
		return 1;
	}
	pd = ibv_alloc_pd(ctx);
	if (!pd) {
		fprintf(stderr, "mr_holder: ibv_alloc_pd: %s\n", strerror(errno));
		return 1;
	}
	for (i = 0; i < count; i++) {
		/* a guard page between buffers: each MR is a pinned run of its own */
		char *buf = mmap(NULL, size + 4096, PROT_READ | PROT_WRITE,
				 MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);

		if (buf == MAP_FAILED || mprotect(buf + size, 4096, PROT_NONE) ||
		    !ibv_reg_mr(pd, buf, size, IBV_ACCESS_LOCAL_WRITE)) {
			fprintf(stderr, "mr_holder: MR %ld of %ld B: %s\n", i, size, strerror(errno));
			return 1;
		}
	}
	printf("ready\n");
	fflush(stdout);
	while (read(0, sink, sizeof(sink)) > 0)
		;
	return 0;
}
