"""Start the dashboard with uvicorn, after the access rules have approved where it listens.

Off loopback the server's TLS certificate and key are required (ConfigError otherwise) and at
least one analyst token should exist, or nobody could log in: say so before listening.
"""

from __future__ import annotations

import uvicorn
from rich.console import Console

from server.history.web.access import AccessPolicy
from server.history.web.app import create_app
from server.store import Store
from shared.settings import Settings


def dashboard_url(host: str, port: int, *, https: bool) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"{'https' if https else 'http'}://{shown}:{port}/"


def serve(store: Store, settings: Settings, out: Console, *, host: str, port: int) -> int:
    """Serve until Ctrl-C; the store must be the read-only one ``fl-history`` opened."""
    tls = settings.tls_cert is not None and settings.tls_key is not None
    policy = AccessPolicy.for_bind(host, tls=tls)
    if policy.token_required and not any(t.active for t in store.list_analyst_tokens()):
        out.print("no analyst token exists yet: nobody can log in until the admin runs "
                  "fl-server analyst-token create NAME", markup=False)
    tls_files = {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key)} if tls else {}
    out.print(f"dashboard on {dashboard_url(host, port, https=tls)} (read-only"
              + (", analyst token required" if policy.token_required else ", loopback only") + "). Ctrl-C stops.",
              markup=False, soft_wrap=True)
    uvicorn.run(create_app(store, policy), host=host, port=port, log_level="warning",
                server_header=False, proxy_headers=False, **tls_files)  # type: ignore[arg-type]
    return 0
