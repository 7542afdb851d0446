"""Just enough of the kernel's BTF (/sys/kernel/btf/vmlinux) to find struct member offsets and
enum values by name: the struct page / folio layout the folio-failure probe reads, and the
PG_head bit. Layouts move between kernels (6.1 keeps ``_folio_order`` as a byte of struct folio;
later kernels fold the order into ``_flags_1``), so they are looked up, never assumed.
"""

from __future__ import annotations

import functools
import struct
from pathlib import Path

VMLINUX = Path("/sys/kernel/btf/vmlinux")

# BTF kinds (include/uapi/linux/btf.h) and the size of their trailing data.
_INT, _PTR, _ARRAY, _STRUCT, _UNION, _ENUM, _FWD, _TYPEDEF = 1, 2, 3, 4, 5, 6, 7, 8
_FUNC_PROTO, _VAR, _DATASEC, _DECL_TAG, _ENUM64 = 13, 14, 15, 17, 19


class Btf:
    """Structs, unions and enums of one BTF blob, indexed by name."""

    def __init__(self, data: bytes) -> None:
        magic, _ver, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
            "<HBBIIIII", data, 0)
        if magic != 0xEB9F:
            raise ValueError("not BTF (bad magic)")
        types = data[hdr_len + type_off: hdr_len + type_off + type_len]
        self._strings = data[hdr_len + str_off: hdr_len + str_off + str_len]
        # id -> (kind, name, size, members [(name, type_id, bit_offset)])
        self._types: list[tuple[int, str, int, list[tuple[str, int, int]]]] = [(0, "", 0, [])]
        self.structs: dict[str, int] = {}
        self.enums: dict[str, int] = {}
        pos = 0
        while pos < len(types):
            name_off, info, size = struct.unpack_from("<III", types, pos)
            pos += 12
            kind, vlen, kflag = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
            name = self._str(name_off)
            members: list[tuple[str, int, int]] = []
            if kind in (_STRUCT, _UNION):
                for _ in range(vlen):
                    m_name, m_type, m_off = struct.unpack_from("<III", types, pos)
                    pos += 12
                    members.append((self._str(m_name), m_type,
                                    m_off & 0xFFFFFF if kflag else m_off))
                if name and name not in self.structs:
                    self.structs[name] = len(self._types)
            elif kind == _ENUM:
                for _ in range(vlen):
                    e_name, e_val = struct.unpack_from("<Ii", types, pos)
                    pos += 8
                    self.enums[self._str(e_name)] = e_val
            elif kind == _ENUM64:
                for _ in range(vlen):
                    e_name, lo, hi = struct.unpack_from("<III", types, pos)
                    pos += 12
                    self.enums[self._str(e_name)] = lo | hi << 32
            elif kind in (_INT, _VAR, _DECL_TAG):
                pos += 4
            elif kind == _ARRAY:
                pos += 12
            elif kind == _FUNC_PROTO:
                pos += 8 * vlen
            elif kind == _DATASEC:
                pos += 12 * vlen
            self._types.append((kind, name, size, members))

    def _str(self, off: int) -> str:
        end = self._strings.index(b"\0", off)
        return self._strings[off:end].decode()

    def sizeof(self, struct_name: str) -> int | None:
        tid = self.structs.get(struct_name)
        return None if tid is None else self._types[tid][2]

    def offsetof(self, struct_name: str, member: str) -> int | None:
        """Byte offset of ``member`` in ``struct_name``, looking through anonymous
        structs/unions the way C does; None when the kernel has no such member."""
        tid = self.structs.get(struct_name)
        if tid is None:
            return None
        bits = self._find(tid, member, 0)
        return None if bits is None else bits // 8

    def _find(self, tid: int, member: str, base: int) -> int | None:
        for name, m_type, bit_off in self._types[tid][3]:
            if name == member:
                return base + bit_off
            if not name:
                inner = self._resolve(m_type)
                if inner is not None:
                    found = self._find(inner, member, base + bit_off)
                    if found is not None:
                        return found
        return None

    def _resolve(self, tid: int) -> int | None:
        """Follow typedef/const/volatile to a struct or union id."""
        for _ in range(16):
            kind = self._types[tid][0]
            if kind in (_STRUCT, _UNION):
                return tid
            if kind in (_TYPEDEF, 9, 10, 11, 18):
                tid = self._types[tid][2]  # modifiers keep the target in the size/type slot
                continue
            return None
        return None


@functools.cache
def vmlinux() -> Btf | None:
    """The running kernel's BTF, or None when the kernel has none (no CONFIG_DEBUG_INFO_BTF)."""
    try:
        return Btf(VMLINUX.read_bytes())
    except (OSError, ValueError):
        return None
