"""Who may read the dashboard, decided by where it listens.

On loopback (the default) only people on the server host can connect, and they are trusted, so
no token is asked; the Host header must still name loopback, so a web page elsewhere cannot
reach the dashboard through DNS rebinding. Any other bind needs TLS (the server's certificates,
FL_TLS_CERT / FL_TLS_KEY) and an analyst token the admin created with ``fl-server analyst-token``:
sent as ``Authorization: Bearer TOKEN`` by scripts, or entered once on ``/login`` by a browser,
which then keeps it in an HttpOnly, Secure, SameSite=Strict cookie.

A token is checked with scrypt once, then only whether it was revoked (one indexed read), so
revoking bites on the next request. Failed checks are rate-limited per client address, which
caps both guessing and the scrypt work a stranger can cause.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Request
from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from starlette.concurrency import run_in_threadpool
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.responses import RedirectResponse, Response

from server.history.web.errors import error_response
from server.history.web.templating import render
from server.store import Store
from shared.errors import AuthError, ConfigError, FLError, ServerBusy
from shared.tls import is_loopback

COOKIE = "fl_analyst"
COOKIE_MAX_AGE_S = 8 * 3600
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
_PUBLIC = ("/static/", "/login", "/favicon.ico")
_MAX_FORM_BYTES = 4096
_TOKEN_HINT = "Ask the admin for a dashboard token (fl-server analyst-token create NAME)."


@dataclass(frozen=True)
class AccessPolicy:
    """``token_required`` off loopback; ``allowed_hosts`` are the Host headers accepted."""

    token_required: bool
    allowed_hosts: tuple[str, ...]
    https: bool

    @classmethod
    def for_bind(cls, host: str, *, tls: bool) -> AccessPolicy:
        if is_loopback(host):
            return cls(token_required=False, allowed_hosts=LOOPBACK_HOSTS, https=tls)
        if not tls:
            raise ConfigError(
                f"the dashboard would listen on {host} without TLS: analyst tokens would cross the network in the clear",
                hint="Set FL_TLS_CERT and FL_TLS_KEY (the server's certificates from scripts/make_certs.py), "
                     "or keep the default --host 127.0.0.1.")
        return cls(token_required=True, allowed_hosts=("*",), https=True)


class AnalystGate:
    """Checks presented tokens: scrypt once per token, then a cheap revocation check per request."""

    def __init__(self, store: Store, *, failures: str = "20/minute") -> None:
        self._store = store
        self._verified: dict[str, int] = {}  # sha256(token) -> token id, for tokens scrypt accepted
        self._lock = threading.Lock()
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._failures = parse(failures)

    def check(self, token: str, client: str) -> int:
        """The token's id; AuthError when it is not an active analyst token, ServerBusy after many failures."""
        key = hashlib.sha256(token.encode("utf-8")).hexdigest()
        known = self._verified.get(key)
        if known is not None and self._store.analyst_token_active(known):
            return known
        if not self._limiter.test(self._failures, "auth", client):
            raise ServerBusy(f"too many failed token checks from {client}", hint="Wait a minute, then try again.")
        try:
            analyst = self._store.authenticate_analyst(token)
        except AuthError:
            self._limiter.hit(self._failures, "auth", client)
            with self._lock:
                self._verified.pop(key, None)
            raise
        with self._lock:
            if len(self._verified) >= 1024:
                self._verified.clear()
            self._verified[key] = analyst.id
        return analyst.id


class AccessMiddleware(BaseHTTPMiddleware):
    """Off loopback, every path but the login page and static files needs an active analyst token."""

    def __init__(self, app: object, policy: AccessPolicy, gate: AnalystGate) -> None:
        super().__init__(app)  # type: ignore[arg-type]
        self.policy, self.gate = policy, gate

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        if not self.policy.token_required or request.url.path.startswith(_PUBLIC):
            return await call_next(request)
        token = presented_token(request)
        if token is None:
            problem: FLError = AuthError("this dashboard needs an analyst token", hint=_TOKEN_HINT)
        else:
            try:
                await run_in_threadpool(self.gate.check, token, _client(request))
                return await call_next(request)
            except (AuthError, ServerBusy) as error:
                problem = error
        if not request.url.path.startswith(("/api/", "/openapi.json")) and request.method == "GET":
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?{urlencode({'next': target})}", status_code=303)
        status = 429 if isinstance(problem, ServerBusy) else 401
        return error_response(request, status, str(problem), problem.hint,
                              headers={"WWW-Authenticate": "Bearer"} if status == 401 else None)


def presented_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer " and header[7:].strip():
        return header[7:].strip()
    return request.cookies.get(COOKIE) or None


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _local_path(target: str | None) -> str:
    """Only a path on this dashboard (never ``//host`` or a URL): no open redirect after login."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    return target


router = APIRouter(include_in_schema=False)


@router.get("/login")
def login_page(request: Request, next: str = "/") -> Response:
    return render(request, "login.html", next=_local_path(next), problem=None, hint=None)


@router.post("/login")
async def login(request: Request) -> Response:
    body = await request.body()
    form = parse_qs(body[:_MAX_FORM_BYTES].decode("utf-8", "replace"), max_num_fields=4)
    token = (form.get("token") or [""])[0].strip()
    target = _local_path((form.get("next") or ["/"])[0])
    try:
        await run_in_threadpool(request.app.state.gate.check, token, _client(request))
    except (AuthError, ServerBusy) as error:
        status = 429 if isinstance(error, ServerBusy) else 401
        return render(request, "login.html", status, next=target, problem=str(error), hint=error.hint)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(COOKIE, token, max_age=COOKIE_MAX_AGE_S, httponly=True,
                        secure=request.app.state.policy.https, samesite="strict", path="/")
    return response


@router.get("/logout")
def logout() -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response
