"""Resource: the lifetime every verbs object of rdmapin shares (pyverbs' ``PyverbsCM`` model).

A resource owns one handle (an ibv_context, a PD, an MR) and, weakly, the resources made
from it: a parent registers each child it creates (``_adopt``) and the child keeps its parent
alive with a strong reference, so Python's GC never frees a parent before its children.
``close()``:

1. does nothing when already closed (idempotent);
2. closes the children first, newest first; a child whose close raises stops the close there,
   leaving this resource open and that child (and the older ones) registered, so a second
   ``close()`` retries them;
3. releases its own handle (``_release``); on failure it raises and the handle is kept;
4. only then clears the handle (``_clear``), leaves its parent's children and drops its
   reference to the parent (so a closed child no longer keeps an open parent alive).

So a failed close never leaks a handle it could still free. ``with`` closes, and a subclass
that closes on GC calls ``_close_in_finalizer`` from ``__del__``, which logs what it cannot
close instead of raising. Using a closed resource raises ``ClosedError`` (``_closed_error``
words it). ``__slots__`` is empty so a slotted leaf keeps its layout: MemoryRegion is built
without ``__init__`` on the register hot path, has no children, and does its close in one
shim call; the lock (from ``__init__``) and the children map (from the first ``_adopt``)
live on the classes with instance dicts.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any, Self

from rdmapin.errors import ClosedError


class Resource:
    """Base of Device, ProtectionDomain and MemoryRegion: ordered, idempotent close."""

    __slots__ = ()

    # Defaults for leaves that never run __init__ (MemoryRegion is built with object.__new__).
    _parent: Resource | None = None
    _children: weakref.WeakValueDictionary[int, Resource] | None = None
    _lock: Any = None  # a threading.RLock: one close at a time (parents allocate under it)

    def __init__(self, parent: Resource | None = None) -> None:
        """Call right after the handle is set: the parent may close this resource from now on."""
        self._lock = threading.RLock()
        self._parent = parent
        if parent is not None:
            parent._adopt(self)

    # -- what a subclass provides ------------------------------------------------------
    @property
    def closed(self) -> bool:
        raise NotImplementedError

    def _release(self) -> None:
        """Free this resource's own handle (its children are closed); raise on failure,
        leaving the handle as it was."""
        raise NotImplementedError

    def _clear(self) -> None:
        """Forget the handle, after ``_release`` succeeded."""
        raise NotImplementedError

    def _describe(self) -> str:
        """What this is, for messages: 'device rxe0', 'PD on rxe0'."""
        return type(self).__name__

    # -- children ----------------------------------------------------------------------
    def _adopt(self, child: Resource) -> None:
        """Register ``child`` (weakly): closing this resource closes it first."""
        if self._children is None:
            self._children = weakref.WeakValueDictionary()
        self._children[id(child)] = child

    def _forget(self, child: Resource) -> None:
        children = self._children
        if children is not None and children.get(id(child)) is child:
            del children[id(child)]

    def _live_children(self) -> list[Resource]:
        """The children not yet closed nor collected, oldest first."""
        children = self._children
        return [c for c in list(children.values()) if not c.closed] if children else []

    def _close_children(self) -> None:
        """Close the registered children, newest first (a later child may use an earlier
        one, as a QP uses its CQ); an exception stops here and is re-raised."""
        children = self._children
        if children:
            for child in reversed(list(children.values())):
                child.close()

    # -- lifetime ----------------------------------------------------------------------
    def close(self) -> None:
        """Close the children, then this resource's handle; a second close does nothing.
        Raises (and stays open, retryable) when a child or the handle cannot be closed."""
        with self._lock:
            if self.closed:
                return
            self._close_children()
            self._release()
            self._clear()
            parent, self._parent = self._parent, None
        if parent is not None:
            parent._forget(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _close_in_finalizer(self) -> None:
        """For ``__del__``: close if still open; a finalizer never raises, so log instead."""
        try:
            if not self.closed:
                self.close()
        except Exception as e:
            logging.getLogger(type(self).__module__).warning(
                "closing %s in a finalizer: %s", self._describe(), e)

    def _closed_error(self, doing: str = "") -> ClosedError:
        """The ClosedError for using this resource after close ('; cannot <doing>')."""
        tail = f"; cannot {doing}" if doing else ""
        return ClosedError(f"{self._describe()} is closed{tail}")


__all__ = ["Resource"]
