"""The analysts' dashboard (``fl-history web``): the history's views in a browser.

Owns: the FastAPI app (``app``), its access rules (``access``: loopback without a token, any
other bind behind TLS and an analyst token), its error pages (``errors``), the HTML pages
(``pages``) and their JSON twins under ``/api`` (``api``), the response shapes both share
(``schemas``), the Plotly charts (``charts``), and starting uvicorn (``serve``).

Every number comes from ``server.history.queries`` over a store opened read-only, exactly as
``fl-history`` opens it, so the terminal and the browser never disagree; nothing here queries
the database itself or writes. Site-supplied text is only ever rendered through Jinja's
autoescaping or ``textContent``. May import ``server.history``, ``server.store`` and ``shared``.
"""
