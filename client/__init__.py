"""The hospital client, in three packages, imported top-down only (checked by ``lint-imports``):

- ``menu``        the staff's ``fl-client``: menu, subcommands, views, training display, evaluation
- ``federation``  talking to the server: socket client, Flower client, session runner, secure
  aggregation
- ``training``    on the site's own images: data loading, DP training, privacy accounting and
  ledger, feature cache, model files, backbone pretraining

``site_profile`` (the site's settings file) sits below all three. The classifier itself is in
``shared.classifier``, so the server builds the same model. The client never imports ``server``.
"""
