"""Errors in OpenAI's envelope: `{"error": {"message", "type", "param", "code"}}` with the right status.

Every failure a client can cause is an `APIError` (or a `ValueError` from the library, which is bad input
by the library's contract) and becomes a 4xx; FastAPI's own validation errors become 400 naming the
field. Only a bug is a 500, and its message says nothing about the request. Messages never echo a
payload (an image or a key): the library's messages name values, which for images means sizes only.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("nexusgen.serve")

MAX_MESSAGE_CHARS = 500
"""Longest error message sent back (a library message could quote a long prompt)."""

TYPES = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error",
         503: "service_unavailable_error"}
"""OpenAI error types that differ from the fallback (other 4xx: invalid_request_error, 5xx: server_error)."""


class APIError(Exception):
    """A request that cannot be served, with its HTTP status and OpenAI error fields.

    Args:
        status: HTTP status (4xx for the client's mistakes, 429 queue full, 503 draining/deadline).
        message: one human-readable line.
        param: the request field at fault, or None.
        code: a short machine-readable reason, e.g. "invalid_size", "queue_full".
        headers: extra response headers (e.g. Retry-After).
    """

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    @property
    def type(self) -> str:
        return TYPES.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")


def error_body(err: APIError) -> dict:
    message = err.message if len(err.message) <= MAX_MESSAGE_CHARS else err.message[:MAX_MESSAGE_CHARS] + "..."
    return {"error": {"message": message, "type": err.type, "param": err.param, "code": err.code}}


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(error_body(err), status_code=err.status, headers=err.headers)


def bad_request(message: str, param: str | None = None, code: str = "invalid_request") -> APIError:
    return APIError(400, message, param=param, code=code)


def validation_error(err: RequestValidationError | ValidationError) -> APIError:
    """FastAPI / pydantic validation -> 400 naming the first bad field (OpenAI answers 400, not 422)."""
    first = err.errors()[0] if err.errors() else {}
    location = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    param = ".".join(location) or None
    kind = first.get("type", "")
    if kind == "json_invalid":
        return bad_request("the request body is not valid JSON", None, "invalid_json")
    if kind == "extra_forbidden":
        return bad_request(f"unrecognized request argument supplied: {param}", param, "unknown_parameter")
    if kind == "missing":
        return bad_request(f"missing required parameter: {param}", param, "missing_required_parameter")
    message = first.get("msg", "invalid value")
    return bad_request(f"{param}: {message}" if param else message, param, "invalid_value")


def install_error_handlers(app: FastAPI, metrics) -> None:
    """Route every exception through the envelope (and count it by kind in `metrics`)."""

    async def on_api_error(request: Request, err: APIError):
        metrics.error(err.code or err.type)
        return error_response(err)

    async def on_validation(request: Request, err: RequestValidationError):
        return await on_api_error(request, validation_error(err))

    async def on_http(request: Request, err: StarletteHTTPException):
        if isinstance(err.__cause__, APIError):  # e.g. the body limit, raised while FastAPI read the body
            return await on_api_error(request, err.__cause__)
        status = err.status_code
        code = {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")
        return await on_api_error(request, APIError(status, str(err.detail), code=code,
                                                    headers=dict(err.headers or {})))

    async def on_value_error(request: Request, err: ValueError):
        # the library's contract: ValueError = the input is wrong
        return await on_api_error(request, bad_request(str(err), None, "invalid_value"))

    async def on_bug(request: Request, err: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)  # the path, never the body
        metrics.error("internal_error")
        return error_response(APIError(500, "internal server error", code="internal_error"))

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(ValueError, on_value_error)
    app.add_exception_handler(Exception, on_bug)
