"""The admin's side of issue 14: tokens off argv, rotation, re-enabling, the audit head, and site text
shown literally (items 6, 9, 10, 12), through the real ``fl-server`` and ``fl-client`` entry points."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from client.menu.token_input import FLAG_WARNING, read_token
from server.console import views
from server.console.cli import main
from server.console.commands import event_notice
from server.sessions.manager import SessionManager
from server.store import Store
from shared import protocol as p
from shared.errors import AuthError, UsageError
from shared.settings import load_settings
from tests.conftest_store import make_weights, running_session

HOSTILE_NOTE = "[link=https://evil.example]approve me[/link] \x1b[1A\x1b[2Kdone \u202egnp.exe"


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    monkeypatch.setenv("FL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FL_LOG_LEVEL", "WARNING")
    monkeypatch.setenv("COLUMNS", "200")
    opened = Store.open(load_settings())
    opened.ensure_initial_version(make_weights(0), metadata={"model": {"image_size": 32}})
    yield opened
    opened.close()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def _token(out: str) -> str:
    match = re.search(r"token: (\S+)", out)
    assert match, out
    return match.group(1)


# ----------------------------------------------------------------- item 10: rotate, disable, enable


def test_rotate_disable_and_enable_from_the_command_line(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "enrol", "north")
    old = _token(out)
    assert code == 0 and "setup --data FOLDER" in out and f"--token={old}" not in out
    code, out = run(capsys, "rotate-token", "north")
    new = _token(out)
    assert code == 0 and new != old and "old token stops working" in out
    with pytest.raises(AuthError):
        store.authenticate("north", old)
    session = running_session(store, "north")
    secret = store.session_secret(session.id, "north")
    code, out = run(capsys, "disable", "north")
    assert code == 0 and "revoked" in out and "1 live session" in out
    assert not store.verify_session_secret(session.id, "north", secret)
    code, out = run(capsys, "enable", "north")
    assert code == 0 and store.authenticate("north", new).enabled


# ----------------------------------------------------------------- item 6: the exported head


def test_audit_head_export_and_check(store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store.enrol_site("north")
    head = tmp_path / "audit-head.json"
    code, out = run(capsys, "audit", "--export-head", str(head))
    assert code == 0 and "keep a copy off this machine" in out and '"row_hash"' in head.read_text()
    store.audit("admin", "later", {})
    code, out = run(capsys, "audit", "--against", str(head))
    assert code == 0 and "still holds row 2" in out
    with store._engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM audit_seals WHERE row_id >= 2")
        conn.exec_driver_sql("DELETE FROM audit_log WHERE id >= 2")
    code, out = run(capsys, "audit", "--against", str(head))
    assert code == 1 and "audit row 2 is missing" in out
    head.write_text("{}")
    code, out = run(capsys, "audit", "--against", str(head))
    assert code == 1 and "not an exported audit head" in out


# ----------------------------------------------------------------- item 9: site text shown literally


def _rendered(renderable: object) -> str:
    out = io.StringIO()
    Console(file=out, width=300, force_terminal=True, color_system="truecolor", highlight=False).print(renderable)
    return out.getvalue()


def test_a_sites_note_reaches_the_admin_as_plain_text(store: Store) -> None:
    """The probe: a note rendered a clickable link and moved the admin's cursor."""
    store.enrol_site("north")
    message = p.parse_message({"id": 1, "site": "north", "token": "t", "type": "submit_request", "rounds": 1,
                               "local_epochs": 1, "note": HOSTILE_NOTE,
                               "dp": {"noise_multiplier": 1.0, "delta": 1e-5, "l2_norm_clip": 1.0}})
    assert "\x1b" not in message.note and "\u202e" not in message.note  # stripped at the protocol
    store.submit_request("north", rounds=1, local_epochs=1, dp={}, note=message.note)
    store.submit_request("north", rounds=1, local_epochs=1, dp={}, note=HOSTILE_NOTE)  # an older row, unstripped
    shown = _rendered(views.requests_table(store.list_requests()))
    assert shown.count("[link=https://evil.example]approve me[/link]") == 2  # literal, twice
    assert "\x1b]8;" not in shown  # no hyperlink escape (OSC 8)
    assert "\x1b[1A" not in shown and "\x1b[2K" not in shown and "\u202e" not in shown


def test_session_log_lines_reach_neither_the_admins_markup_nor_the_sites(store: Store) -> None:
    """The probe: a failed session's reason quoted its log, and sites were sent that reason."""
    store.enrol_site("north")
    session = running_session(store, "north")  # its pid is not a session process: reap settles it
    manager = SessionManager(store, load_settings())
    log = manager.session_log(session.id)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("refused '[link=https://evil.example]x[/link]'\nTraceback: /srv/fl/internal.py line 9\n")
    (event,) = manager.reap()
    assert "internal.py" in event.detail  # the admin gets the tail ...
    shown = _rendered(event_notice(event))
    assert "[link=https://evil.example]x[/link]" in shown and "\x1b]8;" not in shown  # ... shown literally
    seen_by_site = [n.message + str(n.payload) for n in store.notifications("north")]
    seen_by_site += [r.reason for r in store.list_requests(site="north")]
    assert seen_by_site and not any("internal.py" in t or "evil" in t for t in seen_by_site)
    assert "the admin has the session log" in store.get_session(session.id).reason


# ----------------------------------------------------------------- item 12: the token off argv


def test_setup_reads_the_token_from_a_file_stdin_or_a_prompt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token_file = tmp_path / "north.token"
    token_file.write_text("tok-from-file\n")
    assert read_token(None, token_file) == "tok-from-file"
    assert read_token(None, Path("-"), stdin=io.StringIO("tok-from-stdin\n")) == "tok-from-stdin"
    assert read_token(None, None, stdin=io.StringIO("tok-piped\n")) == "tok-piped"

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("getpass.getpass", lambda prompt, stream=None: "tok-typed")
    assert read_token(None, None, stdin=Terminal()) == "tok-typed"
    warnings = io.StringIO()
    assert read_token("tok-on-argv", None, stderr=warnings) == "tok-on-argv"
    assert FLAG_WARNING in warnings.getvalue()
    with pytest.raises(UsageError, match="no usable token"):
        read_token(None, None, stdin=io.StringIO("\n"))
    with pytest.raises(UsageError, match="cannot read the token file"):
        read_token(None, tmp_path / "missing")
