"""The hosted page's HTML, rendered on the server with no template engine: plain string
building with every piece of text escaped, so a render costs microseconds.

The page loads only its own stylesheet and script (``/checkout/static/``, named by their
content's hash so they can be cached for a year), has no inline script or style, and pays
without its script: a plain form post. A card number is never written into a page: after
a decline or a mistake the number and cvc fields come back empty.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from html import escape
from importlib import resources
from urllib.parse import urlsplit

STATIC_PATH = "/checkout/static/"
FIELDS = ("number", "expiry", "cvc", "name")


@dataclass(frozen=True)
class Asset:
    name: str  # content-hashed file name
    body: bytes
    content_type: str


def _asset(filename: str, content_type: str) -> Asset:
    body = resources.files("gateway.checkout").joinpath("static", filename).read_bytes()
    stem, _, suffix = filename.rpartition(".")
    digest = hashlib.sha256(body).hexdigest()[:16]
    return Asset(f"{stem}.{digest}.{suffix}", body, content_type)


STYLESHEET = _asset("checkout.css", "text/css")
SCRIPT = _asset("checkout.js", "text/javascript")
ASSETS = {asset.name: asset for asset in (STYLESHEET, SCRIPT)}


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def content_security_policy(*urls: str | None) -> str:
    """API.md's policy: everything from Kassa's own origin only, no framing, and forms
    posted (and their redirects followed) only to Kassa and the session's own URLs."""
    targets = ["'self'"]
    for url in urls:
        if url:
            origin = origin_of(url)
            if origin not in targets:
                targets.append(origin)
    return (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "font-src 'self'; connect-src 'self'; frame-ancestors 'none'; "
        "form-action " + " ".join(targets)
    )


@dataclass
class FormState:
    """What the form shows: errors per field and for the whole form, the values safe to
    show again (never the number or the cvc), and the attempt this form makes."""

    attempt: int
    errors: dict[str, str] = field(default_factory=dict)
    alert: str = ""
    expiry: str = ""
    name: str = ""


def _document(lang: str, title: str, body: str, refresh_s: int | None = None) -> str:
    refresh = f'<meta http-equiv="refresh" content="{refresh_s}">' if refresh_s else ""
    return (
        f'<!doctype html><html lang="{lang}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="referrer" content="no-referrer">{refresh}<title>{escape(title)}</title>'
        f'<link rel="stylesheet" href="{STATIC_PATH}{STYLESHEET.name}">'
        f'<script src="{STATIC_PATH}{SCRIPT.name}" defer></script>'
        f'</head><body><main class="checkout">{body}'
        "<footer>Kassa</footer></main></body></html>"
    )


def summary(messages: dict[str, str], merchant: str, amount: str, description: str | None) -> str:
    described = f'<p class="description">{escape(description)}</p>' if description else ""
    return (
        f'<section class="summary" aria-label="{escape(messages["amount_due"])}">'
        f'<p class="merchant">{escape(merchant)}</p>'
        f'<p class="amount-label">{escape(messages["amount_due"])}</p>'
        f'<p class="amount">{escape(amount)}</p>{described}</section>'
    )


def _input(
    messages: dict[str, str],
    name: str,
    label_key: str,
    state: FormState,
    attributes: str,
    value: str = "",
    hint_key: str | None = None,
    extra: str = "",
) -> str:
    error = state.errors.get(name, "")
    described = f"{name}-error" + (f" {name}-hint" if hint_key else "")
    hint = (
        f'<span class="hint" id="{name}-hint">{escape(messages[hint_key])}</span>'
        if hint_key
        else ""
    )
    invalid = ' aria-invalid="true"' if error else ""
    shown = f' value="{escape(value)}"' if value else ""
    control = (
        f'<input id="{name}" name="{name}" {attributes}{shown}{invalid} '
        f'aria-describedby="{described}">{extra}'
    )
    if name == "number":
        control = f'<div class="number-wrap">{control}</div>'
    return (
        f'<div class="field"><label for="{name}">{escape(messages[label_key])}{hint}</label>'
        f'{control}<p class="error" id="{name}-error">{escape(error)}</p></div>'
    )


def form_page(
    lang: str,
    messages: dict[str, str],
    session_id: str,
    csrf_token: str,
    merchant: str,
    amount: str,
    description: str | None,
    cancel_url: str | None,
    state: FormState,
) -> str:
    data = "".join(
        f' data-{key.replace("_", "-")}="{escape(messages[key])}"'
        for key in (
            "error_number",
            "error_expiry",
            "error_expiry_past",
            "error_cvc",
            "pay",
            "paying",
        )
    )
    cancel = (
        f'<a class="cancel" href="{escape(cancel_url)}">{escape(messages["cancel"])}</a>'
        if cancel_url
        else ""
    )
    alert = (
        f'<div class="alert" role="alert" id="form-alert">{escape(state.alert)}</div>'
        if state.alert
        else '<div class="alert" role="alert" id="form-alert"></div>'
    )
    title = messages["title"].format(merchant=merchant)
    body = (
        summary(messages, merchant, amount, description)
        + f'<section class="panel"><h1 class="title">{escape(title)}</h1>{alert}'
        f'<form id="pay-form" method="post" action="/checkout/{session_id}/pay" '
        f"novalidate{data}>"
        f'<input type="hidden" name="csrf_token" value="{csrf_token}">'
        f'<input type="hidden" name="attempt" value="{state.attempt}">'
        + _input(
            messages,
            "number",
            "card_number",
            state,
            'type="text" inputmode="numeric" autocomplete="cc-number" maxlength="23" '
            'spellcheck="false"',
            extra='<span class="brand" id="brand" aria-live="polite"></span>',
        )
        + '<div class="row">'
        + _input(
            messages,
            "expiry",
            "expiry",
            state,
            'type="text" inputmode="numeric" autocomplete="cc-exp" maxlength="9"',
            state.expiry,
            "expiry_hint",
        )
        + _input(
            messages,
            "cvc",
            "cvc",
            state,
            'type="text" inputmode="numeric" autocomplete="cc-csc" maxlength="4"',
        )
        + "</div>"
        + _input(
            messages,
            "name",
            "name",
            state,
            'type="text" autocomplete="cc-name" maxlength="200" spellcheck="false"',
            state.name,
        )
        + f'<button type="submit" id="pay">{escape(messages["pay"])}</button>'
        + f"{cancel}</form>"
        + f'<p class="secure">{escape(messages["secure"])}</p></section>'
    )
    return _document(lang, title, body)


def notice_page(
    lang: str,
    title: str,
    text: str,
    summary_html: str = "",
    reference: str | None = None,
    refresh_s: int | None = None,
) -> str:
    """A page that says one thing (complete, expired, waiting, retired, missing)."""
    shown = f'<p class="reference">{escape(reference)}</p>' if reference else ""
    body = (
        summary_html + f'<section class="panel notice" aria-live="polite"><h1>{escape(title)}</h1>'
        f"<p>{escape(text)}</p>{shown}</section>"
    )
    return _document(lang, title, body, refresh_s)
