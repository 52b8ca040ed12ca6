"""The hosted checkout: sessions and payment links (service), and the page buyers pay on
(page rendering, its handlers, its message catalogs and its own CSS and JS)."""
