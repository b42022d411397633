"""The store: all shared state of the service, in one database and one versions folder.

Owns: the engine and its write lock (``engine``), the typed ORM models (``models``) and the
frozen records callers receive (``records``), the request/session state machines
(``lifecycle``), the keyed hash-chained audit log (``audit_chain``), site tokens (``tokens``),
the server key file and its sub-keys (``server_key``), session secrets derived from it
(``session_secrets``), the modes of state files (``file_modes``), the versions folder
(``weight_files``), and the ``Store`` facade (``facade``), composed of one class
per concern: ``sites``, ``requests``, ``sessions``, ``versions``, ``cleanup``,
``notifications``, ``audit``, the server's per-site ``privacy_ledger``, ``identity_keys`` (sites'
keys for secure aggregation).

May import: ``shared`` only. Everything above (socket, sessions, console, history) reaches the
database through ``Store``; nothing here knows about Flower, TensorFlow or the menus.
"""

from server.store.facade import Store

__all__ = ["Store"]
