"""The dashboard's FastAPI app: routes, access rules, error pages and security headers, wired once.

``create_app`` takes a store the caller opened read-only (as ``fl-history`` opens it) and the
access policy for where it will listen. The OpenAPI docs at ``/docs`` use the Swagger UI files
that fastapi-offline ships, so they too work without internet.

Middleware, outermost first: the Host check (DNS rebinding), security headers (a CSP that
allows only this origin's scripts), the token gate, then the locked-store retry around the routes.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.middleware.base import RequestResponseEndpoint
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import Response

from server.history.web import access, api, pages
from server.history.web.access import AccessMiddleware, AccessPolicy, AnalystGate
from server.history.web.errors import LockedStoreRetry, install_error_handlers
from server.history.web.versions_cache import VersionsCache
from server.store import Store

STATIC_DIR = Path(__file__).parent / "static"
LOOPBACK_POLICY = AccessPolicy.for_bind("127.0.0.1", tls=False)

_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
# Swagger UI and ReDoc pages start with an inline script (FastAPI's own page template).
_DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
             "img-src 'self' data:; worker-src 'self' blob:; frame-ancestors 'none'; base-uri 'none'")
_DOCS_PATHS = ("/docs", "/redoc")


def create_app(store: Store, policy: AccessPolicy = LOOPBACK_POLICY) -> FastAPI:
    """The dashboard over ``store`` (opened read-only), guarded as ``policy`` says."""
    app = FastAPIOffline(title="FL model history", version="1",
                         description="Read-only view of versions, lineage, sessions, privacy and the audit log.")
    app.state.store = store
    app.state.policy = policy
    app.state.gate = AnalystGate(store)
    app.state.versions_cache = VersionsCache()
    app.include_router(api.router)
    app.include_router(access.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    install_error_handlers(app)
    app.add_middleware(LockedStoreRetry)
    app.add_middleware(AccessMiddleware, policy=policy, gate=app.state.gate)
    app.middleware("http")(_security_headers)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(policy.allowed_hosts))
    return app


async def _security_headers(request: Request, call_next: RequestResponseEndpoint) -> Response:
    response = await call_next(request)
    docs = request.url.path.startswith(_DOCS_PATHS)
    response.headers.setdefault("Content-Security-Policy", _DOCS_CSP if docs else _CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    if request.app.state.policy.https:
        response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    return response
