# Declarations for core_ext/pure/table.py compiled as core_ext.compiled.table.
# Cython reads this file because it is named after the *compiled* module
# (<root>/core_ext/compiled/table.pxd); other compiled modules cimport from it.

cdef class _Node:
    cdef object key           # kept so eviction can delete the dict entry
    cdef object value         # never None
    cdef _Node prev           # towards the most recent (ring through the sentinel)
    cdef _Node next           # towards the least recent

cdef _Node _node(object key, object value)

cdef class LRUTable:
    cdef readonly Py_ssize_t capacity   # entries kept; 0 keeps nothing
    cdef dict _nodes                    # key -> _Node
    cdef _Node _root                    # sentinel: root.prev most recent, root.next least

    cdef int _unlink(self, _Node n) except -1
    cdef int _link_recent(self, _Node n) except -1
    cdef int _remove(self, _Node n) except -1
    cpdef object get(self, object key)
    cpdef object peek(self, object key)
    cpdef Py_ssize_t put(self, object key, object value) except -1
    cpdef object pop(self, object key)
