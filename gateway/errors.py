"""The API.md error model: every non-2xx answer is one of these, never a traceback."""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from aiohttp import web

from core_ext.errors import CoreError
from gateway.ids import ISSUED_ID

TEXT_ECHOED_CHARS_MAX = 200


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
        return orjson.dumps(
            {
                "error": {
                    "type": self.type,
                    "code": self.code,
                    "message": self.message,
                    "param": self.param,
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


def invalid_request(code: str, message: str, param: str | None = None, status: int = 400) -> ApiError:
    return ApiError(status, "invalid_request_error", code, message, param=param)


def resource_missing(kind: str, object_id: str, param: str = "id") -> ApiError:
    # The id is echoed only when it has the shape of ours: whatever else a client put in a
    # URL (a card number pasted by mistake, say) is never sent back.
    shown = f": '{object_id}'" if ISSUED_ID.fullmatch(object_id) else ""
    return ApiError(
        404, "invalid_request_error", "resource_missing", f"no such {kind}{shown}",
        param=param,
    )


def untrusted(text: str) -> str:
    """Client text safe to quote in an error message: card numbers and keys scrubbed,
    length bounded."""
    from gateway.logs import scrub

    return scrub(text[:TEXT_ECHOED_CHARS_MAX])


def api_error(status: int, code: str, message: str, **extra: object) -> ApiError:
    return ApiError(status, "api_error", code, message, **extra)  # type: ignore[arg-type]
