/* Declarations cffi parses (no preprocessor here): the libibverbs types rdmapin touches,
 * kept opaque where Python never reads a field, and the rdmapin_* shim functions of shim.c.
 * Every shim call that can fail returns -1/NULL and stores errno in *err at the call, so
 * Python never reads a global errno after the fact. */

struct ibv_device;
struct ibv_context;

/* Device list: names and GUIDs copied out, so Python holds no pointer into the list. */
int rdmapin_device_count(int *err);
int rdmapin_device_name(int index, char *buf, size_t len);

/* 1 when the shim was compiled against <infiniband/verbs.h> of this rdma-core. */
int rdmapin_verbs_api_version(void);
