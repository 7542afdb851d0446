"""Access flags carry the verbs names and values (checked against pyverbs' enums, which
are generated from the same <infiniband/verbs.h>)."""

from __future__ import annotations

import pytest

from rdmapin import Access
from rdmapin.access import NEEDS_LOCAL_WRITE, WRITABLE, describe


def test_values_match_ibv_access_flags():
    e = pytest.importorskip("pyverbs.enums")
    for flag in Access:
        assert flag.value == getattr(e, f"IBV_ACCESS_{flag.name}"), flag.name


def test_combinations_are_ints_for_the_c_call():
    a = Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ
    assert int(a) == 7 and isinstance(a, int)
    assert Access.remote() == a


def test_describe_names_the_bits():
    assert describe(int(Access.LOCAL_WRITE | Access.REMOTE_READ)) == "LOCAL_WRITE|REMOTE_READ"
    assert describe(0) == "0"


def test_writable_and_local_write_rules_follow_the_kernel():
    # ib_access_writable(): these make ib_umem_get pin with FOLL_WRITE.
    assert WRITABLE == Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_ATOMIC \
        | Access.MW_BIND
    # ib_check_mr_access(): remote write/atomic need local write.
    assert NEEDS_LOCAL_WRITE == Access.REMOTE_WRITE | Access.REMOTE_ATOMIC
    assert not WRITABLE & Access.REMOTE_READ
