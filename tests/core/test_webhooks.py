"""Webhook signatures, the retry schedule, subscriptions and status classes
(core_ext.*.webhooks), both builds.

The signatures are checked by the receivers' own libraries, not by a re-implementation:
what a shop runs (``standardwebhooks``, ``svix``, ``stripe``) is the oracle.
"""

import base64
import email.utils
import hmac
import json
import secrets
import time

import pytest
import standardwebhooks
import stripe
import svix.webhooks
from hypothesis import given, settings
from hypothesis import strategies as st

PROP = settings(max_examples=200, deadline=None)
SIGNING = settings(max_examples=50, deadline=None)


def secret_of(core) -> str:
    return core.webhooks.new_secret(secrets.token_bytes(32))


def event_body(event_id: str, payload: object = None) -> bytes:
    event = {"id": event_id, "object": "event", "type": "payment.captured", "data": payload}
    return json.dumps(event, separators=(",", ":")).encode()


def verify_standard(secret: str, body: bytes, headers: dict) -> None:
    standardwebhooks.Webhook(secret).verify(body, headers)


def verify_svix(secret: str, body: bytes, headers: dict) -> None:
    svix.webhooks.Webhook(secret).verify(body, headers)


def verify_stripe(secret: str, body: bytes, headers: dict) -> None:
    stripe.Webhook.construct_event(body, headers["Stripe-Signature"], secret)


VERIFIERS = {"standardwebhooks": verify_standard, "svix": verify_svix, "stripe": verify_stripe}
REFUSED = (
    standardwebhooks.WebhookVerificationError,
    svix.webhooks.WebhookVerificationError,
    stripe.SignatureVerificationError,
)


# ---- secrets ------------------------------------------------------------------------------


def test_a_secret_is_whsec_and_the_base64_of_its_32_bytes(core):
    random32 = secrets.token_bytes(32)
    secret = core.webhooks.new_secret(random32)
    assert (
        secret.startswith(core.webhooks.SECRET_PREFIX) and core.webhooks.SECRET_PREFIX == "whsec_"
    )
    assert base64.b64decode(secret.removeprefix("whsec_"), validate=True) == random32
    assert len(secret) == len("whsec_") + 44  # standard base64, padded
    with pytest.raises(ValueError, match="32 random bytes"):
        core.webhooks.new_secret(b"short")


def test_a_secret_that_is_not_whsec_base64_is_refused(core):
    for bad in ("sk_test_abc", "whsec_not base64!", "whsec_abc"):
        with pytest.raises(ValueError, match="whsec_"):
            core.webhooks.signature_headers(bad, "evt_1", int(time.time()), b"{}")


# ---- signatures ---------------------------------------------------------------------------


def test_signature_headers_are_exactly_the_four_of_api_md(core):
    headers = core.webhooks.signature_headers(secret_of(core), "evt_42", 1_700_000_000, b"{}")
    assert set(headers) == {
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "Stripe-Signature",
    }
    assert headers["webhook-id"] == "evt_42"
    assert headers["webhook-timestamp"] == "1700000000"
    assert headers["webhook-signature"].startswith("v1,")
    assert headers["Stripe-Signature"].startswith("t=1700000000,v1=")


def test_signing_with_an_endpoints_keys_is_signing_with_its_secret(core):
    secret = secret_of(core)
    keys = core.webhooks.signing_keys(secret)  # what the deliverer keeps per endpoint
    body = event_body("evt_7", {"object": {"amount": 1099, "currency": "eur"}})
    assert core.webhooks.sign(keys, "evt_7", 1_700_000_000, body) == (
        core.webhooks.signature_headers(secret, "evt_7", 1_700_000_000, body)
    )
    with pytest.raises(ValueError, match="whsec_"):
        core.webhooks.signing_keys("whsec_not base64!")


@settings(max_examples=200, deadline=None)
@given(
    random32=st.binary(min_size=32, max_size=32),
    event_id=st.from_regex(r"evt_[0-9a-f]{1,32}", fullmatch=True),
    timestamp=st.integers(min_value=0, max_value=2**40),
    body=st.binary(max_size=5000),
)
def test_signatures_are_the_standard_librarys_hmac_sha256(
    core, random32, event_id, timestamp, body
):
    """sign computes HMAC-SHA256 from hash states kept per endpoint: the same bytes as
    hmac.digest of each scheme's signed content, for any key, id, time and body."""
    secret = core.webhooks.new_secret(random32)
    headers = core.webhooks.sign(core.webhooks.signing_keys(secret), event_id, timestamp, body)
    standard = hmac.digest(random32, f"{event_id}.{timestamp}.".encode() + body, "sha256")
    stripe_scheme = hmac.digest(secret.encode(), f"{timestamp}.".encode() + body, "sha256")
    assert headers["webhook-signature"] == "v1," + base64.b64encode(standard).decode()
    assert headers["Stripe-Signature"] == f"t={timestamp},v1={stripe_scheme.hex()}"


@pytest.mark.parametrize("verifier", VERIFIERS)
def test_every_receiver_library_verifies_a_delivery(core, verifier):
    secret = secret_of(core)
    body = event_body("evt_1", {"object": {"amount": 1099, "currency": "eur"}})
    headers = core.webhooks.signature_headers(secret, "evt_1", int(time.time()), body)
    VERIFIERS[verifier](secret, body, headers)


@pytest.mark.parametrize("verifier", VERIFIERS)
def test_a_tampered_body_fails_every_verifier(core, verifier):
    secret = secret_of(core)
    body = event_body("evt_1", {"object": {"amount": 1099}})
    headers = core.webhooks.signature_headers(secret, "evt_1", int(time.time()), body)
    with pytest.raises(REFUSED):
        VERIFIERS[verifier](secret, body.replace(b"1099", b"9999"), headers)


@pytest.mark.parametrize("verifier", VERIFIERS)
def test_a_tampered_timestamp_fails_every_verifier(core, verifier):
    secret = secret_of(core)
    body = event_body("evt_1")
    now = int(time.time())
    headers = core.webhooks.signature_headers(secret, "evt_1", now, body)
    # One second later is inside every library's tolerance: only the signature refuses it.
    tampered = {
        **headers,
        "webhook-timestamp": str(now + 1),
        "Stripe-Signature": headers["Stripe-Signature"].replace(f"t={now},", f"t={now + 1},"),
    }
    with pytest.raises(REFUSED):
        VERIFIERS[verifier](secret, body, tampered)


@pytest.mark.parametrize("verifier", VERIFIERS)
def test_another_endpoints_secret_fails_every_verifier(core, verifier):
    body = event_body("evt_1")
    headers = core.webhooks.signature_headers(secret_of(core), "evt_1", int(time.time()), body)
    with pytest.raises(REFUSED):
        VERIFIERS[verifier](secret_of(core), body, headers)


def test_a_tampered_event_id_fails_the_standard_scheme(core):
    secret = secret_of(core)
    body = event_body("evt_1")
    headers = core.webhooks.signature_headers(secret, "evt_1", int(time.time()), body)
    for verify in (verify_standard, verify_svix):
        with pytest.raises(REFUSED):
            verify(secret, body, {**headers, "webhook-id": "evt_2"})


@SIGNING
@given(
    event_id=st.from_regex(r"evt_[A-Za-z0-9]{1,40}", fullmatch=True),
    payload=st.dictionaries(st.text(max_size=10), st.text(max_size=40) | st.integers(), max_size=5),
    age_s=st.integers(0, 200),
)
def test_any_event_verifies_with_all_three(core, event_id, payload, age_s):
    secret = secret_of(core)
    body = event_body(event_id, payload)
    headers = core.webhooks.signature_headers(secret, event_id, int(time.time()) - age_s, body)
    for verify in VERIFIERS.values():
        verify(secret, body, headers)


@SIGNING
@given(
    body=st.binary(max_size=2000), event_id=st.text(max_size=30), timestamp=st.integers(0, 2**40)
)
def test_both_builds_sign_alike(compiled, pure, body, event_id, timestamp):
    secret = pure.webhooks.new_secret(bytes(range(32)))
    assert compiled.webhooks.signature_headers(
        secret, event_id, timestamp, body
    ) == pure.webhooks.signature_headers(secret, event_id, timestamp, body)


def test_a_float_clock_reading_signs_its_whole_seconds(core):
    secret = secret_of(core)
    headers = core.webhooks.signature_headers(secret, "evt_1", 1_700_000_000.9, b"{}")
    assert headers == core.webhooks.signature_headers(secret, "evt_1", 1_700_000_000, b"{}")


# ---- retry schedule -----------------------------------------------------------------------


def test_the_default_schedule_is_api_mds(core):
    assert core.webhooks.DEFAULT_RETRY_SCHEDULE_S == (5, 300, 1800, 7200, 18000, 36000, 36000)
    text = "5,300,1800,7200,18000,36000,36000"
    assert core.webhooks.parse_retry_schedule(text) == core.webhooks.DEFAULT_RETRY_SCHEDULE_S


@PROP
@given(st.lists(st.integers(1, 30 * 86_400), min_size=1, max_size=50), st.sampled_from([",", ", "]))
def test_a_written_schedule_parses_back(core, delays, separator):
    assert core.webhooks.parse_retry_schedule(separator.join(map(str, delays))) == tuple(delays)


@pytest.mark.parametrize(
    "text,message",
    [
        ("", "comma-separated positive integers"),
        ("  ", "comma-separated positive integers"),
        ("5,,300", r"delay 2 \(''\) is not a positive integer"),
        ("5,300,", r"delay 3 \(''\) is not a positive integer"),
        ("5,0", r"delay 2 \(0\) must be from 1 to 2592000 s"),
        ("-5", r"delay 1 \('-5'\) is not a positive integer"),
        ("+5", r"delay 1 \('\+5'\) is not a positive integer"),
        ("5_000", r"delay 1 \('5_000'\) is not a positive integer"),
        ("1.5", r"delay 1 \('1.5'\) is not a positive integer"),
        ("\u0665", r"delay 1 \('\u0665'\) is not a positive"),  # Arabic-Indic 5: int() takes it
        ("5m", r"delay 1 \('5m'\) is not a positive integer"),
        ("2592001", r"delay 1 \(2592001\) must be from 1 to 2592000 s"),
        (",".join(["5"] * 51), "at most 50 delays"),
    ],
)
def test_a_bad_schedule_is_refused_precisely(core, text, message):
    with pytest.raises(ValueError, match=message):
        core.webhooks.parse_retry_schedule(text)


def test_the_delay_after_each_failed_attempt(core):
    schedule = core.webhooks.DEFAULT_RETRY_SCHEDULE_S
    delays = [core.webhooks.next_attempt_delay_s(schedule, n, None) for n in range(1, 9)]
    assert delays == [5, 300, 1800, 7200, 18000, 36000, 36000, None]  # 8th failure: failed
    assert core.webhooks.next_attempt_delay_s(schedule, 1, 60) == 60  # a longer Retry-After
    assert core.webhooks.next_attempt_delay_s(schedule, 2, 60.5) == 300  # a shorter one: ignored
    assert core.webhooks.next_attempt_delay_s(schedule, 8, 60) is None  # cannot extend the schedule
    with pytest.raises(ValueError, match="attempts_made must be >= 1"):
        core.webhooks.next_attempt_delay_s(schedule, 0, None)


@PROP
@given(
    schedule=st.lists(st.integers(1, 86_400), min_size=1, max_size=10).map(tuple),
    attempts=st.integers(1, 12),
    retry_after=st.none() | st.floats(0, 7 * 86_400) | st.integers(0, 7 * 86_400),
)
def test_the_delay_is_the_schedules_or_a_longer_retry_after(core, schedule, attempts, retry_after):
    delay = core.webhooks.next_attempt_delay_s(schedule, attempts, retry_after)
    if attempts > len(schedule):
        assert delay is None
    else:
        assert delay == max(schedule[attempts - 1], retry_after or 0)
        assert isinstance(delay, float)


# ---- Retry-After --------------------------------------------------------------------------


def test_retry_after_in_seconds_and_as_an_http_date(core):
    parse = core.webhooks.parse_retry_after
    now = 1_445_412_000.0  # Wed, 21 Oct 2015 07:20:00 GMT
    assert parse("120", now) == 120
    assert parse(" 0 ", now) == 0
    assert parse("Wed, 21 Oct 2015 07:28:00 GMT", now) == 480  # RFC 9110's example
    assert parse("Wed, 21 Oct 2015 07:28:00 -0000", now) == 480  # no zone: GMT
    assert parse("99999999999999999999999", now) == 7 * 86_400  # capped at a week
    assert parse("Wed, 21 Oct 2099 07:28:00 GMT", now) == 7 * 86_400


@pytest.mark.parametrize(
    "value", [None, "", "soon", "-5", "1.5", "+5", "Wed, 21 Oct 2015 07:19:00 GMT", "Wed, 99 Foo"]
)
def test_absent_malformed_or_past_retry_after_is_none(core, value):
    assert core.webhooks.parse_retry_after(value, 1_445_412_000.0) is None


@PROP
@given(now=st.integers(0, 2**33), wait=st.integers(0, 10 * 86_400))
def test_retry_after_both_forms_agree(core, now, wait):
    date = email.utils.formatdate(now + wait, usegmt=True)
    expected = min(wait, 7 * 86_400)
    assert core.webhooks.parse_retry_after(date, float(now)) == expected
    assert core.webhooks.parse_retry_after(str(wait), now) == expected


# ---- subscriptions ------------------------------------------------------------------------


def test_event_types_are_api_mds_payment_refund_checkout_and_billing_events(core):
    assert core.webhooks.EVENT_TYPES == (
        "payment.authorized",
        "payment.declined",
        "payment.failed",
        "payment.captured",
        "payment.voided",
        "payment.canceled",
        "payment.expired",
        "refund.succeeded",
        "checkout.session.completed",
        "checkout.session.expired",
        "customer.created",
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
        "invoice.paid",
        "invoice.payment_failed",
    )


def test_subscribed_by_exact_type_or_wildcard(core):
    subscribed = core.webhooks.subscribed
    assert subscribed(["*"], "payment.captured")
    assert subscribed(("payment.captured",), "payment.captured")
    assert not subscribed(["payment.captured"], "payment.voided")
    assert not subscribed(["payment.*"], "payment.captured")  # no prefix patterns
    assert not subscribed([], "payment.captured")
    assert not subscribed(["Payment.Captured"], "payment.captured")


@PROP
@given(
    enabled=st.lists(
        st.sampled_from([*("payment.authorized", "refund.succeeded", "*")]), max_size=4
    ),
    event_type=st.sampled_from(("payment.authorized", "payment.captured", "refund.succeeded")),
)
def test_subscribed_is_membership_or_wildcard(core, enabled, event_type):
    assert core.webhooks.subscribed(enabled, event_type) == (
        "*" in enabled or event_type in enabled
    )


# ---- status classes -----------------------------------------------------------------------


@PROP
@given(st.integers(200, 599))
def test_an_answer_counts_under_its_class(core, status):
    assert core.webhooks.status_class(status, None) == f"{status // 100}xx"


def test_no_answer_counts_under_its_error_kind(core):
    status_class = core.webhooks.status_class
    assert status_class(None, "timeout") == "timeout"
    assert status_class(None, "timeout: no answer within 15 s") == "timeout"
    assert status_class(None, "refused_address: 10.0.0.1 is private") == "refused_address"
    assert status_class(None, "connection_error: connection refused") == "connection_error"
    assert status_class(None, "ssl: certificate verify failed") == "connection_error"
    assert status_class(None, None) == "connection_error"
    assert status_class(404, "timeout") == "4xx"  # an answer wins


@PROP
@given(
    st.one_of(st.none(), st.integers(-(2**70), 2**70)), st.one_of(st.none(), st.text(max_size=40))
)
def test_the_status_class_is_always_a_bounded_label(core, status, error):
    assert core.webhooks.status_class(status, error) in core.webhooks.STATUS_CLASSES
