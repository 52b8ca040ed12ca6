"""Webhooks: the I/O around ``core_ext.webhooks`` (signatures, schedule, labels).

``addresses``: the SSRF guard, which URLs and addresses a delivery may reach, checked when
an endpoint is created or updated and again on every connection a delivery makes.
``secrets``: endpoint secrets encrypted at rest. ``service``: endpoints and events over
the API. ``deliverer``: the loop every gateway process runs to send due deliveries.
"""
