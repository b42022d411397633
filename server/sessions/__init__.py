"""Training sessions: one Flower FedProx server process per approval.

``manager`` plans every site's DP schedule (``privacy_plan``), has the store charge it, takes a
port, spawns ``python -m server.sessions.process ID`` in its own process
group and settles it when it ends; ``runtime`` runs the Flower server inside that process
(``grpc_listener``: Flower's servicer, told each peer's address, messages capped to the model) with
``admission`` (only sites that prove their per-session secret join), the strategies
(``fedprox``: validate and combine by the session's ``aggregation_rule``; ``secure_fedprox``
with ``secure_aggregation``: only the masked sum), ``update_validation`` and the staleness
``merge`` of a result into a head that moved (done here, so a secure session scores the merged
weights before it commits them). ``initial_model`` builds v0 from the classifier in ``shared``.

May import ``store`` and ``shared``; never ``socket``, ``console``, ``history`` or ``client``.
"""
