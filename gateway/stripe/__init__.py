"""The Stripe-compatible tree (``/stripe/v1``, API.md "Stripe-compatible API"): pure
translations between Kassa's native objects and errors and Stripe's wire shapes.

- ``shapes``: Kassa's rendered objects (``gateway/http/render.py``) -> Stripe's JSON
  (PaymentIntent, PaymentMethod, Charge, Refund, Event, WebhookEndpoint, lists), and the id
  mappings (``pi_X`` is ``pay_X``, ``ch_X`` is ``pay_X``'s charge, ``pm_X`` is ``tok_X``).
- ``errors``: a native ``ApiError`` -> Stripe's status, body and headers, chosen for the
  exception class the official SDK raises.

- ``routes``: the ``/stripe/v1`` routes themselves, thin handlers over the native
  services, and their table (``ENDPOINTS``), from which the conformance matrix is made.

``shapes`` and ``errors`` do no I/O: the routes read and write through the native
services, then translate.
"""
