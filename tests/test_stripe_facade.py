"""The /stripe/v1 tree over HTTP, in process: form bodies in, Stripe's shapes, errors and
headers out, and no card number in any answer (API.md "Card data"). The official SDK
drives a live server in tests/test_stripe_sdk.py; these are the wire-level checks."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from prometheus_client import REGISTRY

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
CARD = "4242424242424242"


async def send(client, method, path, merchant=None, form=None, key=None, headers=None):
    sent = dict(FORM if form is not None else {})
    if merchant is not None:
        sent.update(merchant.headers)
    if key is not None:
        sent["Idempotency-Key"] = key
    sent.update(headers or {})
    data = None if form is None else (form if isinstance(form, str) else urlencode(form))
    async with client.request(method, "/stripe" + path, data=data, headers=sent) as answer:
        return answer.status, await answer.json(), answer.headers


async def test_a_confirmed_intent_is_a_payment_in_stripes_shape(client, merchant):
    status, intent, headers = await send(
        client,
        "POST",
        "/v1/payment_intents",
        merchant,
        {"amount": "1999", "currency": "eur", "confirm": "true", "payment_method": "pm_card_visa"},
        key="k1",
    )
    assert status == 200, intent
    assert intent["object"] == "payment_intent" and intent["status"] == "succeeded"
    assert intent["currency"] == "eur" and intent["amount_received"] == 1999
    assert headers["Request-Id"] == headers["X-Request-Id"]
    native = intent["id"].replace("pi_", "pay_")
    async with client.get(f"/v1/payments/{native}", headers=merchant.headers) as answer:
        assert (await answer.json())["status"] == "captured"


async def test_errors_are_stripes_with_a_request_id(client, merchant):
    status, error, headers = await send(client, "GET", "/v1/payment_intents")
    assert status == 401 and error["error"]["type"] == "authentication_error"
    assert set(error["error"]) <= {"type", "code", "message", "param"}
    assert headers["Request-Id"]
    status, error, headers = await send(
        client,
        "POST",
        "/v1/payment_intents",
        merchant,
        {"amount": "1", "currency": "eur", "x": "1"},
    )
    assert (status, error["error"]["code"], error["error"]["param"]) == (
        400,
        "parameter_unknown",
        "x",
    )
    assert headers["Request-Id"]
    # Stripe's SDK reads any 4xx but 401/402/403/404/429 as a 400: a 405 is answered so.
    status, error, _ = await send(client, "DELETE", "/v1/payment_intents", merchant)
    assert status == 400 and error["error"]["type"] == "invalid_request_error"
    status, error, _ = await send(client, "GET", "/v1/nothing_here", merchant)
    assert (status, error["error"]["code"]) == (404, "resource_missing")
    async with client.post(
        "/stripe/v1/payment_intents",
        json={"amount": 100, "currency": "eur"},
        headers=merchant.headers,
    ) as answer:
        # A JSON body is refused (a 400 here: the SDK has no class for a 415).
        assert answer.status == 400 and "Request-Id" in answer.headers
        assert "form-encoded" in (await answer.json())["error"]["message"]


async def test_stripe_version_is_accepted(client, merchant):
    status, listed, _ = await send(
        client, "GET", "/v1/payment_intents", merchant, headers={"Stripe-Version": "2024-06-20"}
    )
    assert status == 200 and listed == {
        "object": "list",
        "data": [],
        "has_more": False,
        "url": "/v1/payment_intents",
    }


async def test_one_idempotency_store_for_both_trees(client, merchant):
    async with client.post(
        "/v1/payments",
        json={
            "amount": 500,
            "currency": "eur",
            "payment_method": {"type": "token", "token": "tok_" + "0" * 32},
        },
        headers={**merchant.headers, "Idempotency-Key": "shared"},
    ) as answer:
        assert answer.status == 404  # not stored: a retry runs again
    form = {"amount": "500", "currency": "eur", "confirm": "true", "payment_method": "pm_card_visa"}
    status, first, _ = await send(client, "POST", "/v1/payment_intents", merchant, form, key="k")
    assert status == 200
    async with client.post(
        "/v1/payments",
        json={"amount": 501, "currency": "eur"},
        headers={**merchant.headers, "Idempotency-Key": "k"},
    ) as answer:  # the key the Stripe request used, with another body: refused natively
        assert answer.status == 422
    status, again, headers = await send(
        client, "POST", "/v1/payment_intents", merchant, form, key="k"
    )
    assert (status, again["id"], headers["Idempotent-Replayed"]) == (200, first["id"], "true")
    # The same key with other parameters: Stripe's 400 idempotency_error, counted as the
    # native 422 is.
    counted = (
        REGISTRY.get_sample_value(
            "kassa_idempotency_conflicts_total", {"code": "idempotency_key_reused"}
        )
        or 0.0
    )
    status, error, _ = await send(
        client, "POST", "/v1/payment_intents", merchant, {**form, "amount": "501"}, key="k"
    )
    assert (status, error["error"]["type"]) == (400, "idempotency_error")
    assert (
        REGISTRY.get_sample_value(
            "kassa_idempotency_conflicts_total", {"code": "idempotency_key_reused"}
        )
        == counted + 1
    )


# --- no card number in any answer --------------------------------------------------------

SPELLINGS = (CARD, "4242 4242 4242 4242", "4242-4242-4242-4242")


def assert_no_card_number(body: object) -> None:
    import orjson

    import core_ext

    text = orjson.dumps(body).decode()
    assert not core_ext.validation.contains_card_number(text), text
    assert CARD not in text.replace(" ", "").replace("-", ""), text


@pytest.mark.parametrize("number", SPELLINGS)
async def test_a_card_number_as_a_parameter_name_is_not_echoed(client, merchant, number):
    for path, form in (
        ("/v1/payment_intents", {number: "1", "amount": "1", "currency": "eur"}),
        ("/v1/payment_methods", {"type": "card", f"card[{number}]": "1"}),
        ("/v1/payment_intents", {"amount": "1", "currency": "eur", f"metadata[{number}]": "x"}),
    ):
        status, error, _ = await send(client, "POST", path, merchant, form)
        assert 400 <= status < 500, error
        assert_no_card_number(error)
    status, error, _ = await send(client, "GET", f"/v1/payment_intents?{number}=1", merchant)
    assert (status, error["error"]["code"]) == (400, "parameter_unknown")
    assert_no_card_number(error)


async def test_a_card_number_in_the_path_or_a_value_is_not_echoed(client, merchant):
    for path in (f"/v1/payment_intents/{CARD}", f"/v1/payment_methods/{CARD}", f"/v1/{CARD}"):
        status, error, _ = await send(client, "GET", path, merchant)
        assert status == 404, error
        assert_no_card_number(error)
    for form in (
        {"amount": "1", "currency": "eur", "payment_method": CARD},
        {"amount": "1", "currency": "eur", "description": f"card {CARD}"},
        {"amount": "1", "currency": "eur", "metadata[note]": CARD},
        {"amount": CARD, "currency": "eur"},
    ):
        status, error, _ = await send(client, "POST", "/v1/payment_intents", merchant, form)
        assert 400 <= status < 500, error
        assert_no_card_number(error)


async def test_a_payment_method_shows_the_last4_never_the_number_or_cvc(client, merchant):
    form = {
        "type": "card",
        "card[number]": CARD,
        "card[exp_month]": "12",
        "card[exp_year]": "2035",
        "card[cvc]": "987",
    }
    status, method, _ = await send(client, "POST", "/v1/payment_methods", merchant, form)
    assert status == 200 and method["card"]["last4"] == "4242"
    assert_no_card_number(method)
    assert "987" not in str(method)
    status, read, _ = await send(client, "GET", f"/v1/payment_methods/{method['id']}", merchant)
    assert (status, read) == (200, method)  # created too: the token's own time
    bad = {**form, "card[number]": "4242424242424241"}  # not Luhn-valid: a card error
    status, error, _ = await send(client, "POST", "/v1/payment_methods", merchant, bad)
    assert (status, error["error"]["type"]) == (402, "card_error")
    assert "4242424242424241" not in str(error) and "987" not in str(error)


# --- the conformance matrix ----------------------------------------------------------------


def test_the_conformance_matrix_is_what_the_router_serves(client):
    from gateway.stripe import routes

    served = {
        (r.method, r.resource.canonical)
        for r in client.app.router.routes()
        if r.resource is not None
        and r.resource.canonical.startswith(routes.PREFIX + "/")
        and r.method != "HEAD"
    }
    assert served == {(e.method, routes.PREFIX + e.path) for e in routes.ENDPOINTS}
    matrix = routes.conformance_markdown()
    for e in routes.ENDPOINTS:
        assert f"`{e.method} {e.path}`" in matrix
        for p in e.params:
            assert f"`{p.name}`" in matrix


def test_the_repository_carries_the_generated_matrix():
    """docs/stripe-conformance.md and the README's copy are generated from ENDPOINTS; the
    run rewrites them when they differ (so `git diff` shows what changed) and fails."""
    from pathlib import Path

    from gateway.stripe import routes

    root = Path(__file__).resolve().parent.parent
    docs, readme = root / routes.DOCS_PATH, root / routes.README_PATH
    stale = []
    wanted_docs = routes.conformance_document()
    if not docs.exists() or docs.read_text() != wanted_docs:
        docs.write_text(wanted_docs)
        stale.append(routes.DOCS_PATH)
    text = readme.read_text()
    wanted_readme = routes.readme_with_matrix(text)
    if text != wanted_readme:
        readme.write_text(wanted_readme)
        stale.append(routes.README_PATH)
    assert not stale, f"regenerated {stale} from gateway/stripe/routes.py: commit them"


async def test_cancel_before_the_processor_and_confirm_with_the_kept_method(client, merchant):
    status, waiting, _ = await send(
        client, "POST", "/v1/payment_intents", merchant, {"amount": "300", "currency": "eur"}
    )
    assert (status, waiting["status"]) == (200, "requires_payment_method")
    status, canceled, _ = await send(
        client, "POST", f"/v1/payment_intents/{waiting['id']}/cancel", merchant, {}
    )
    assert (status, canceled["status"], canceled["latest_charge"]) == (200, "canceled", None)
    charge = "ch_" + waiting["id"].removeprefix("pi_")
    status, error, _ = await send(client, "GET", f"/v1/charges/{charge}", merchant)
    assert (status, error["error"]["code"]) == (404, "resource_missing")
    form = {"amount": "300", "currency": "eur", "payment_method": "pm_card_visa"}
    status, kept, _ = await send(client, "POST", "/v1/payment_intents", merchant, form)
    assert (status, kept["status"]) == (200, "requires_confirmation")
    status, confirmed, _ = await send(
        client, "POST", f"/v1/payment_intents/{kept['id']}/confirm", merchant, {}
    )
    assert (status, confirmed["status"]) == (200, "succeeded")
    assert confirmed["payment_method"].startswith("pm_")  # the card kept as a PaymentMethod
    status, method, _ = await send(
        client, "GET", f"/v1/payment_methods/{confirmed['payment_method']}", merchant
    )
    assert (status, method["card"]["last4"]) == (200, "4242")
    status, error, _ = await send(
        client, "POST", f"/v1/payment_intents/{kept['id']}/cancel", merchant, {}
    )
    assert (status, error["error"]["code"]) == (400, "payment_intent_unexpected_state")
    assert error["error"]["payment_intent"]["status"] == "succeeded"


async def test_load_shedding_is_a_503_the_sdk_does_not_retry(app_factory, merchant, db):
    import asyncio

    client = await app_factory(pipeline_inflight_max=2, commit_wait_ms=50)
    form = {"amount": "100", "currency": "eur", "confirm": "true", "payment_method": "pm_card_visa"}
    answers = await asyncio.gather(
        *[
            send(client, "POST", "/v1/payment_intents", merchant, form, key=f"k{n}")
            for n in range(12)
        ]
    )
    shed = [(body, headers) for status, body, headers in answers if status == 503]
    assert shed and any(status == 200 for status, _, _ in answers)
    for body, headers in shed:
        assert body["error"]["type"] == "api_error"
        assert headers["Stripe-Should-Retry"] == "false" and headers["Retry-After"] == "1"
        assert headers["Request-Id"]


# --- random forms never break the tree ---------------------------------------------------------

FUZZ_REQUESTS = 400
FUZZ_SEED = 15  # the number: the same run every time
FUZZ_VALUES = (
    "",
    "0",
    "1",
    "-1",
    "true",
    "false",
    "eur",
    "card",
    "x" * 300,
    CARD,
    "pm_card_visa",
    "tok_visa",
    "pi_" + "0" * 32,
    "manual",
    "\u00e9",
    "%",
    "a[b]",
    "99999999999999999999",
)


def fuzz_form(rng, endpoint) -> str:
    from urllib.parse import quote

    names = [p.name for p in endpoint.params] + ["zebra", "metadata", "expand"]
    pairs = []
    for _ in range(rng.randrange(0, 6)):
        name = rng.choice(names)
        param = next((p for p in endpoint.params if p.name == name), None)
        if param is not None and param.fields and rng.random() < 0.7:
            name += f"[{rng.choice(param.fields)}]"
        elif rng.random() < 0.2:
            name += rng.choice(("[0]", "[]", "[k]", "[", "]", "[a][b]"))
        pairs.append(f"{quote(name)}={quote(rng.choice(FUZZ_VALUES))}")
    return "&".join(pairs)


async def test_random_forms_get_a_2xx_or_a_stripe_error(client, merchant):
    import random

    from gateway.stripe import routes

    rng = random.Random(FUZZ_SEED)
    status, intent, _ = await send(
        client,
        "POST",
        "/v1/payment_intents",
        merchant,
        {"amount": "100", "currency": "eur", "confirm": "true", "payment_method": "pm_card_visa"},
    )
    status, customer, _ = await send(
        client, "POST", "/v1/customers", merchant, {"email": "ada@shop.example"}
    )
    assert status == 200, customer
    ids = {
        "customer": customer["id"],
        "intent": intent["id"],
        "method": "pm_card_visa",
        "refund": "re_" + "0" * 32,
        "charge": intent["latest_charge"],
        "endpoint": "we_" + "0" * 32,
        "event": "evt_" + "0" * 32,
    }
    seen = set()
    for _ in range(FUZZ_REQUESTS):
        endpoint = rng.choice(routes.ENDPOINTS)
        path = endpoint.path.format(**ids)
        form = fuzz_form(rng, endpoint)
        if endpoint.method == "POST":
            status, body, headers = await send(client, "POST", path, merchant, form)
        else:
            status, body, headers = await send(client, endpoint.method, f"{path}?{form}", merchant)
        seen.add((endpoint.method, endpoint.path, status // 100))
        assert status < 500, (endpoint.path, form, body)
        assert headers["Request-Id"]
        if status >= 400:
            assert set(body) == {"error"} and body["error"]["type"], body
        assert_no_card_number(body)
    assert {kind for _, _, kind in seen} >= {2, 4}


async def test_concurrent_metadata_updates_of_a_customer_lose_no_key(client, merchant):
    """Stripe merges the metadata keys an update gives into the customer's: merged under
    the customer's row lock, twelve updates at once, each adding its own key, keep all
    twelve (a read-then-write merge loses some), and a replay keeps its answer."""
    import asyncio

    status, customer, _ = await send(
        client, "POST", "/v1/customers", merchant, {"metadata[crm]": "c_1"}
    )
    assert status == 200, customer
    path = f"/v1/customers/{customer['id']}"
    answers = await asyncio.gather(
        *(
            send(client, "POST", path, merchant, {f"metadata[k{n}]": str(n)}, key=f"meta-{n}")
            for n in range(12)
        )
    )
    assert [status for status, _, _ in answers] == [200] * 12
    status, read, _ = await send(client, "GET", path, merchant)
    assert read["metadata"] == {"crm": "c_1", **{f"k{n}": str(n) for n in range(12)}}
    # A replay after the others changed the metadata: the same answer, not a reuse error.
    status, replayed, headers = await send(
        client, "POST", path, merchant, {"metadata[k0]": "0"}, key="meta-0"
    )
    assert (status, replayed) == (200, answers[0][1])
    assert headers["Idempotent-Replayed"] == "true"
    # Removing a key, and the bound on the merged result.
    status, removed, _ = await send(client, "POST", path, merchant, {"metadata[crm]": ""})
    assert "crm" not in removed["metadata"] and len(removed["metadata"]) == 12
    many = {f"metadata[x{n}]": "v" for n in range(9)}
    status, refused, _ = await send(client, "POST", path, merchant, many)
    assert (status, refused["error"]["param"]) == (400, "metadata")
    status, read, _ = await send(client, "GET", path, merchant)
    assert len(read["metadata"]) == 12  # the refused update changed nothing
