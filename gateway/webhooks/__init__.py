"""Webhooks: endpoints and their secrets, the deliverer, the SSRF guard."""
