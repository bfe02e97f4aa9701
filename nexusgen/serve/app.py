"""`create_app(model, settings)`: the FastAPI application, and `serve(...)`: run it with uvicorn.

Routes: the OpenAI-compatible model endpoints (`nexusgen.serve.routes`), `GET /v1/models`,
`GET /health` (liveness: the process and its worker thread are alive), `GET /ready` (readiness: the
model is loaded and the server accepts work; 503 while draining), `GET /metrics` (Prometheus) and the
web UI at `/` (one static HTML file that calls the same HTTP API, so it shares batching and limits).

Shutdown: on SIGTERM (or Ctrl-C) the server stops accepting work at once (`/ready` and new requests get
503, the listening socket closes), lets queued and running requests finish for up to
`shutdown_timeout_s`, stops the worker and exits 0.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from importlib import resources
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from nexusgen.serve.errors import APIError, install_error_handlers
from nexusgen.serve.metrics import CONTENT_TYPE, Metrics
from nexusgen.serve.middleware import ApiKey, BodyLimit, RequestMetrics
from nexusgen.serve.routes import router
from nexusgen.serve.settings import ServeSettings
from nexusgen.serve.worker import Worker

log = logging.getLogger("nexusgen.serve")


def served_name(model_name: str) -> str:
    """The id clients use: a bundled name as is, a folder by its last component."""
    return Path(model_name).name or model_name


def create_app(model, settings: ServeSettings | None = None, *, model_name: str | None = None) -> FastAPI:
    """The server application over a loaded `NexusGen`.

    Args:
        model: the `NexusGen` to serve (its worker thread starts with the app).
        settings: limits and batching (default `ServeSettings()`).
        model_name: the id of the model in the API (default from `model.name`).
    """
    settings = settings or ServeSettings()
    metrics = Metrics()
    worker = Worker(model, max_batch=settings.max_batch, max_wait_ms=settings.max_wait_ms,
                    max_queue=settings.max_queue, metrics=metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        worker.start()
        yield
        worker.close(settings.shutdown_timeout_s)

    app = FastAPI(title="nexusgen", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.model, app.state.settings, app.state.metrics, app.state.worker = model, settings, metrics, worker
    app.state.model_name = model_name or served_name(model.name)
    app.state.created = int(time.time())
    install_error_handlers(app, metrics)
    app.include_router(router)
    _add_service_routes(app)
    if settings.api_key:
        app.add_middleware(ApiKey, key=settings.api_key, metrics=metrics)
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes, metrics=metrics)
    app.add_middleware(RequestMetrics, metrics=metrics)  # outermost: counts 401s and 413s too
    return app


def _add_service_routes(app: FastAPI) -> None:
    @app.get("/health")
    async def health(request: Request):
        if not request.app.state.worker.thread.is_alive():
            raise APIError(503, "the model worker is not running", code="worker_dead")
        return {"status": "ok"}

    @app.get("/ready")
    async def ready(request: Request):
        worker = request.app.state.worker
        if not worker.accepting:
            raise APIError(503, "the server is shutting down", code="shutting_down", headers={"Retry-After": "5"})
        if not worker.thread.is_alive():
            raise APIError(503, "the model worker is not running", code="worker_dead")
        return {"status": "ready", "model": request.app.state.model_name, "queue_depth": worker.depth}

    @app.get("/metrics")
    async def metrics(request: Request):
        return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models(request: Request):
        state = request.app.state
        return {"object": "list", "data": [{"id": state.model_name, "object": "model", "created": state.created,
                                            "owned_by": "nexusgen"}]}

    @app.get("/")
    async def index():
        page = resources.files("nexusgen.serve").joinpath("static/index.html").read_text(encoding="utf-8")
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    @app.get("/favicon.ico")
    async def favicon():
        return JSONResponse(None, status_code=204)


def serve(model, settings: ServeSettings, *, host: str = "127.0.0.1", port: int = 8000,
          model_name: str | None = None, log_level: str = "info") -> None:
    """Run the server until SIGTERM / Ctrl-C, then drain (see the module docstring)."""
    app = create_app(model, settings, model_name=model_name)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=True,
                            timeout_graceful_shutdown=settings.shutdown_timeout_s, lifespan="on")
    DrainingServer(config, app.state.worker).run()


class DrainingServer(uvicorn.Server):
    """uvicorn's server, whose exit signal first turns the worker to draining (503 for new work)."""

    def __init__(self, config: uvicorn.Config, worker: Worker):
        super().__init__(config)
        self.worker = worker

    def handle_exit(self, sig, frame) -> None:
        self.worker.stop_accepting()
        super().handle_exit(sig, frame)
        captured = getattr(self, "_captured_signals", [])
        if sig == signal.SIGTERM and sig in captured:
            # uvicorn re-raises a captured signal after its graceful shutdown, so the process would die of
            # SIGTERM after draining; a drained SIGTERM is a clean stop: exit 0
            captured.remove(sig)
