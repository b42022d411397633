"""Everything that crosses the network from a site: the request-socket client (``socket_client``),
the Flower client that trains and reports (``flower_client``), the runner that waits for an
approval and joins the session (``session_runner``) and secure aggregation: the wrapper that
masks what leaves the site (``secure_aggregation``), the per-round stages and checks
(``secagg_state``), and the site's identity key and its peers' (``site_identity``).

May import ``training``, ``site_profile`` and ``shared``; never ``menu``.
"""
