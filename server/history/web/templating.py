"""The Jinja2 environment of the pages: autoescaping always on, and the number formats of ``fl-history``.

Autoescaping is forced for every template (not chosen by file extension), so site-supplied text
(notes, reasons, names) can only ever reach a page as text.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from fastapi.templating import Jinja2Templates
from starlette.requests import Request
from starlette.responses import Response

TEMPLATES_DIR = Path(__file__).parent / "templates"


def pct(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"


def num(value: float | None, fmt: str = ".4f") -> str:
    return "" if value is None else format(value, fmt)


def eps(value: float | None) -> str:
    """A missing epsilon in a privacy report means no finite guarantee (trained without noise)."""
    return "inf (no DP)" if value is None else f"{value:.3f}"


def when(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def versions(numbers: Iterable[int]) -> str:
    return ", ".join(f"v{n}" for n in numbers)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES_DIR), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(pct=pct, num=num, eps=eps, when=when, versions=versions)
    return env


templates = Jinja2Templates(env=_environment())


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
    """One page; every template also sees the access policy (to offer "log out")."""
    return templates.TemplateResponse(request, name, _with_policy(request, context), status_code=status_code)


def render_text(request: Request, name: str, **context: Any) -> str:
    """The page as text, for pages kept in a cache (see ``versions_cache``)."""
    return templates.get_template(name).render(request=request, **_with_policy(request, context))


def _with_policy(request: Request, context: dict[str, Any]) -> dict[str, Any]:
    policy = getattr(request.app.state, "policy", None)
    context.setdefault("token_required", bool(policy and policy.token_required))
    return context
