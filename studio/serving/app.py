"""The FastAPI application: routes, dependencies, one-line JSON errors, Prometheus metrics.

``create_app(config)`` builds an app whose worker (`studio.serving.service.Service`) starts with the app's lifespan
and is handed to each route as a dependency; nothing lives in module globals, so several apps (tests, workers) never
share state.
"""

from __future__ import annotations

import gc
import json
import os
import time
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, Header, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from studio import __version__
from studio.core.db import DatabaseError
from studio.core.errors import InputError, StudioError
from studio.serving.config import ServeConfig
from studio.serving.schemas import (ClickRequest, ClickResponse, DecisionQuery, DecisionRequest, DecisionResponse,
                                    ErrorResponse, Health, RefreshResponse, Report)
from studio.serving.service import AuthError, NotFoundError, Service, check_token

ERRORS = {400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}, 413: {"model": ErrorResponse},
          422: {"model": ErrorResponse}, 503: {"model": ErrorResponse}}
WRITE_ERRORS = {**ERRORS, 401: {"model": ErrorResponse}}
QUERY_FIELDS = frozenset(DecisionQuery.model_fields)


class Metrics:
    """The worker's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.decisions = Counter("studio_decisions", "creatives served", ["bucket"], registry=self.registry)
        self.clicks = Counter("studio_clicks", "new clicks recorded", registry=self.registry)
        self.learned = Counter("studio_rewards_learned", "rewards the bandit learned from the log",
                               registry=self.registry)
        self.errors = Counter("studio_errors", "requests answered with an error", ["status"], registry=self.registry)
        self.latency = Histogram("studio_request_seconds", "request latency", ["route"], registry=self.registry,
                                 buckets=(0.001, 0.002, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1.0))
        self.refresh = Histogram("studio_refresh_seconds", "catch-up step: database part and learning part",
                                 ["part"], registry=self.registry,
                                 buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))
        self.watermark = Gauge("studio_watermark", "event-log position the bandit has learned to",
                               registry=self.registry)


CONFIG_ENV = "STUDIO_SERVE_CONFIG"  # how `studio serve` hands the config to each uvicorn worker process
TOKEN_ENV = "STUDIO_API_TOKEN"


def app_from_environment() -> FastAPI:
    """The app factory uvicorn's worker processes call (``studio serve --workers N``)."""
    config = ServeConfig(**json.loads(os.environ[CONFIG_ENV]))
    config.token = os.environ.get(TOKEN_ENV) or None
    return create_app(config)


async def get_service(request: Request) -> Service:
    """The app's worker (started by the lifespan), injected into every route (async: FastAPI would run a plain
    function in its thread pool, a thread hop per request)."""
    return request.app.state.service


async def authorised(request: Request, authorization: Annotated[str | None, Header()] = None) -> None:
    """Write endpoints: the configured API token as ``Authorization: Bearer <token>``."""
    token = authorization[7:] if authorization and authorization.startswith("Bearer ") else None
    check_token(request.app.state.config, token)


Worker = Annotated[Service, Depends(get_service)]
Authorised = Depends(authorised)


def create_app(config: ServeConfig) -> FastAPI:
    """The service for `config`; the worker opens the log and the cache when the app starts."""
    config.check()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service = Service(config, metrics=metrics)
        await service.start()
        app.state.service = service
        # What is loaded by now lives as long as the worker: keep it out of the cyclic garbage collector, whose
        # full passes over it paused the worker for 50-100 ms (each one a latency spike).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()
            await service.stop()

    app = FastAPI(title="Creative Studio serving", version=__version__, lifespan=lifespan,
                  description="Picks a cached creative per request (LinUCB per audience group in the treatment "
                              "bucket, a control policy otherwise), logs impressions and clicks, learns online.")
    app.state.config, app.state.metrics = config, metrics
    _install_errors(app, metrics)
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)

    @app.get("/v1/creative", response_model=DecisionResponse, responses=ERRORS,
             openapi_extra={"parameters": DecisionQuery.openapi_parameters()})
    async def creative(request: Request):
        """Pick a creative for a user (features optional, as a JSON object in the query)."""
        # The query is checked here in one model (declared for OpenAPI above): FastAPI's per-parameter Query
        # handling cost ~60 us of CPU per decision when profiled, a quarter of the whole request.
        try:
            query = DecisionQuery.model_validate({key: value for key, value in request.query_params.items()
                                                  if key in QUERY_FIELDS})
        except ValidationError as error:
            raise RequestValidationError(error.errors()) from None
        try:
            parsed = json.loads(query.features) if query.features is not None else None
        except ValueError:
            raise InputError("features must be a JSON object, e.g. {\"age\": 34, \"region\": \"EU\"}") from None
        return await _decide(request.app.state.service, {"user_id": query.user_id, "product_id": query.product_id,
                                                         "placement": query.placement, "features": parsed})

    @app.post("/v1/creative", response_model=DecisionResponse, responses=ERRORS)
    async def creative_with_body(worker: Worker, body: DecisionRequest):
        """Pick a creative for a user, with the user's features in a JSON body."""
        return await _decide(worker, body)

    latency = metrics.latency.labels(route="creative")

    async def _decide(worker: Service, request) -> Response:
        started = time.perf_counter()
        if not isinstance(request, DecisionRequest):
            try:
                request = DecisionRequest.model_validate(request)
            except ValueError as error:
                raise InputError(_one_line_validation(error)) from None
        response = await worker.decide(request)
        # Serialised here: the model is built by the worker, so FastAPI's validation of the return value is redundant.
        body = Response(response.model_dump_json(), media_type="application/json")
        latency.observe(time.perf_counter() - started)
        return body

    @app.post("/v1/clicks", response_model=ClickResponse, responses=WRITE_ERRORS,
              dependencies=[Authorised])
    async def clicks(worker: Worker, body: ClickRequest):
        """Record clicks on served impressions; repeating a click is harmless (idempotent)."""
        return await worker.click(body.impression_ids)

    @app.get("/v1/creatives/{creative_id}.png", response_class=Response,
             responses={**ERRORS, 200: {"content": {"image/png": {}}, "description": "the creative's PNG"}})
    async def creative_png(worker: Worker, creative_id: Annotated[str, Path(max_length=128)]):
        """The creative's PNG, straight from the cache (the id must be a 64-hex content hash)."""
        return Response(await worker.creative_png(creative_id), media_type="image/png",
                        headers={"Cache-Control": "public, max-age=31536000, immutable"})

    @app.get("/v1/report", response_model=Report, responses=ERRORS)
    async def report(worker: Worker):
        """CTR per bucket and group, lift with its interval, and the treatment policy's off-policy value."""
        return await worker.report()

    @app.post("/v1/admin/refresh", response_model=RefreshResponse, responses=WRITE_ERRORS,
              dependencies=[Authorised])
    async def refresh(worker: Worker):
        """Catch up from the event log and re-read the cache now (workers also do it every sync interval)."""
        learned = await worker.refresh()
        return RefreshResponse(learned=learned, watermark=worker.watermark, cache_state=worker.cache_state)

    @app.post("/v1/admin/snapshot", response_model=Health, responses=WRITE_ERRORS,
              dependencies=[Authorised])
    async def snapshot(worker: Worker):
        """Write the bandit state snapshot now (atomically)."""
        if not worker.config.snapshot:
            raise InputError("no snapshot folder is configured; start the server with --snapshot DIR")
        await worker.snapshot()
        return worker.health()

    @app.get("/healthz", response_model=Health, responses=ERRORS)
    async def healthz(worker: Worker):
        return worker.health()

    @app.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}},
                                                                   "description": "Prometheus text format"}})
    async def prometheus():
        """Prometheus text format (this worker's counters)."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _install_errors(app: FastAPI, metrics: Metrics) -> None:
    """Every error is ``{"error": "<one line>"}`` with a 4xx status (a 503 when the database is away)."""

    def reply(status: int, message: str) -> JSONResponse:
        metrics.errors.labels(status=str(status)).inc()
        return JSONResponse({"error": " ".join(message.split())[:500]}, status_code=status)

    @app.exception_handler(StudioError)
    async def studio_error(request: Request, error: StudioError):
        if isinstance(error, AuthError):
            return reply(401, str(error))
        if isinstance(error, NotFoundError):
            return reply(404, str(error))
        if isinstance(error, DatabaseError):
            return reply(503, f"the event store is unavailable ({error}); retry")
        if isinstance(error, InputError):
            return reply(400 if "not a creative id" not in str(error) else 404, str(error))
        return reply(400, str(error))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        return reply(422, _one_line_validation(error))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        return reply(error.status_code, str(error.detail))


def _one_line_validation(error) -> str:
    """The first problem of a validation error, as one line: where, and what was wrong."""
    problems = error.errors()
    if not problems:
        return "invalid request"
    first = problems[0]
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "request"
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"invalid {where}: {first.get('msg', 'invalid value')}{more}"


class BodyLimit:
    """Refuse request bodies above `limit` bytes with 413 before they are read whole (declared or streamed)."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await _too_large(send, self.limit)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await _too_large(send, self.limit)


class _TooLarge(Exception):
    pass


async def _too_large(send, limit: int) -> None:
    body = json.dumps({"error": f"request body is larger than {limit} bytes"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
