"""``churn serve``: the real-time scoring endpoint (issue 7), FastAPI over ``tasks.serving.online``, under uvicorn.

Thin: what is scored, flagged, logged and reloaded is decided in ``tasks/serving/online.py``; this module
maps it to HTTP.

* ``POST /predict`` ``{"subscriber_id": 42}``: features from the Feast online store, scored by
  the champion: probability, will-churn flag at the operating threshold, risk tier, reasons in
  words, model version and feature freshness (``stale: true`` past a view's TTL). 404 for a
  subscriber the store does not hold, 503 when the store cannot be read (Redis down: the
  next request after it is back succeeds, nothing restarts).
* ``POST /predict/features`` ``{"subscriber_id": 42, "features": {...}}``: the caller's feature
  values, checked against the feature views' contracts; 422 names every field that fails.
* ``GET /health``: model, alias, feature freshness; 200 when ready, 503 when not.
* ``GET /metrics``: Prometheus text (requests, latency histogram, errors, model version, log).

With ``CHURN_API_KEY`` set, both ``/predict`` routes need it in the ``X-API-Key`` header (401
otherwise); ``/health`` and ``/metrics`` stay open for probes and scrapers. One worker: the model,
the store connection and the log buffer live in this process. The handlers are ``async`` and
do their sub-millisecond work inline on the event loop (no thread hop); model checks and log
flushes run in background threads. On SIGINT/SIGTERM uvicorn stops accepting, lets in-flight
requests finish, and the lifespan's exit flushes the log buffer.

No ``from __future__ import annotations`` here: FastAPI reads the request models from the
annotations of handlers defined inside :func:`create_app`.
"""

import contextlib
import gc
import logging
import secrets
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from tasks.core.settings import Settings
from tasks.serving.metrics import OnlineMetrics
from tasks.serving.model import SubscriberRequest, features_request_model
from tasks.serving.online import OnlineService
from tasks.serving.reader import OnlineError, OnlineStoreUnavailable, UnknownSubscriber

logger = logging.getLogger(__name__)

API_KEY_HEADER = "X-API-Key"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class Freshness(BaseModel):
    source: str
    as_of: str | None
    age_seconds: float | None
    stale: bool
    stale_views: list[str]
    event_timestamps: dict[str, str | None]


class PredictionResponse(BaseModel):
    """The body of a successful ``/predict`` or ``/predict/features`` (documentation only)."""

    prediction_id: str
    subscriber_id: int
    scored_at: str
    probability: float
    will_churn: bool
    operating_threshold: float
    risk_tier: str
    reasons: list[str]
    model_name: str
    model_version: int
    feature_freshness: Freshness


class Problem(BaseModel):
    detail: str


class MetricsMiddleware:
    """Counts and times every HTTP request (plain ASGI: no per-request task or buffering)."""

    def __init__(self, app: Callable[..., Awaitable[None]], metrics: OnlineMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.metrics.observe(scope["path"], status, time.perf_counter() - began)


def _api_key_check(settings: Settings) -> Callable[..., Awaitable[None]]:
    expected = settings.api_key.get_secret_value().encode() if settings.api_key else b""
    header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False)

    async def require_api_key(key: str | None = Depends(header)) -> None:
        if key is None or not secrets.compare_digest(key.encode(), expected):
            raise HTTPException(
                401,
                f"missing or wrong API key: send it in the {API_KEY_HEADER} header",
                headers={"WWW-Authenticate": "ApiKey"},
            )

    return require_api_key


def _field(loc: tuple[Any, ...]) -> str:
    # ("body", "features", "plan") → "features.plan"; the body itself → "body".
    parts = [str(p) for p in loc[1:]] if loc and loc[0] == "body" else [str(p) for p in loc]
    return ".".join(parts) or "body"


def create_app(service: OnlineService) -> FastAPI:
    """The FastAPI app over ``service``; its lifespan starts and closes the service's threads."""
    settings = service.settings
    FeaturesRequest = features_request_model(service.reads)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            service.close()

    app = FastAPI(
        title="churn-ops real-time scoring",
        summary="Churn probability of a subscriber from the champion model and the Feast online store.",
        version="1",
        lifespan=lifespan,
    )
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
    # Without a key there is nothing to check: no dependency to solve on every request.
    auth = [Depends(_api_key_check(settings))] if settings.api_key else []
    errors: dict[int | str, dict[str, Any]] = {
        401: {"model": Problem, "description": f"{API_KEY_HEADER} missing or wrong"},
        422: {"description": "invalid request; every failing field named"},
    }

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {
                "field": _field(tuple(e.get("loc", ()))),
                "message": e.get("msg", ""),
                "type": e.get("type"),
            }
            for e in exc.errors()
        ]
        summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
        return JSONResponse(
            {"detail": f"invalid request: {summary}", "errors": problems}, status_code=422
        )

    @app.exception_handler(UnknownSubscriber)
    async def unknown(request: Request, exc: UnknownSubscriber) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(OnlineStoreUnavailable)
    async def unavailable(request: Request, exc: OnlineStoreUnavailable) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.post(
        "/predict",
        response_model=PredictionResponse,
        dependencies=auth,
        responses={**errors, 404: {"model": Problem}, 503: {"model": Problem}},
    )
    async def predict(body: SubscriberRequest) -> JSONResponse:
        """Score a subscriber on its features in the Feast online store."""
        subscriber = body.subscriber_id
        if subscriber is None:
            assert body.customer_key is not None  # the request model asks for one of the two
            subscriber = service.subscriber_of_key(body.customer_key)
        return JSONResponse(service.predict_subscriber(subscriber).to_dict())

    @app.post(
        "/predict/features",
        response_model=PredictionResponse,
        dependencies=auth,
        responses=errors,
    )
    async def predict_features(body: FeaturesRequest) -> JSONResponse:  # type: ignore[valid-type]
        """Score a subscriber on feature values given in the request."""
        values = body.features.model_dump()  # type: ignore[attr-defined]
        return JSONResponse(service.predict_values(body.subscriber_id, values).to_dict())  # type: ignore[attr-defined]

    @app.get("/health", responses={503: {"description": "not ready (reasons in `problems`)"}})
    async def health() -> JSONResponse:
        """Model version, alias, feature freshness, and whether the endpoint is ready."""
        report = service.health()
        return JSONResponse(report, status_code=200 if report["ready"] else 503)

    @app.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        """Prometheus metrics in the text exposition format."""
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def open_service(settings: Settings) -> OnlineService:
    """The service the server will run: store, feature service and champion, checked now.

    Raises:
        FeatureStoreError, NoChampion, ModelSignatureError, ModelLoadError: nothing to serve.
    """
    return OnlineService.open(settings)


def run_server(service: OnlineService, *, host: str, port: int, verbose: bool = False) -> None:
    """Serve ``service`` with uvicorn, one worker, until SIGINT/SIGTERM; return once it stopped.

    A stop waits for requests in flight (up to 30 s), then the lifespan's exit flushes the log.

    Raises:
        OnlineError: predictions were left unwritten (the last flush failed).
    """
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn re-raises SIGINT/SIGTERM once it has shut down gracefully (exit status
            # 130/143, "Aborted!" from the CLI); after a clean stop `churn serve` exits 0.
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            saved = {sig: signal.signal(sig, self.handle_exit) for sig in STOP_SIGNALS}
            try:
                yield
            finally:
                for sig, handler in saved.items():
                    signal.signal(sig, handler)

    config = uvicorn.Config(
        create_app(service),
        host=host,
        port=port,
        workers=1,
        lifespan="on",
        access_log=False,  # per-request log lines cost more than the scoring itself
        log_level="info" if verbose else "warning",
        timeout_graceful_shutdown=30,
    )
    # Everything loaded so far (Feast, MLflow, LightGBM, pandas …: some 400,000 objects) would be
    # walked by every full garbage collection, 0.1-0.35 s each on this machine, stalling every
    # request in flight. Frozen, they are left out; collections see only what requests allocate.
    gc.collect()
    gc.freeze()
    Server(config).run()
    if service.log.buffered:
        raise OnlineError(
            f"{service.log.buffered} online predictions could not be written to the prediction "
            f"log: {service.log.last_error or 'the last flush failed'}"
        )
