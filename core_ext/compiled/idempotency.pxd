# Declarations for core_ext/pure/idempotency.py compiled as core_ext.compiled.idempotency.

from core_ext.compiled.table cimport LRUTable

cdef int _MAX_DEPTH                 # C twin of MAX_DEPTH
cdef Py_ssize_t _PREFIXES_CACHED
cdef tuple _PREFIXES                # n.to_bytes(8, "big") for small n

# canonical_json's writer: appends pieces to `out`, recursion bounded by MAX_DEPTH.
cdef int _write_str(list out, str s) except -1
cdef int _write(list out, object value, int depth) except -1
cdef int _write_dict(list out, dict value, int depth) except -1
cdef bytes _length_prefix(Py_ssize_t n)

# The one precedence rule for a held key; also what the gateway's database path calls.
cpdef str verdict(bytes stored_fingerprint, bint completed, bytes fingerprint)

cdef class _Entry:
    cdef bytes fingerprint
    cdef double created         # when the key was claimed (retention runs from here)
    cdef int status_code        # 0 while the request is in flight
    cdef bytes body

cdef _Entry _entry(bytes fingerprint, double created, int status_code, bytes body)

cdef class IdempotencyCache:
    cdef readonly Py_ssize_t capacity
    cdef readonly double retention_s
    cdef LRUTable _entries      # (merchant_id, key) -> _Entry

    cdef int _store(self, tuple k, _Entry e) except -1
