# Declarations for core_ext/pure/validation.py compiled as core_ext.compiled.validation.
# Only the public validators (and the few names tests read) stay Python-visible; every
# helper below is a C function. `except -1` / `except NULL` (object returns) propagate
# CoreError; the few `noexcept` ones cannot raise.

# --- C twins of the hot limits (the public names stay Python ints)
cdef Py_ssize_t _METADATA_KEYS_MAX, _METADATA_KEY_CHARS_MAX, _METADATA_VALUE_CHARS_MAX
cdef Py_ssize_t _EMAIL_CHARS_MAX, _OBJECT_ID_CHARS_MAX, _IP_CHARS_MAX
cdef int _JSON_DEPTH_MAX
cdef Py_ssize_t _CARD_RUN_DIGITS_MIN, _CARD_RUN_DIGITS_MAX
cdef dict _EXPONENTS                                      # code -> minor-unit exponent

# --- errors and shapes
cdef object _invalid(object param, str message, str code=*)
cdef int _check_unknown(object body, tuple allowed, str prefix) except -1
cdef bint _is_int(object value) noexcept                  # exactly int, never bool
cdef dict _object(object value, object param)             # the dict, or CoreError
cdef bint _storable(str text) except -1                   # no NUL (PostgreSQL text)
cpdef bint object_id_valid(object text, str prefix) except -1
cdef object _optional_string(dict body, str name, str prefix, Py_ssize_t chars_max,
                             Py_ssize_t chars_min, bint free_text)
cdef object _amount(object value, str param)
cdef int _nests_deeper(object value, int depth) except -1

# --- cards
cpdef bint luhn_valid(str digits) except -1               # the core's one Luhn
cdef int _prefix6(str digits) except -1
cdef str _brand_of(str digits)
cdef bint _all_digits(str text) except -1

# --- card numbers in free text (the scan is a C loop over Py_UCS4)
cdef object _next_card_run(str text, Py_ssize_t pos, bint scrubbing)  # (start, end) or None
cdef bint _run_holds_card(str text, Py_ssize_t start, Py_ssize_t end, Py_ssize_t digits) except -1
cdef bint _run_luhn_valid(str text, Py_ssize_t start, Py_ssize_t end) except -1
cpdef bint contains_card_number(str text) except -1
cpdef str redact_card_numbers(str text)
cdef int _no_card_number(str text, str param) except -1

cdef class CardInput:
    cdef readonly str number            # digits only
    cdef readonly object exp_month      # int (object: the caller's exact value)
    cdef readonly object exp_year
    cdef readonly str cvc
    cdef readonly object holder_name    # str or None
    cdef readonly str brand
    cdef readonly str last4

cdef CardInput _card(object value, str prefix, object today_year, object today_month)
cdef CardInput _card_input(str number, object exp_month, object exp_year, str cvc,
                           object holder_name, str brand)   # without __init__'s parsing
# These take the param's prefix: the name is built only for an error.
cdef object _expiry_month(object value, str prefix)
cdef object _expiry_year(object value, str prefix, object today_year)
cdef str _cvc(object value, str prefix, Py_ssize_t length)

# --- payments
cdef class PaymentRequest:
    cdef readonly object amount         # int
    cdef readonly str currency          # upper case ISO 4217
    cdef readonly str capture
    cdef readonly object card           # CardInput or None
    cdef readonly object token          # tok_ id or None
    cdef readonly object reference
    cdef readonly object description
    cdef readonly dict metadata
    cdef readonly object customer       # {"email", "ip"} or None
    cdef readonly bint confirm          # false: stop before the processor
    cdef readonly object customer_id    # a saved customer's cus_ id or None
    cdef readonly bint off_session      # the buyer is absent (a renewal, say)

cdef str _currency_code(object code)                      # upper-cased, or CoreError
cdef str _currency(object value)
cdef tuple _payment_method(object value, object today_year, object today_month)
cdef bint _metadata_entry_ok(str key, object item) except -1
cdef dict _metadata(object value)
cdef object _customer(object value)
cdef tuple _saved_customer(dict b, object card, object token, bint confirm)
cdef bint _email_shaped(str text) noexcept                # exactly one "@", not at an end
cdef bint _ipv4_valid(str text) noexcept
cpdef bint _ip_valid(str text) except -1
cdef dict _no_params(object body)
