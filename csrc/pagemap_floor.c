/* The speed floor for benchmarks/pages_report.py: read a region's /proc/PID/pagemap entries
 * and the /proc/kpageflags entries of its present PFNs, in straight C, nothing decoded.
 *
 *   cc -O2 -o pagemap_floor pagemap_floor.c
 *   pagemap_floor PID ADDR LEN [ROUNDS]   -> prints "<best ms> <present pages> <preads>"
 *
 * pagemap: one pread for the whole range. kpageflags: one pread per physically contiguous
 * run of present PFNs in virtual order (what any reader that wants every page's flags must
 * do at least). Needs root for PFNs and kpageflags.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define PM_PRESENT (1ULL << 63)
#define PM_PFN_MASK ((1ULL << 55) - 1)

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int read_full(int fd, void *buf, size_t len, off_t off)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = pread(fd, (char *)buf + done, len - done, off + done);

		if (n <= 0)
			return -1;
		done += n;
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: %s PID ADDR LEN [ROUNDS]\n", argv[0]);
		return 2;
	}
	long page = sysconf(_SC_PAGESIZE);
	uint64_t addr = strtoull(argv[2], NULL, 0), len = strtoull(argv[3], NULL, 0);
	int rounds = argc > 4 ? atoi(argv[4]) : 3;
	uint64_t first = addr / page, last = (addr + len - 1) / page, n = last - first + 1;
	char path[64];
	uint64_t *pm = malloc(n * 8), *flags = malloc(n * 8);
	double best = 1e30;
	uint64_t present = 0, preads = 0;

	snprintf(path, sizeof(path), "/proc/%s/pagemap", argv[1]);
	if (!pm || !flags)
		return 1;
	for (int r = 0; r < rounds; r++) {
		double t0 = now_ms();
		int pfd = open(path, O_RDONLY), kfd = open("/proc/kpageflags", O_RDONLY);

		if (pfd < 0 || kfd < 0 || read_full(pfd, pm, n * 8, first * 8)) {
			perror("pagemap_floor");
			return 1;
		}
		present = 0;
		preads = 1;
		for (uint64_t i = 0; i < n;) {
			if (!(pm[i] & PM_PRESENT)) {
				i++;
				continue;
			}
			uint64_t start = pm[i] & PM_PFN_MASK, j = i + 1;

			while (j < n && (pm[j] & PM_PRESENT) &&
			       (pm[j] & PM_PFN_MASK) == start + (j - i))
				j++;
			if (read_full(kfd, flags + present, (j - i) * 8, start * 8)) {
				perror("kpageflags");
				return 1;
			}
			present += j - i;
			preads++;
			i = j;
		}
		close(pfd);
		close(kfd);
		double t = now_ms() - t0;

		if (t < best)
			best = t;
	}
	printf("%.3f %llu %llu\n", best, (unsigned long long)present, (unsigned long long)preads);
	return 0;
}
