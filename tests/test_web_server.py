"""``fl-history web`` as people start it: a real uvicorn process on a real port, plain on loopback,
TLS with the server's certificates and an analyst token anywhere else."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from scripts.make_certs import make_certs
from server.store import Store
from shared.listening import wait_until_listening
from shared.settings import Settings
from tests.flower_fakes import free_port
from tests.web_history import build_history

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return build_history(tmp_path_factory.mktemp("web-server") / "home")


@contextmanager
def fl_history_web(home: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[int]:
    """Run ``fl-history --home HOME web ARGS --port P`` until the block ends; yields the port."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "server.history.cli", "--home", str(home), "web", *args, "--port", str(port)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until_listening("127.0.0.1", port, timeout_s=60)
        yield port
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
        assert process.returncode == 0, output
        assert "Traceback" not in output, output


def get(url: str, *, context: ssl.SSLContext | None = None, token: str | None = None) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), context=context, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_on_loopback_it_serves_pages_and_json_without_a_token(history: Settings) -> None:
    with fl_history_web(history.home) as port:
        status, page = get(f"http://127.0.0.1:{port}/versions")
        assert status == 200 and b'<a href="/versions/3">v3</a>' in page
        status, body = get(f"http://127.0.0.1:{port}/api/versions/3")
        assert status == 200 and json.loads(body)["version"]["kind"] == "merge"


def test_elsewhere_it_speaks_tls_and_wants_an_analyst_token(history: Settings, tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs", hosts=[], ips=[])
    admin = Store.open(history)
    try:
        _, token = admin.create_analyst_token("ana")
    finally:
        admin.close()
    env = {"FL_TLS_CERT": str(certs.server_cert), "FL_TLS_KEY": str(certs.server_key)}
    trusting = ssl.create_default_context(cafile=str(certs.ca_cert))
    with fl_history_web(history.home, "--host", "0.0.0.0", env=env) as port:
        status, body = get(f"https://127.0.0.1:{port}/api/versions", context=trusting)
        assert status == 401 and "analyst-token" in json.loads(body)["hint"]
        status, body = get(f"https://127.0.0.1:{port}/api/versions", context=trusting, token=token)
        assert status == 200 and [v["number"] for v in json.loads(body)] == [0, 1, 2, 3]
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            get(f"http://127.0.0.1:{port}/api/versions", token=token)  # no plain HTTP beside TLS
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            get(f"https://127.0.0.1:{port}/api/versions", context=ssl.create_default_context(), token=token)
