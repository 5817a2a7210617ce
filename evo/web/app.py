"""The FastAPI app: server-rendered pages and the JSON API (`/api/...`, schema at /openapi.json).

Reads are open; writes need `Authorization: Bearer <EVO_API_TOKEN>`. Every API error is
JSON `{"error": "..."}` with the matching status code; pages show the same message as HTML.
"""
from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import Iterator

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import Undefined
from sqlalchemy.orm import Session, sessionmaker
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")


def _missing(v) -> bool:
    # Undefined: a key absent from a stored JSON dict (timings written by an older harness).
    return v is None or isinstance(v, Undefined)


def _speedup(v: float | None) -> str:
    return "—" if _missing(v) else f"{v:.2f}×"


def _percent(v: float | None) -> str:
    return "—" if _missing(v) else f"{v:.0%}"


def _ms(v: float | None) -> str:
    return "—" if _missing(v) else f"{v:.4g} ms"


def _date(v) -> str:
    return "—" if _missing(v) else v.strftime("%Y-%m-%d %H:%M")


templates.env.filters.update(speedup=_speedup, percent=_percent, ms=_ms, date=_date)


def get_session(request: Request) -> Iterator[Session]:
    session = request.app.state.session_factory()
    try:
        yield session
    finally:
        session.close()


_bearer = HTTPBearer(auto_error=False, description="EVO_API_TOKEN of the server")


def check_token(request: Request, token: str | None) -> None:
    """401 without a token, 403 with a wrong one, 403 when the server has none (writes off)."""
    expected = request.app.state.api_token
    if not expected:
        raise HTTPException(403, "writes are disabled: the server has no EVO_API_TOKEN configured")
    if not token:
        raise HTTPException(401, "this endpoint needs 'Authorization: Bearer <EVO_API_TOKEN>'",
                            headers={"WWW-Authenticate": "Bearer"})
    if not secrets.compare_digest(token.encode(), expected.encode()):
        raise HTTPException(403, "invalid API token")


def require_token(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
    check_token(request, credentials.credentials if credentials else None)


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/") or request.url.path == "/api"


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def error_response(request: Request, status: int, message: str, headers: dict | None = None):
    if _is_api(request):
        return JSONResponse({"error": message}, status_code=status, headers=headers)
    return templates.TemplateResponse(request, "error.html", {"status": status, "message": message},
                                      status_code=status, headers=headers)


def allowed_methods(request: Request) -> str:
    """All methods of the path: Starlette's 405 names only those of the first route that matched
    it (GET /api/jobs and POST /api/jobs are two routes)."""
    methods = set()
    for route in request.app.routes:
        if isinstance(route, Route) and route.methods and route.matches(request.scope)[0] != Match.NONE:
            methods |= route.methods
    return ", ".join(sorted(methods))


def create_app(session_factory: sessionmaker[Session] | None = None, api_token: str | None = None,
               broker_url: str | None = None) -> FastAPI:
    """`session_factory` defaults to the configured database (EVO_DATABASE_URL), `api_token`
    to EVO_API_TOKEN (with none the API is read-only), `broker_url` to EVO_BROKER_URL (with
    none, submitted jobs stay queued). An empty string means none, whatever the environment."""
    from evo.web import api, pages  # the routers import this module's helpers

    if session_factory is None:
        from db.session import get_sessionmaker
        session_factory = get_sessionmaker()
    app = FastAPI(title="evo", version="1", summary="Evolutionary GPU-kernel optimization: jobs, leaderboard, candidates.")
    app.state.session_factory = session_factory
    app.state.api_token = (api_token if api_token is not None else os.environ.get("EVO_API_TOKEN")) or None
    app.state.broker_url = (broker_url if broker_url is not None else os.environ.get("EVO_BROKER_URL")) or None
    app.state.celery = None  # made on the first submit (evo.web.api.producer)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        message, headers = str(exc.detail), getattr(exc, "headers", None)
        if exc.status_code in (404, 405) and message in ("Not Found", "Method Not Allowed"):  # from routing
            message = f"{message.lower()}: {request.method} {request.url.path}"
        if exc.status_code == 400 and message == "There was an error parsing the body":  # FastAPI's words
            message = "the request body could not be read: send JSON in UTF-8"
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": allowed_methods(request)}
        return error_response(request, exc.status_code, message, headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return error_response(request, 422, _validation_message(exc))

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(request, 500, f"internal server error: {type(exc).__name__}")

    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.include_router(api.router)
    app.include_router(pages.router)
    return app
