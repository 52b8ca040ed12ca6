"""What Kassa answers: API.md's error model (every non-2xx answer is an ``ApiError``, never
a traceback), the ``Answer`` a POST gives and the idempotency store replays, and the one
JSON helper every handler uses."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import orjson
from aiohttp import web

from core_ext.errors import CoreError
from gateway.ids import ISSUED_ID
from gateway.logs import scrub

TEXT_ECHOED_CHARS_MAX = 200
BODY_BYTES_MAX = 64 * 1024  # API.md: larger request bodies answer 413
KEY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
KEY_CHARS_MAX = 255
JSON = "application/json"


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        type: str,
        code: str,
        message: str,
        *,
        param: str | None = None,
        decline_code: str | None = None,
        payment_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.code = code
        self.message = message
        self.param = param
        self.decline_code = decline_code
        self.payment_id = payment_id
        self.headers = dict(headers or {})

    @classmethod
    def from_core(cls, error: CoreError) -> ApiError:
        return cls(error.status, error.type, error.code, error.message, param=error.param)

    def body(self) -> bytes:
        # The one place every error body is built: ``message`` and ``param`` may quote
        # client text (an unknown field's name, a query key, a path), so a card number in
        # it is scrubbed here, whoever raised the error (API.md: no answer contains one).
        return orjson.dumps(
            {
                "error": {
                    "type": self.type,
                    "code": self.code,
                    "message": scrub(self.message),
                    "param": None if self.param is None else scrub(self.param),
                    "decline_code": self.decline_code,
                    "payment_id": self.payment_id,
                }
            }
        )

    def response(self) -> web.Response:
        return web.Response(
            status=self.status,
            body=self.body(),
            content_type="application/json",
            headers=self.headers,
        )


def invalid_request(
    code: str, message: str, param: str | None = None, status: int = 400
) -> ApiError:
    return ApiError(status, "invalid_request_error", code, message, param=param)


def resource_missing(kind: str, object_id: str, param: str = "id") -> ApiError:
    # The id is echoed only when it has the shape of ours: whatever else a client put in a
    # URL (a card number pasted by mistake, say) is never sent back.
    shown = f": '{object_id}'" if ISSUED_ID.fullmatch(object_id) else ""
    return ApiError(
        404,
        "invalid_request_error",
        "resource_missing",
        f"no such {kind}{shown}",
        param=param,
    )


def untrusted(text: str) -> str:
    """Client text safe to quote in an error message: card numbers and keys scrubbed,
    length bounded."""
    return scrub(text[:TEXT_ECHOED_CHARS_MAX])


def api_error(status: int, code: str, message: str, **extra: object) -> ApiError:
    return ApiError(status, "api_error", code, message, **extra)  # type: ignore[arg-type]


def json_response(payload: object, status: int = 200) -> web.Response:
    """The one way a handler turns a rendered object into an HTTP answer."""
    return web.Response(body=orjson.dumps(payload), status=status, content_type=JSON)


@dataclass
class Answer:
    """One HTTP answer, as given and as stored for replays."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    # False for answers about the key itself (in use, reused): never stored or cached.
    storable: bool = True

    @classmethod
    def of_error(cls, error: ApiError) -> Answer:
        return cls(error.status, error.body(), dict(error.headers))

    @classmethod
    def of_json(cls, status: int, payload: object) -> Answer:
        return cls(status, orjson.dumps(payload))

    def response(self) -> web.Response:
        return web.Response(
            status=self.status, body=self.body, headers=self.headers, content_type=JSON
        )


def replayed(status: int, body: bytes) -> Answer:
    return Answer(status, bytes(body), {REPLAYED_HEADER: "true"})


def _about_the_key(status: int, code: str, message: str) -> Answer:
    """An answer about the key itself: never stored or cached (``storable`` False)."""
    answer = Answer.of_error(ApiError(status, "idempotency_error", code, message))
    answer.storable = False
    return answer


def key_in_use() -> Answer:
    return _about_the_key(
        409,
        "idempotency_key_in_use",
        "a request with this Idempotency-Key is still in progress; retry later",
    )


def key_reused() -> Answer:
    return _about_the_key(
        422, "idempotency_key_reused", "this Idempotency-Key was used with a different request"
    )
