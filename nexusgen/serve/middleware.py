"""ASGI middleware of the server (plain ASGI, so streaming and disconnect detection keep working).

* `RequestMetrics`: counts every response by endpoint and status, with its latency.
* `BodyLimit`: refuses a body over `max_request_bytes` with 413: from Content-Length before reading a
  byte, or while a chunked body streams in.
* `ApiKey`: with a key set, every route but `/health` and the static page `/` needs
  `Authorization: Bearer KEY` (compared in constant time); the page holds no data and sends the key the
  user types with each API call it makes.
"""

from __future__ import annotations

import hmac
import json
import time

from nexusgen.serve.errors import APIError, error_body

PUBLIC_PATHS = ("/health", "/")
ENDPOINTS = ("/v1/chat/completions", "/v1/images/generations", "/v1/images/edits", "/v1/models", "/health",
             "/ready", "/metrics", "/")


async def send_error(send, err: APIError, metrics=None) -> None:
    """Send `err` as a complete JSON response from middleware."""
    if metrics is not None:
        metrics.error(err.code or err.type)
    body = json.dumps(error_body(err)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestMetrics:
    def __init__(self, app, metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), {"code": 500}

        async def send_status(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = scope["path"]
            endpoint = path if path in ENDPOINTS else "other"
            self.metrics.request(endpoint, status["code"], time.perf_counter() - started)


class BodyLimit:
    def __init__(self, app, max_bytes: int, metrics):
        self.app, self.max_bytes, self.metrics = app, max_bytes, metrics

    def too_large(self) -> APIError:
        return APIError(413, f"the request body is larger than the limit of {self.max_bytes} bytes",
                        code="request_too_large")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await send_error(send, self.too_large(), self.metrics)
        received = 0

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:  # reaches the app's error handler as a 413
                    raise self.too_large()
            return message

        await self.app(scope, counted_receive, send)


class ApiKey:
    def __init__(self, app, key: str, metrics):
        self.app, self.key, self.metrics = app, key.encode(), metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            return await self.app(scope, receive, send)
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, given = header.partition(b" ")
        if scheme.lower() != b"bearer" or not given.strip():
            return await send_error(send, APIError(401, "missing API key: send 'Authorization: Bearer KEY'",
                                                   code="missing_api_key",
                                                   headers={"WWW-Authenticate": "Bearer"}), self.metrics)
        if not hmac.compare_digest(given.strip(), self.key):
            return await send_error(send, APIError(401, "invalid API key", code="invalid_api_key",
                                                   headers={"WWW-Authenticate": "Bearer"}), self.metrics)
        await self.app(scope, receive, send)
