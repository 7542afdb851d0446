"""Build rdmapin._verbs, the cffi API-mode extension over libibverbs.

The C lives in csrc/shim.c and csrc/regcache.c (compiled as is) and their headers (the
declarations cffi parses, also included by the .c files); this script only joins them, so the
C can be read, compiled and linted as C.
"""

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent

ffibuilder = FFI()
ffibuilder.cdef((HERE / "shim.h").read_text() + (HERE / "regcache.h").read_text())
ffibuilder.set_source(
    "rdmapin._verbs",
    '#include "shim.c"\n#include "regcache.c"',
    include_dirs=[str(HERE)],
    libraries=["ibverbs"],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
