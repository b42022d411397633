"""Process entry of one session: ``python -m server.sessions.process SESSION_ID --port PORT``.

The session manager spawns one such process per approved session so that sessions run side by
side and a crash in one cannot take the request socket or another session down.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("session_id", type=int)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default=None, help="bind address (default: settings.session_host)")
    args = parser.parse_args(argv)

    # Flower's TensorBoard helper imports TensorFlow (2+ s) although a session never trains;
    # blocking it keeps approval-to-listening well under the 3 s target.
    sys.modules.setdefault("tensorflow", None)  # type: ignore[arg-type]

    from server.sessions.runtime import run_session
    from server.store import Store
    from server.store.file_modes import restrict_umask
    from shared.errors import FLError
    from shared.logging_setup import configure_logging
    from shared.settings import load_settings
    from shared.tls import require_tls_beyond_loopback, server_tls

    settings = load_settings()
    restrict_umask(settings)  # whoever started it: the session's files are state files too
    configure_logging(settings.log_level)
    host = args.host or settings.session_host
    store = Store.open(settings)
    try:
        tls = server_tls(settings)
        require_tls_beyond_loopback(host, tls, settings.insecure, f"session {args.session_id}'s Flower server")
        certificates = tls.flower_certificates() if tls is not None else None
        run_session(store, args.session_id, port=args.port, host=host, certificates=certificates)
    except FLError as exc:
        print(f"session {args.session_id} failed: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
