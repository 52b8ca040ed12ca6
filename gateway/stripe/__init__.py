"""The Stripe-compatible tree (``/stripe/v1``, API.md "Stripe-compatible API"): pure
translations between Kassa's native objects and errors and Stripe's wire shapes.

- ``shapes``: Kassa's rendered objects (``gateway/http/render.py``) -> Stripe's JSON
  (PaymentIntent, PaymentMethod, Charge, Refund, Event, WebhookEndpoint, lists), and the id
  mappings (``pi_X`` is ``pay_X``, ``ch_X`` is ``pay_X``'s charge, ``pm_X`` is ``tok_X``).
- ``errors``: a native ``ApiError`` -> Stripe's status, body and headers, chosen for the
  exception class the official SDK raises.

No I/O here: the routes read and write through the native services, then translate.
"""
