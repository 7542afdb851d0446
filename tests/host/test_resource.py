"""rdmapin.resource: the close order every verbs object follows (children first, the handle
forgotten only after it was released, idempotent, retryable after a failure). Plain Python
resources stand in for verbs handles here; tests/vm/test_{device,pd,mr}.py run the same
order on real ones."""

from __future__ import annotations

import gc
import logging
import threading

import pytest

import rdmapin
from rdmapin.resource import Resource

pytestmark = pytest.mark.pure


class Handle(Resource):
    """A resource whose handle is a name; ``fail`` makes its release raise."""

    def __init__(self, name: str, log: list[str], parent: Handle | None = None) -> None:
        self.name = name
        self.handle: str | None = name
        self.log = log
        self.fail: Exception | None = None
        super().__init__(parent)

    @property
    def closed(self) -> bool:
        return self.handle is None

    def _release(self) -> None:
        if self.fail is not None:
            raise self.fail
        self.log.append(f"release {self.name}")

    def _clear(self) -> None:
        self.handle = None

    def _describe(self) -> str:
        return f"handle {self.name}"

    def use(self) -> str:
        if self.handle is None:
            raise self._closed_error("use it")
        return self.handle

    def __del__(self) -> None:
        self._close_in_finalizer()


def test_children_close_first_newest_first_then_the_handle():
    log: list[str] = []
    root = Handle("root", log)
    a = Handle("a", log, root)
    b = Handle("b", log, root)
    b1 = Handle("b1", log, b)
    root.close()
    assert log == ["release b1", "release b", "release a", "release root"]
    assert root.closed and a.closed and b.closed and b1.closed
    root.close()  # idempotent
    assert len(log) == 4


def test_failed_child_close_keeps_the_parent_open_and_retryable():
    log: list[str] = []
    root = Handle("root", log)
    a = Handle("a", log, root)
    b = Handle("b", log, root)
    a.fail = OSError(16, "busy")
    with pytest.raises(OSError, match="busy"):
        root.close()
    assert log == ["release b"]  # b closed, a failed: root's handle not released
    assert not root.closed and not a.closed and b.closed
    assert root.use() == "root" and root._live_children() == [a]
    a.fail = None
    root.close()
    assert log == ["release b", "release a", "release root"] and root.closed


def test_failed_release_keeps_the_handle():
    log: list[str] = []
    r = Handle("r", log)
    r.fail = OSError(5, "io")
    with pytest.raises(OSError):
        r.close()
    assert not r.closed and r.use() == "r"
    r.fail = None
    r.close()
    assert r.closed and log == ["release r"]


def test_context_manager_and_closed_error():
    log: list[str] = []
    with Handle("r", log) as r:
        assert r.use() == "r"
    assert r.closed
    with pytest.raises(rdmapin.ClosedError, match=r"^handle r is closed; cannot use it$"):
        r.use()
    assert isinstance(r._closed_error(), ValueError)  # ClosedError is a ValueError too


def test_closed_or_collected_children_leave_the_parent():
    log: list[str] = []
    root = Handle("root", log)
    a = Handle("a", log, root)
    b = Handle("b", log, root)
    a.close()
    assert root._live_children() == [b] and len(root._children) == 1
    del b
    gc.collect()  # b's finalizer closed it; its entry went with it
    assert root._live_children() == [] and not root._children
    assert log == ["release a", "release b"]


def test_a_child_keeps_its_parent_alive_until_closed():
    log: list[str] = []
    child = Handle("child", log, Handle("root", log))
    gc.collect()
    assert log == []  # the root lives on through child._parent
    child.close()
    gc.collect()
    assert log == ["release child", "release root"]  # dropped with the reference


def test_finalizer_logs_a_failed_close_instead_of_raising(caplog):
    log: list[str] = []
    r = Handle("r", log)
    r.fail = OSError(16, "busy")
    with caplog.at_level(logging.WARNING, logger=__name__):
        r.__del__()
    assert "closing handle r in a finalizer" in caplog.text and "busy" in caplog.text
    r.fail = None
    r.close()


def test_two_threads_closing_release_once():
    log: list[str] = []
    entered = threading.Event()
    go = threading.Event()

    class Slow(Handle):
        def _release(self) -> None:
            entered.set()
            go.wait(5)
            super()._release()

    r = Slow("r", log)
    threads = [threading.Thread(target=r.close) for _ in range(2)]
    for t in threads:
        t.start()
    entered.wait(5)
    go.set()
    for t in threads:
        t.join()
    assert log == ["release r"] and r.closed


def test_verbs_classes_are_resources_and_the_mr_stays_slotted():
    from rdmapin.mr import MemoryRegion

    for cls in (rdmapin.Device, rdmapin.ProtectionDomain, MemoryRegion):
        assert issubclass(cls, Resource)
    mr = object.__new__(MemoryRegion)  # what ProtectionDomain.register builds
    assert not hasattr(mr, "__dict__")
