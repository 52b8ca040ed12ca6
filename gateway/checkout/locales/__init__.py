"""The page's languages: one message catalog per locale (a dict module each), the choice
of locale (the session's, or the buyer's Accept-Language under ``auto``), and amounts
written the locale's way with the currency's ISO 4217 exponent.

Money stays an integer of minor units: it is split with ``divmod`` and written digit by
digit, never through a float.
"""

from __future__ import annotations

import core_ext
from gateway.checkout.locales import en, fi, fr, sv

CATALOGS: dict[str, dict[str, str]] = {
    "en": en.MESSAGES,
    "fi": fi.MESSAGES,
    "sv": sv.MESSAGES,
    "fr": fr.MESSAGES,
}
DEFAULT_LOCALE = "en"
ACCEPT_LANGUAGE_CHARS_MAX = 512  # a longer header is read only this far
ACCEPT_LANGUAGE_ENTRIES_MAX = 20  # language ranges looked at, in the header's order

NBSP = "\u00a0"
NARROW_NBSP = "\u202f"  # French groups thousands with a narrow no-break space
# Per locale: the thousands separator, the decimal mark, and whether the symbol leads.
NUMBER_STYLES: dict[str, tuple[str, str, bool]] = {
    "en": (",", ".", True),
    "fi": (NBSP, ",", False),
    "sv": (NBSP, ",", False),
    "fr": (NARROW_NBSP, ",", False),
}
# Symbols written instead of the code; every other currency is written by its code.
SYMBOLS = {"EUR": "€", "USD": "$", "GBP": "£", "JPY": "¥"}


def messages(locale: str) -> dict[str, str]:
    return CATALOGS.get(locale, CATALOGS[DEFAULT_LOCALE])


def choose(session_locale: str, accept_language: str | None) -> str:
    """The session's locale, or under ``auto`` the buyer's most preferred language we
    have (Accept-Language, by q-value then order), else English."""
    if session_locale in CATALOGS:
        return session_locale
    if not accept_language:
        return DEFAULT_LOCALE
    ranked: list[tuple[float, int, str]] = []
    entries = accept_language[:ACCEPT_LANGUAGE_CHARS_MAX].split(",")
    for position, entry in enumerate(entries[:ACCEPT_LANGUAGE_ENTRIES_MAX]):
        tag, _, params = entry.strip().partition(";")
        primary = tag.strip().split("-")[0].lower()
        if primary not in CATALOGS:
            continue
        quality = 1.0
        name, _, value = params.strip().partition("=")
        if name.strip() == "q":
            try:
                quality = float(value)  # a preference weight, never money
            except ValueError:
                continue
        if quality > 0:
            ranked.append((-quality, position, primary))
    return min(ranked)[2] if ranked else DEFAULT_LOCALE


def _grouped(digits: str, separator: str) -> str:
    head = len(digits) % 3 or 3
    groups = [digits[:head]] + [digits[i : i + 3] for i in range(head, len(digits), 3)]
    return separator.join(groups)


def format_amount(amount: int, currency: str, locale: str) -> str:
    """``amount`` minor units of ``currency`` as the locale writes it: 1234567 EUR is
    "€12,345.67" in English and "12 345,67 €" in Finnish; 1234 JPY is "¥1,234"."""
    if not isinstance(amount, int) or isinstance(amount, bool) or amount < 0:
        raise ValueError("an amount is a non-negative integer of minor units")
    exponent = core_ext.validation.currency_exponent(currency)
    separator, decimal_mark, leads = NUMBER_STYLES.get(locale, NUMBER_STYLES[DEFAULT_LOCALE])
    units, minor = divmod(amount, 10**exponent)
    number = _grouped(str(units), separator)
    if exponent:
        number += decimal_mark + str(minor).rjust(exponent, "0")
    symbol = SYMBOLS.get(currency)
    if symbol is not None and leads:
        return symbol + number
    return number + NBSP + (symbol or currency)
