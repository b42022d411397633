"""The analyst's read-only view of the store (``fl-history``): queries over versions, rounds,
sites and privacy (``queries``), their renderings (``views``, ``version_views`` and the server's
privacy ledger in ``privacy_views``, shared with the admin console), plots, CSV/JSON export and
the interactive browser.

Opens the store read-only and never writes. May import ``store`` and ``shared`` only.
"""
