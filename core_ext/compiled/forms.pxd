# Declarations for core_ext/pure/forms.py compiled as core_ext.compiled.forms.
# The decoder's helpers are C functions: as Python functions, the calls between them cost
# more than the work (measured on a PaymentIntent create body, benchmarks/core_bench.py
# "form_decode": 10.7 us compiled without this file, 6.5 us with it; pure 16.5 us).

cdef Py_ssize_t _BODY_BYTES_MAX, _PARAMETERS_MAX, _DEPTH_MAX    # C twins of the limits

cdef object _error(object param, str message, str code=*, int status=*)  # a CoreError
cdef str _shown(str param)
cdef str _unquote(str text)                     # unquote_plus, strict UTF-8, fast paths
cdef list _names(str key)                       # "a[b][]" -> ["a", "b", ""]
cdef Py_ssize_t _index(str segment) except -2   # a canonical array index, or -1
cdef object _new_container(str next_name)       # [] or {}
cdef int _insert(dict root, list names, object value) except -1
cdef object _twice(list names, Py_ssize_t depth)
cdef object _too_large()
cdef bint _absent(object value, str param, bint required) except -1
