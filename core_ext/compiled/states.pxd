# Declarations for core_ext/pure/states.py compiled as core_ext.compiled.states.
# compiled/ledger.pxd cimports Transition, so the ledger reads its fields as a C struct.

cdef class Transition:
    cdef readonly str event             # authorize|decline|fail|capture|void|expire|refund,
                                        # or attach|confirm|cancel|expire_unconfirmed (no money)
    cdef readonly str status            # the payment's status after the move
    cdef readonly long long amount_capturable
    cdef readonly long long amount_captured
    cdef readonly long long amount_refunded
    cdef readonly long long amount      # money this event moves
    cdef readonly long long released    # capture only: the uncaptured hold given back

# Stored amounts impossible -> LedgerImbalance (never a client error).
cdef int _check_invariants(long long total, long long capturable, long long captured,
                           long long refunded) except -1
cdef int _check_source(object status, long long capturable, long long captured,
                       long long refunded) except -1
# The exception to raise for an illegal move (409, or ValueError for an unknown status).
cdef object _illegal(str operation, object status)
# The amount a capture or refund moves (None: all of `limit`).
cdef long long _requested(object requested, long long limit, str what) except -1
# A Transition without __init__'s argument parsing.
cdef Transition _make(str event, str status, long long total, long long capturable,
                      long long captured, long long refunded, long long moved,
                      long long released)
cdef Transition _release(str event, str new_status, object status, long long amount,
                         long long capturable, long long captured, long long refunded)
# A move between states that hold no money (attach, confirm, cancel, an unconfirmed expiry).
cdef Transition _unmoved(str event, str new_status, str operation, object status,
                         long long amount, long long capturable, long long captured,
                         long long refunded)
