"""Webhooks: the I/O around ``core_ext.webhooks`` (signatures, schedule, labels).

``addresses``: the SSRF guard, which URLs and addresses a delivery may reach, checked when
an endpoint is created or updated and again on every connection a delivery makes.
"""
