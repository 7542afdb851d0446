/* rdmapin's thin C layer over libibverbs, compiled by cffi in API mode (csrc/build_shim.py).
 * Each function captures errno into *err right at the failing call. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <infiniband/verbs.h>

#include "shim.h"

int rdmapin_verbs_api_version(void)
{
	return 1;
}

int rdmapin_device_count(int *err)
{
	int n = 0;
	struct ibv_device **list = ibv_get_device_list(&n);

	if (!list) {
		*err = errno;
		return -1;
	}
	ibv_free_device_list(list);
	return n;
}

int rdmapin_device_name(int index, char *buf, size_t len)
{
	int n = 0;
	struct ibv_device **list = ibv_get_device_list(&n);

	if (!list)
		return -errno;
	if (index < 0 || index >= n) {
		ibv_free_device_list(list);
		return -ENODEV;
	}
	snprintf(buf, len, "%s", ibv_get_device_name(list[index]));
	ibv_free_device_list(list);
	return 0;
}
