"""The request socket: length-prefixed JSON frames from sites, checked against the one schema in
``shared.protocol``, answered by ``handlers`` over the store.

Owns the connection lifecycle (``request_socket``), who gets a connection slot and for how long
(``connection_slots``), how outcomes become error codes (``replies``), token checks cached per
connection (``auth_cache``), short-lived read caches (``read_cache``) and rate limits
(``rate_limits``).
May import ``store`` and ``shared`` only.
"""
