"""Error pages and their JSON twins: what went wrong and what to do, never a traceback.

Unknown version or session: 404. Bad query or path parameters: 422 naming the parameter.
A store that is briefly locked: the request is run again after a short wait, and only a lock
that outlasts the retries becomes a 503 "try again" (SQLite's own busy timeout waits first).
Anything unexpected: a 500 page that says it was logged; the traceback goes to the log only.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.history.web.templating import render
from shared.errors import AuthError, FLError, NotFoundError, UsageError

log = logging.getLogger(__name__)


def wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/") or request.url.path == "/openapi.json"


def error_response(request: Request, status: int, message: str, hint: str | None = None, *,
                   details: list[str] | None = None, headers: dict[str, str] | None = None) -> Response:
    """The error as JSON under ``/api`` and as a page elsewhere; both carry the hint."""
    if wants_json(request):
        body: dict[str, Any] = {"detail": message, "hint": hint or ""}
        if details:
            body["errors"] = details
        return JSONResponse(body, status_code=status, headers=headers)
    response = render(request, "error.html", status, status=status, title=HTTPStatus(status).phrase,
                      message=message, hint=hint or "", details=details or [])
    response.headers.update(headers or {})
    return response


def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        return error_response(request, 404, f"nothing at {request.url.path}",
                              "Start from the versions page; the menu lists every view.")
    return error_response(request, exc.status_code, str(exc.detail), headers=exc.headers)


def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    details = [f"{_where(error.get('loc', ()))}: {error.get('msg', 'invalid')}" for error in exc.errors()]
    return error_response(request, 422, "the request's parameters are not valid",
                          "Fix the named parameter; versions and sessions are numbers like 3.", details=details)


def _where(loc: tuple[Any, ...] | list[Any]) -> str:
    kinds = {"query": "query parameter", "path": "path parameter"}
    if len(loc) >= 2 and loc[0] in kinds:
        return f"{kinds[loc[0]]} '{'.'.join(str(part) for part in loc[1:])}'"
    return ".".join(str(part) for part in loc) or "request"


def _fl_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, FLError)
    status = 404 if isinstance(exc, NotFoundError) else 422 if isinstance(exc, UsageError) else (
        401 if isinstance(exc, AuthError) else 500)
    if status == 500:
        log.error("dashboard request %s failed: %s", request.url.path, exc)
    hint = exc.hint or ("The versions and sessions pages list the numbers that exist." if status == 404 else "")
    return error_response(request, status, str(exc), hint)


def _server_error(request: Request, exc: Exception) -> Response:
    log.error("dashboard request %s failed", request.url.path, exc_info=exc)
    return error_response(request, 500, "the dashboard hit an unexpected error; the details are in its log",
                          "Try again; if it persists, ask the admin to look at the fl-history web log.")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(FLError, _fl_error)
    app.add_exception_handler(Exception, _server_error)


def is_locked(exc: BaseException) -> bool:
    """SQLite's "database is locked" / "busy" (another process holds a lock for now)."""
    text = str(getattr(exc, "orig", exc)).lower()
    return isinstance(exc, OperationalError) and ("locked" in text or "busy" in text)


class LockedStoreRetry:
    """Runs a GET again when the store was locked before any byte of the answer went out."""

    def __init__(self, app: ASGIApp, *, waits_s: tuple[float, ...] = (0.2, 0.5, 1.0)) -> None:
        self.app = app
        self.waits_s = waits_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        for wait in (*self.waits_s, None):
            started = False

            async def tracked(message: Message) -> None:
                nonlocal started
                started = True
                await send(message)

            try:
                await self.app(scope, receive, tracked)
                return
            except OperationalError as exc:
                if started or not is_locked(exc):
                    raise
                if wait is None:
                    log.warning("store still locked after %d tries: %s", len(self.waits_s) + 1, exc.orig)
                    break
                await anyio.sleep(wait)
        response = error_response(Request(scope), 503, "the store is busy (locked by another process) right now",
                                  "Try again in a few seconds.", headers={"Retry-After": "5"})
        await response(scope, receive, send)
