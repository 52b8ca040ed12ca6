# Declarations for core_ext/pure/billing.py compiled as core_ext.compiled.billing.
# The calendar's helpers are C functions on C integers: a boundary is a few of them, and
# a clock advance asks for one per renewal.

cdef long long _days_from_civil(long long y, long long m, long long d)   # days since 1970
cdef tuple _civil_from_days(long long z)                                 # (y, m, d)
cdef long long _days_in_month(long long y, long long m)
