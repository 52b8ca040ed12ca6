"""One bounded LRU table for every in-process cache of the core.

``LRUTable`` maps hashable keys to values (never ``None``: ``get`` and ``pop`` answer
``None`` for a missing key), holds at most ``capacity`` entries and forgets the least
recently used one first. ``get`` touches (the entry becomes the most recent), ``put``
inserts or replaces and touches, then evicts down to ``capacity``; ``pop`` removes.

It is a dict from key to node plus a circular doubly-linked list of nodes through a
sentinel (``functools.lru_cache``'s layout): every operation is O(1) and, compiled,
a C call of a few pointer moves. The declarations (typed fields, ``cpdef`` signatures)
are in ``core_ext/compiled/table.pxd``; other compiled modules ``cimport`` it from there,
so their calls into the table do not go through Python attribute lookup.
"""

import cython


@cython.cclass
class _Node:
    """One entry: its key (to forget it on eviction), its value and its neighbours."""


@cython.locals(n=_Node)
def _node(key, value):
    n = _Node.__new__(_Node)
    n.key = key
    n.value = value
    n.prev = None
    n.next = None
    return n


@cython.cclass
class LRUTable:
    """Bounded LRU map; see the module docstring."""

    def __init__(self, capacity):
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self.capacity = capacity
        self._nodes = {}
        root = _node(None, None)
        root.prev = root  # most recent
        root.next = root  # least recent
        self._root = root

    @cython.locals(root=_Node, n=_Node, nxt=_Node)
    def __dealloc__(self):
        # The list is a ring of strong references: break it so the nodes go now, not at
        # the next cycle collection. (Pure Python never calls this; its GC has the ring.)
        root = self._root
        if root is None:
            return
        n = root.next
        while n is not None and n is not root:
            nxt = n.next
            n.prev = None
            n.next = None
            n = nxt
        root.prev = None
        root.next = None

    def _unlink(self, n):
        n.prev.next = n.next
        n.next.prev = n.prev
        return 0

    def _link_recent(self, n):
        root = self._root
        last = root.prev
        n.prev = last
        n.next = root
        last.next = n
        root.prev = n
        return 0

    @cython.locals(n=_Node)
    def get(self, key):
        """The value for ``key`` (now the most recent entry), or None."""
        n = self._nodes.get(key)
        if n is None:
            return None
        if n.next is not self._root:  # already the most recent: nothing to move
            self._unlink(n)
            self._link_recent(n)
        return n.value

    @cython.locals(n=_Node)
    def peek(self, key):
        """The value for ``key`` without touching it, or None."""
        n = self._nodes.get(key)
        if n is None:
            return None
        return n.value

    @cython.locals(n=_Node, evicted=cython.Py_ssize_t)
    def put(self, key, value):
        """Store ``value`` under ``key`` as the most recent entry, then evict the least
        recent ones past ``capacity``; the number evicted (with capacity 0 that is the
        entry just stored)."""
        if value is None:
            raise TypeError("LRUTable values must not be None")
        n = self._nodes.get(key)
        if n is None:
            n = _node(key, value)
            self._nodes[key] = n
            self._link_recent(n)
        else:
            n.value = value
            if n.next is not self._root:
                self._unlink(n)
                self._link_recent(n)
        evicted = 0
        while len(self._nodes) > self.capacity:
            self._remove(self._root.next)
            evicted += 1
        return evicted

    @cython.locals(n=_Node)
    def pop(self, key):
        """Remove ``key``; its value, or None if it was not there."""
        n = self._nodes.get(key)
        if n is None:
            return None
        self._remove(n)
        return n.value

    def _remove(self, n):
        del self._nodes[n.key]
        self._unlink(n)
        n.prev = None
        n.next = None
        return 0

    @cython.locals(n=_Node)
    def keys(self):
        """The keys, least recently used first (for tests and debugging)."""
        out = []
        n = self._root.next
        while n is not self._root:
            out.append(n.key)
            n = n.next
        return out

    def __contains__(self, key):
        return key in self._nodes

    def __len__(self):
        return len(self._nodes)
