"""Everything that crosses the network from a site: the request-socket client (``socket_client``),
the Flower client that trains and reports (``flower_client``), the runner that waits for an
approval and joins the session (``session_runner``) and secure aggregation's masking
(``secure_aggregation``).

May import ``training``, ``site_profile`` and ``shared``; never ``menu``.
"""
