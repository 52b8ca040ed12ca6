# Declarations for core_ext/pure/ledger.py compiled as core_ext.compiled.ledger.

from core_ext.compiled.states cimport Transition

cdef int _check_part(str name, object value) except -1      # ValueError unless a clean str
cdef int _check_balanced(list entries) except -1            # LedgerImbalance / TypeError
cdef str _name(str kind, str owner, str currency, str bucket)  # the one spelling of an account
cdef str _like_escaped(str text)
# postings() reads a Transition's fields (C struct reads for this build's type), then:
cdef list _postings(str event, long long moved, long long released, object merchant_id,
                    object processor, object currency)
cdef list _entries(str event, long long moved, long long released, str merchant_id,
                   str processor, str currency)
