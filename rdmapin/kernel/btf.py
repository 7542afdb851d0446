"""Just enough of the kernel's BTF (/sys/kernel/btf/vmlinux) to find struct member offsets and
enum values by name: the struct page / folio layout the folio-failure probes read, the file
a folio belongs to (mapping, inode, super block), the PG_head and PG_writeback bits,
FOLL_LONGTERM, TTU_SPLIT_HUGE_PMD. Layouts move between kernels (6.1 keeps ``_folio_order``
as a byte of struct folio; later kernels fold the order into ``_flags_1``), so they are
looked up, never assumed.

A module's BTF (/sys/kernel/btf/MODULE, CONFIG_DEBUG_INFO_BTF_MODULES) is split BTF on top
of vmlinux's: its type ids continue after vmlinux's last and its string offsets after
vmlinux's string section (tools/lib/bpf/btf.c, btf_new with a base), so ``module`` reads it
with vmlinux's as the base: the RDMA core's struct ib_mr lives in ib_core's (6.1, 6.12).

The walk over ~100k types decodes only the names asked for (compared as string-table
offsets), because in a TCG guest a full decode takes tens of seconds.
Mirrors kernel/bpf/btf.c's type encoding (include/uapi/linux/btf.h); checked on 6.1, 6.12
and 6.18.
"""

from __future__ import annotations

import functools
import struct
from pathlib import Path

VMLINUX = Path("/sys/kernel/btf/vmlinux")

# BTF kinds (include/uapi/linux/btf.h)
_INT, _PTR, _ARRAY, _STRUCT, _UNION, _ENUM, _FWD, _TYPEDEF = 1, 2, 3, 4, 5, 6, 7, 8
_VOLATILE, _CONST, _RESTRICT, _FUNC, _FUNC_PROTO, _VAR, _DATASEC = 9, 10, 11, 12, 13, 14, 15
_FLOAT, _DECL_TAG, _TYPE_TAG, _ENUM64 = 16, 17, 18, 19
_MODIFIERS = (_TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _TYPE_TAG)
_TAIL = {_INT: 4, _VAR: 4, _DECL_TAG: 4, _ARRAY: 12}       # fixed trailing bytes
_PER_MEMBER = {_STRUCT: 12, _UNION: 12, _ENUM: 8, _FUNC_PROTO: 8, _DATASEC: 12, _ENUM64: 12}

# struct page/folio for the folio probes; address_space, inode and super_block for the file
# a folio belongs to (bpf/writeback.c: folio->mapping->host's i_ino and i_sb->s_dev)
STRUCTS = ("page", "folio", "address_space", "inode", "super_block")
FUNCS = ("move_to_new_folio", "try_to_migrate_one")
ENUMS = ("PG_head", "PG_writeback", "FOLL_LONGTERM", "TTU_SPLIT_HUGE_PMD")


class Btf:
    """Sizes and member offsets of the named structs; values of the named enumerators."""

    def __init__(self, data: bytes, structs: tuple[str, ...] = STRUCTS,
                 enums: tuple[str, ...] = ENUMS, funcs: tuple[str, ...] = FUNCS,
                 base: Btf | None = None) -> None:
        magic, _ver, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
            "<HBBIIIII", data, 0)
        if magic != 0xEB9F:
            raise ValueError("not BTF (bad magic)")
        t0 = hdr_len + type_off
        types = memoryview(data)[t0: t0 + type_len]
        strings = data[hdr_len + str_off: hdr_len + str_off + str_len]
        if base is not None:  # split BTF: read as its base's types and strings, then its own
            strings = base._strings + strings
            types = memoryview(bytes(base._types) + bytes(types))
        self._strings, self._types = strings, types
        # every type's (kind, size/type, record position): needed to follow member types
        self._kind: list[int] = [0]
        self._size: list[int] = [0]
        self._pos: list[int] = [0]
        want_struct = self._offsets_of(structs)
        want_enum = self._offsets_of(enums)
        want_func = self._offsets_of(funcs)
        self.funcs: set[str] = set()  # of ``funcs``, those BTF describes (fentry/fexit-able)
        self.structs: dict[str, int] = {}
        self.enums: dict[str, int] = {}
        unpack = struct.Struct("<III").unpack_from
        pos, end = 0, len(types)
        while pos < end:
            name_off, info, size = unpack(types, pos)
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            self._kind.append(kind)
            self._size.append(size)
            self._pos.append(pos)
            if kind == _FUNC and name_off in want_func:
                self.funcs.add(want_func[name_off])
            elif kind in (_STRUCT, _UNION) and name_off in want_struct:
                self.structs.setdefault(want_struct[name_off], len(self._kind) - 1)
            elif kind in (_ENUM, _ENUM64) and want_enum:
                step = 8 if kind == _ENUM else 12
                for i in range(vlen):
                    e_name, lo = struct.unpack_from("<Ii", types, pos + 12 + i * step)
                    if e_name in want_enum:
                        if kind == _ENUM64:
                            lo &= 0xFFFFFFFF
                            lo |= struct.unpack_from("<I", types, pos + 20 + i * step)[0] << 32
                        self.enums.setdefault(want_enum[e_name], lo)
            pos += 12 + _TAIL.get(kind, 0) + _PER_MEMBER.get(kind, 0) * vlen

    def _offsets_of(self, names: tuple[str, ...]) -> dict[int, str]:
        """{string offset: name} of every place the string table holds one of ``names`` (a
        split BTF's strings may repeat one of its base's)."""
        out = {}
        for name in names:
            needle = b"\0" + name.encode() + b"\0"
            i = self._strings.find(needle)
            while i >= 0:
                out[i + 1] = name
                i = self._strings.find(needle, i + 1)
        return out

    def _str(self, off: int) -> str:
        end = self._strings.index(b"\0", off)
        return self._strings[off:end].decode()

    def _members(self, tid: int) -> list[tuple[str, int, int]]:
        pos = self._pos[tid]
        info = struct.unpack_from("<I", self._types, pos + 4)[0]
        kflag = info >> 31
        out = []
        for i in range(info & 0xFFFF):
            m_name, m_type, m_off = struct.unpack_from("<III", self._types, pos + 12 + 12 * i)
            out.append((self._str(m_name) if m_name else "", m_type,
                        m_off & 0xFFFFFF if kflag else m_off))
        return out

    def sizeof(self, struct_name: str) -> int | None:
        tid = self.structs.get(struct_name)
        return None if tid is None else self._size[tid]

    def offsetof(self, struct_name: str, member: str) -> int | None:
        """Byte offset of ``member`` in ``struct_name``, looking through anonymous
        structs/unions the way C does; None when the kernel has no such member."""
        tid = self.structs.get(struct_name)
        if tid is None:
            return None
        bits = self._find(tid, member, 0)
        return None if bits is None else bits // 8

    def _find(self, tid: int, member: str, base: int) -> int | None:
        for name, m_type, bit_off in self._members(tid):
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
            kind = self._kind[tid]
            if kind in (_STRUCT, _UNION):
                return tid
            if kind not in _MODIFIERS:
                return None
            tid = self._size[tid]  # modifiers keep their target in the size/type slot
        return None


@functools.cache
def vmlinux() -> Btf | None:
    """The running kernel's BTF, or None when the kernel has none (no CONFIG_DEBUG_INFO_BTF)."""
    try:
        return Btf(VMLINUX.read_bytes())
    except (OSError, ValueError):
        return None


@functools.cache
def module(name: str, structs: tuple[str, ...], enums: tuple[str, ...] = ()) -> Btf | None:
    """The BTF of loaded module ``name`` (split BTF over vmlinux's), for ``structs`` and
    ``enums``; None when the module is not loaded or the kernel has no module BTF."""
    base = vmlinux()
    if base is None:
        return None
    try:
        return Btf((VMLINUX.parent / name).read_bytes(), structs=structs, enums=enums,
                   funcs=(), base=base)
    except (OSError, ValueError):
        return None
