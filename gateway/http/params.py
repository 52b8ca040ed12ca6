"""Request-parameter checks the native services share (payments, webhooks, checkout, billing):
unknown names, id shapes, and list pages. Each raises API.md's error, never a stack trace."""

from __future__ import annotations

from collections.abc import Mapping

import core_ext
from gateway.http.answers import invalid_request, resource_missing

validation = core_ext.validation


def check_unknown(given: Mapping[str, object], allowed: tuple[str, ...]) -> None:
    """The first (sorted) name of a body or query that is not ``allowed``: 400."""
    unknown = sorted(str(name) for name in given if name not in allowed)
    if unknown:
        raise invalid_request("parameter_unknown", f"unknown parameter: {unknown[0]}", unknown[0])


def require_id(kind: str, object_id: str, prefix: str, param: str = "id") -> None:
    """Not the shape of an id we issue (too long, a NUL, another prefix): unknown without
    asking the database, which could not even store some of these."""
    if not validation.object_id_valid(object_id, prefix):
        raise resource_missing(kind, object_id, param=param)


def page_query(
    query: Mapping[str, str], extra: tuple[str, ...], prefix: str
) -> tuple[int, str | None]:
    """A list's ``limit`` and ``starting_after`` (an id with ``prefix``), and only the
    ``extra`` names beside them."""
    check_unknown(query, ("limit", "starting_after", *extra))
    limit = validation.LIST_LIMIT_DEFAULT
    text = query.get("limit")
    if text is not None:
        digits = text.isascii() and text.isdigit() and len(text) <= 3
        limit = int(text) if digits else 0
        if not 1 <= limit <= validation.LIST_LIMIT_MAX:
            raise invalid_request(
                "parameter_invalid",
                f"limit must be an integer from 1 to {validation.LIST_LIMIT_MAX}",
                "limit",
            )
    starting_after = query.get("starting_after")
    if starting_after is not None and not validation.object_id_valid(starting_after, prefix):
        raise invalid_request(
            "parameter_invalid", f"starting_after must be a {prefix} id", "starting_after"
        )
    return limit, starting_after
