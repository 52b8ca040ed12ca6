# Declarations for core_ext/pure/risk.py compiled as core_ext.compiled.risk.

from core_ext.compiled.table cimport LRUTable

cdef class _Bucket:
    cdef double tokens          # held now, 0..burst
    cdef double updated         # `now` of the last take

cdef class RateLimiter:
    cdef readonly Py_ssize_t entries_max
    cdef LRUTable _buckets      # API key -> _Bucket

cdef class RiskLimits:
    cdef readonly double window_s
    cdef readonly long merchant_attempts_max    # 0: rule off
    cdef readonly long card_attempts_max
    cdef readonly long card_declines_max

cdef class _Window:
    cdef double start           # this fixed window's start
    cdef double current         # count in this window
    cdef double previous        # count in the one before

cdef void _roll(_Window w, double now, double window_s) noexcept
cdef double _estimate(_Window w, double now, double window_s) noexcept

cdef class VelocityGuard:
    cdef readonly Py_ssize_t entries_max
    cdef LRUTable _windows      # ("m", merchant) | ("c"|"d", merchant, card) -> _Window

    cdef _Window _window(self, tuple key, double now, double window_s)
