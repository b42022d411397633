"""Audit chain (verify, edited and removed rows; sealed with the server key, with an exported head:
issue 14 item 6) and site tokens (hashed, salted, checked)."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text

from server.store import Store, audit_chain
from server.store import tokens as site_tokens
from server.store.audit_chain import GENESIS_HASH, canonical_json
from shared.errors import AuthError, DuplicateError, StoreError
from tests.conftest_store import running_session


def audit_rows(store: Store) -> list[tuple]:
    with store._engine.connect() as conn:
        return list(
            conn.execute(
                text("SELECT id, actor, action, prev_hash, row_hash FROM audit_log ORDER BY id")
            )
        )


def test_actions_are_audited_in_a_valid_chain(store: Store, sites: dict, v0: list) -> None:
    req = store.submit_request("alpha", rounds=1, local_epochs=1, dp={})
    store.reject_request(req.id, reason="not now", actor="root")
    running_session(store, "beta")
    store.audit("root", "login", {"from": "tty1"})
    rows = audit_rows(store)
    actions = [(r.actor, r.action) for r in rows]
    assert actions[:3] == [("admin", "enrol_site")] * 3
    assert ("alpha", "submit_request") in actions and ("root", "reject_request") in actions
    assert ("server", "initial_version") in actions and ("admin", "approve") in actions
    assert actions[-1] == ("root", "login") and any(a == "session_running" for _, a in actions)
    assert rows[0].prev_hash == GENESIS_HASH
    assert all(b.prev_hash == a.row_hash for a, b in zip(rows, rows[1:], strict=False))
    verdict = store.verify_audit()
    assert verdict.ok and verdict.rows_checked == len(rows) and verdict.first_bad_row_id is None


def test_an_edited_row_is_found(store: Store, sites: dict) -> None:
    store.audit("admin", "approve", {"request": "REQ-1"})
    store.audit("admin", "note", {"x": 1})
    target = audit_rows(store)[3].id
    with store._engine.begin() as conn:
        conn.execute(
            text("UPDATE audit_log SET detail = :d WHERE id = :i"),
            {"d": canonical_json({"request": "REQ-2"}), "i": target},
        )
    verdict = store.verify_audit()
    assert not verdict.ok and verdict.first_bad_row_id == target and "edited" in verdict.message
    assert verdict.rows_checked == 4


def test_an_edited_actor_is_found(store: Store, sites: dict) -> None:
    with store._engine.begin() as conn:
        conn.execute(text("UPDATE audit_log SET actor = 'mallory' WHERE id = 2"))
    assert store.verify_audit().first_bad_row_id == 2


def test_a_removed_row_is_found(store: Store, sites: dict) -> None:
    store.audit("admin", "one", {})
    store.audit("admin", "two", {})
    with store._engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_log WHERE id = 4"))
    verdict = store.verify_audit()
    assert not verdict.ok and verdict.first_bad_row_id == 5 and "removed" in verdict.message


def test_a_recomputed_hash_still_breaks_the_next_link(store: Store, sites: dict) -> None:
    """Rewriting a row *and* its own hash is caught at the following row."""
    with store._engine.begin() as conn:
        conn.execute(text("UPDATE audit_log SET row_hash = :h WHERE id = 1"), {"h": "f" * 64})
    verdict = store.verify_audit()
    assert verdict.first_bad_row_id == 1  # its own hash no longer matches
    with store._engine.begin() as conn:
        conn.execute(text("UPDATE audit_log SET prev_hash = :h WHERE id = 2"), {"h": "f" * 64})
    assert store.verify_audit().first_bad_row_id == 1


def test_token_hash_is_salted_and_verifies_in_constant_time_form() -> None:
    token = site_tokens.new_token()
    first, second = site_tokens.hash_token(token), site_tokens.hash_token(token)
    assert token not in first and first != second  # salted: same token, different hashes
    assert first.startswith("scrypt$")
    assert site_tokens.verify_token(token, first) and site_tokens.verify_token(token, second)
    assert not site_tokens.verify_token(token + "x", first)
    assert not site_tokens.verify_token(token, "garbage")
    assert not site_tokens.verify_token(token, "bcrypt$1$2$3$aa$bb")
    assert len(token) >= 40 and site_tokens.new_token() != token


def test_store_keeps_only_the_hash_and_authenticates(store: Store, sites: dict) -> None:
    with store._engine.connect() as conn:
        stored = dict(conn.execute(text("SELECT name, token_hash FROM sites")).all())
    for name, token in sites.items():
        assert token not in stored[name]
        assert store.authenticate(name, token).name == name
    with pytest.raises(AuthError, match="^unknown site or wrong token$"):
        store.authenticate("alpha", sites["beta"])
    with pytest.raises(AuthError, match="^unknown site or wrong token$"):
        store.authenticate("x", sites["alpha"])
    store.disable_site("gamma")
    with pytest.raises(AuthError, match="disabled"):
        store.authenticate("gamma", sites["gamma"])
    assert [(s.name, s.enabled) for s in store.list_sites()] == [
        ("alpha", True),
        ("beta", True),
        ("gamma", False),
    ]


def test_enrolment_refuses_duplicates_and_bad_names(store: Store, sites: dict) -> None:
    with pytest.raises(DuplicateError, match="alpha"):
        store.enrol_site("alpha")
    for bad in ("", "../etc", "a b", "x" * 65):
        with pytest.raises(StoreError, match="invalid site name"):
            store.enrol_site(bad)
    with pytest.raises(StoreError, match="budget"):
        store.enrol_site("delta", budget_epsilon=0)


def test_notifications_are_per_site_and_acknowledged(store: Store, sites: dict) -> None:
    store.notify("alpha", kind="info", message="one", payload={"n": 1})
    store.notify("alpha", kind="info", message="two")
    store.notify("beta", kind="info", message="theirs")
    mine = store.notifications("alpha")
    assert [(n.message, n.payload) for n in mine] == [("one", {"n": 1}), ("two", {})]
    theirs = store.notifications("beta")[0].id
    assert store.acknowledge("alpha", [mine[0].id, theirs]) == 1  # another site's id is ignored
    assert [n.message for n in store.notifications("alpha", unread_only=True)] == ["two"]
    assert store.notifications("beta", unread_only=True)[0].read_at is None
    assert store.acknowledge("alpha", [mine[0].id]) == 0


# ----------------------------------------------------------------- sealed chain and exported head


def _rechain(store: Store, edit: dict[int, dict], seal_key: bytes | None = None) -> None:
    """What someone with write access to the DB does: edit rows, recompute every hash after them
    (the probe's attack), and with ``seal_key`` also re-seal every row with that key."""
    from server.store.models import AuditRow, AuditSeal

    with store._write() as session:
        prev = GENESIS_HASH
        for row in session.scalars(select(AuditRow).order_by(AuditRow.id)):
            if row.id in edit:
                row.detail = edit[row.id]
            row.prev_hash = prev
            row.row_hash = audit_chain.row_hash(prev, row.id, row.at, row.actor, row.action, row.detail)
            if seal_key is not None:
                session.get(AuditSeal, row.id).mac = audit_chain.seal(seal_key, row.row_hash)
            prev = row.row_hash


def test_an_edited_and_rechained_log_fails_without_the_key(store: Store, sites: dict) -> None:
    """The probe: editing a row and re-chaining the hashes passed ``fl-server audit``."""
    forged = {2: {"site": "mallory", "budget_epsilon": 1e9, "budget_delta": 1e-5}}
    _rechain(store, forged)
    verdict = store.verify_audit()
    assert not verdict.ok and verdict.first_bad_row_id == 2 and "without the server key" in verdict.message
    _rechain(store, forged, seal_key=b"a guessed key of thirty-two bytes")
    verdict = store.verify_audit()
    assert not verdict.ok and verdict.first_bad_row_id == 1 and "seal" in verdict.message


def test_analysts_check_the_chain_and_are_told_the_seals_are_the_admins(store_settings, store: Store,
                                                                        sites: dict) -> None:
    analyst = Store.open(store_settings, readonly=True)
    try:
        verdict = analyst.verify_audit()
        assert verdict.ok and "fl-server audit" in verdict.message
        with store._engine.begin() as conn:
            conn.execute(text("UPDATE audit_log SET actor = 'mallory' WHERE id = 2"))
        assert analyst.verify_audit().first_bad_row_id == 2  # a plain edit shows without the key
    finally:
        analyst.close()


def test_an_exported_head_reveals_a_cut_or_a_rewrite_with_the_key(store: Store, sites: dict) -> None:
    head = store.audit_head()
    assert head.row_id == 3 and store.verify_audit(head).ok
    store.audit("admin", "later", {})
    assert store.verify_audit(head).ok  # rows after the head are fine
    _rechain(store, {1: {"site": "alpha", "budget_epsilon": 1e9, "budget_delta": 1e-5}}, seal_key=store._keys.audit)
    assert store.verify_audit().ok  # whoever holds the key can re-chain and re-seal ...
    verdict = store.verify_audit(head)  # ... but not match a head kept elsewhere
    assert not verdict.ok and verdict.first_bad_row_id == 3 and "does not match the exported head" in verdict.message
    with store._engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_seals WHERE row_id >= 3"))
        conn.execute(text("DELETE FROM audit_log WHERE id >= 3"))
    verdict = store.verify_audit(head)
    assert not verdict.ok and "audit row 3 is missing" in verdict.message


def test_the_audit_key_is_not_in_the_database(store_settings, store: Store, sites: dict) -> None:
    if "sqlite" not in store_settings.database_url:
        pytest.skip("reads the SQLite file")
    key = store._keys.audit
    db = store_settings.home / "fl.db"
    for path in (db, db.with_name("fl.db-wal")):
        assert key not in path.read_bytes()
    assert store_settings.key_file.parent != db.parent
