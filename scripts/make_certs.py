"""Make a federation CA and a server certificate for TLS on the request socket and Flower sessions,
or issue one site's client certificate for mutual TLS.

    python -m scripts.make_certs --out var/certs --host fl.hospital-net.example --ip 10.0.0.5
    python -m scripts.make_certs --out var/certs --site north

The first writes ``ca.pem`` (give it to every site), ``ca.key`` (keep offline), ``server.pem`` and
``server.key`` (the server's; set FL_TLS_CERT, FL_TLS_KEY and FL_TLS_CA). The second signs
``sites/north.pem`` and ``sites/north.key`` with that CA (give both to that site only; the
server then sets FL_TLS_CLIENT_AUTH=1). The certificates themselves are made in
``shared.certificates``; private keys are always written 0600.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.certificates import CertificateFiles, issue_site_certificate, make_certs
from shared.errors import FLError

__all__ = ["CertificateFiles", "main", "make_certs"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Make a federation CA and server certificate, "
                                     "or a site's client certificate (--site).")
    parser.add_argument("--out", type=Path, default=Path("var/certs"))
    parser.add_argument("--host", action="append", default=[], help="DNS name of the server (repeatable)")
    parser.add_argument("--ip", action="append", default=[], help="IP address of the server (repeatable)")
    parser.add_argument("--site", help="issue a client certificate for this enrolled site with the CA in --out")
    parser.add_argument("--days", type=int, default=825)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.site:
            site = issue_site_certificate(args.out, args.site, days=args.days, force=args.force)
            print(f"site certificate {site.cert} and key {site.key}: give both to {args.site} only")
            print(f"the site runs: fl-client --site {args.site} setup ... --tls-cert {site.cert} --tls-key {site.key}")
            return 0
        files = make_certs(args.out, hosts=args.host, ips=args.ip, days=args.days, force=args.force)
    except (FLError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"CA certificate {files.ca_cert} (give to every site), CA key {files.ca_key} (keep offline)")
    print(f"server certificate {files.server_cert} and key {files.server_key}")
    print(f"set FL_TLS_CA={files.ca_cert} FL_TLS_CERT={files.server_cert} FL_TLS_KEY={files.server_key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
