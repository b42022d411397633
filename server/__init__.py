"""The federation server, in five packages, imported top-down only (checked by ``lint-imports``):

- ``console``  the admin's ``fl-server``: menu, dialogs, subcommands, views, statistics, monitor
- ``history``  the analyst's read-only ``fl-history``: queries, views, plots, export, browser
- ``sessions`` one Flower FedProx session per approval: manager, process, admission,
  strategies (plain and secure), update validation, version merge, v0
- ``socket``   the request socket sites talk to: framing, handlers, caches, rate limits
- ``store``    all shared state (database, versions folder, audit chain) behind ``Store``

console > history > sessions | socket > store > shared. The server never imports ``client``.
"""
