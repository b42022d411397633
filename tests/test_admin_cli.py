"""``fl-server <command>``: every subcommand's success and error path, in-process against a tmp store.

v0 is a small stand-in (no TensorFlow); the one command that spawns a real session process
(``approve``) is stopped right away with ``stop``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from server.console.cli import main
from server.sessions.privacy_plan import privacy_summary
from server.store import Store
from server.store.lifecycle import RequestState, SessionState
from shared.settings import load_settings
from tests.conftest_store import cli_home, make_weights, running_session
from tests.privacy_fixtures import charged_session, declaration

DP = {"noise_multiplier": 1.1, "delta": 1e-5, "l2_norm_clip": 1.0}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return cli_home(tmp_path, monkeypatch, columns=80)


@pytest.fixture
def store(home: Path) -> Iterator[Store]:
    """The same store ``main`` opens, with v0 and two enrolled sites."""
    opened = Store.open(load_settings())
    opened.ensure_initial_version(make_weights(0), metadata={"model": {"image_size": 32}})
    for site in ("north", "south"):
        opened.enrol_site(site)
    yield opened
    opened.close()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def submit(store: Store, site: str, rounds: int = 2, examples: int = 200) -> int:
    return store.submit_request(site, rounds=rounds, local_epochs=1, dp=DP, note=f"from {site}",
                                declaration=declaration(examples)).id


def completed_session(store: Store) -> int:
    """A session of north and south (charged to the ledger) that committed v1 with one recorded round
    (and an evaluate phase with an accuracy, as an older session recorded it); returns its id."""
    session = charged_session(store, {"north": 20, "south": 20}, rounds=2)
    store.mark_session_running(session.id, port=8080 + session.id, pid=1000 + session.id)
    for phase in ("fit", "evaluate"):
        store.record_round(session.id, round_number=1, phase=phase, metrics={"accuracy": 0.4, "examples": 40},
                           per_site={s: {"examples": 20} for s in ("north", "south")})
    store.commit_session_result(session.id, make_weights(1), metrics={"fit": {"examples": 40},
                                                                      "evaluate": {"accuracy": 0.4, "loss": 1.2}},
                                dp_summary=privacy_summary(store, session.id, ["north", "south"]),
                                participants=["north", "south"], rounds=1)
    return session.id


def test_enrol_shows_the_token_once_and_refuses_a_duplicate(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "enrol", "east", "--budget-epsilon", "4")
    assert code == 0 and "token: " in out
    assert store.authenticate("east", out.split("token: ")[1].split()[0]).budget_epsilon == 4
    code, out = run(capsys, "enrol", "east")
    assert code == 1 and "already enrolled" in out


def test_only_the_admin_grants_training_without_dp(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = run(capsys, "enrol", "bench", "--allow-no-dp")
    assert code == 0 and store.get_site("bench").allow_no_dp and not store.get_site("north").allow_no_dp
    code, out = run(capsys, "sites")
    assert code == 0 and "allowed" in next(line for line in out.splitlines() if "bench" in line)


def test_privacy_shows_the_servers_ledger_with_its_unit(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    completed_session(store)
    code, out = run(capsys, "privacy")
    charge = store.privacy_charges(site="north")[0]
    assert code == 0 and "Privacy spent per site" in out and "Privacy ledger (server)" in out
    assert f"{charge.total_epsilon:.3f}" in out and f"{charge.total_epsilon_rdp:.3f}" in out
    assert "add/remove one image" in out.replace("\n", " ") and "PLD" in out


def test_disable_and_sites(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "disable", "south")[0] == 0
    code, out = run(capsys, "sites")
    assert code == 0 and "south" in out and " no " in out
    code, out = run(capsys, "disable", "nowhere")
    assert code == 1 and "error:" in out and "nowhere" in out


def test_requests_pending_and_by_site(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    first, second = submit(store, "north"), submit(store, "south")
    store.reject_request(second, reason="later")
    code, out = run(capsys, "requests", "--pending")
    assert code == 0 and f"REQ-{first}" in out and f"REQ-{second}" not in out
    code, out = run(capsys, "requests", "--site", "south")
    assert code == 0 and "REJECTED" in out and "later" in out


def test_approve_two_requests_into_one_session_then_stop_it(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    ids = [submit(store, "north", rounds=3), submit(store, "south", rounds=2)]
    code, out = run(capsys, "approve", str(ids[0]), f"REQ-{ids[1]}", "--rounds", "3", "--join-timeout", "600")
    assert code == 1 and f"REQ-{ids[1]} (south) asked for 2" in out and "hint:" in out
    assert store.list_sessions() == []
    code, out = run(capsys, "approve", str(ids[0]), f"REQ-{ids[1]}", "--mu", "0.02", "--join-timeout", "600")
    assert code == 0 and "approved into session 1" in out and "north, south" in out
    assert "DP schedules sent" in out and "sigma" in out
    session = store.get_session(1)
    assert session.config["rounds"] == 2 and session.config["proximal_mu"] == 0.02
    assert session.config["min_clients"] == 2 and session.state == SessionState.RUNNING
    assert [c.site for c in store.privacy_charges(session_id=1)] == ["north", "south"]
    code, out = run(capsys, "sessions", "--active")
    assert code == 0 and "RUNNING" in out and "0 of 2" in out
    code, out = run(capsys, "stop", "1", "--reason", "test over")
    assert code == 0 and store.get_session(1).state == SessionState.CANCELLED


def test_approve_errors(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "approve", "99")
    assert code == 1 and "no request" in out
    rejected = submit(store, "north")
    store.reject_request(rejected, reason="no")
    code, out = run(capsys, "approve", str(rejected))
    assert code == 1 and "error:" in out
    code, out = run(capsys, "stop", "42")
    assert code == 1 and "error:" in out


def test_reject_needs_a_reason_and_a_pending_request(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    request = submit(store, "north")
    code, out = run(capsys, "reject", str(request), "--reason", "  ")
    assert code == 1 and "needs a reason" in out and "hint:" in out
    code, out = run(capsys, "reject", f"REQ-{request}", "--reason", "too many rounds")
    assert code == 0 and "rejected: too many rounds" in out
    assert store.get_request(request).state == RequestState.REJECTED
    code, out = run(capsys, "reject", str(request), "--reason", "again")
    assert code == 1 and "error:" in out


def test_requeue_a_failed_request_but_not_a_pending_one(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    session = running_session(store, "north")
    store.finish_session(session.id, state=SessionState.FAILED, reason="crashed")
    request = session.request_ids[0]
    code, out = run(capsys, "requeue", str(request))
    assert code == 0 and "PENDING again" in out
    code, out = run(capsys, "requeue", str(request))
    assert code == 1 and "error:" in out


def test_history_and_stats(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    completed_session(store)
    store.reject_request(submit(store, "north"), reason="budget")
    code, out = run(capsys, "history")
    assert code == 0 and "COMPLETED" in out and "REJECTED" in out and "budget" in out and "1 of 2" in out
    code, out = run(capsys, "stats")
    assert code == 0 and "Per site" in out and "Per version" in out
    north = next(line for line in out.splitlines() if line.startswith("│north"))
    (charge,) = store.privacy_charges(site="north")
    assert "20" in north and f"{charge.epsilon:.3f}" in north and f"{charge.total_epsilon:.3f}" in north
    assert "40.0%" in out


def test_sessions_lists_all_and_watch_renders(store: Store, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    completed_session(store)
    code, out = run(capsys, "sessions")
    assert code == 0 and "COMPLETED" in out and "v1" in out
    monkeypatch.setattr("server.console.monitor._key_pressed", lambda stream, timeout: True)
    code, out = run(capsys, "sessions", "--watch")
    assert code == 0 and "no active session" in out


def test_versions_and_version_details(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    completed_session(store)
    code, out = run(capsys, "versions")
    assert code == 0 and "v0" in out and "v1" in out and "40.0%" in out
    code, out = run(capsys, "version", "v1")
    assert code == 0 and "lineage" in out and "Per-round metrics" in out and "north" in out
    assert store.get_version(1).sha256 in out
    code, out = run(capsys, "version", "9")
    assert code == 1 and "error:" in out


def test_versions_fit_an_80_column_pipe(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    completed_session(store)
    for command in (("versions",), ("requests",), ("history",), ("stats",), ("version", "1"), ("privacy",)):
        _, out = run(capsys, *command)
        assert max(len(line) for line in out.splitlines()) <= 80, command


def test_export_to_sites(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "export", "0", "--sites", "north, south")
    assert code == 0 and "v0 released to north, south" in out
    assert store.get_version(0).released_to == ["north", "south"]
    code, out = run(capsys, "export", "0", "--sites", "mars")
    assert code == 1 and "mars" in out
    code, out = run(capsys, "export", "0", "--sites", " , ")
    assert code == 1 and "at least one site" in out


def test_rollback(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "rollback", "0")
    assert code == 1 and "already the head" in out
    completed_session(store)
    code, out = run(capsys, "rollback", "v0")
    assert code == 0 and "head is now v2" in out


def test_cleanup_dry_run_then_delete(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    completed_session(store)
    store.rollback(0)
    code, out = run(capsys, "cleanup", "--keep", "1")
    assert code == 0 and "would free" in out and "dry run" in out and store.get_version(1).has_weights
    code, out = run(capsys, "cleanup", "--keep", "1", "--yes")
    assert code == 0 and "freed" in out and not store.get_version(1).has_weights
    code, out = run(capsys, "cleanup", "--keep", "-1")
    assert code == 1 and "keep_last" in out


def test_audit(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "audit")
    assert code == 0


def test_bad_version_argument_is_a_usage_error(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["version", "latest"])
    assert exit_info.value.code == 2 and "not a version" in capsys.readouterr().err


def test_unusable_settings_are_reported(home: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FL_REQUEST_PORT", "-5")
    code, out = run(capsys, "sites")
    assert code == 1 and "invalid settings" in out


def test_approve_wait_shows_the_rounds_until_the_session_ends(store: Store,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """No site joins within 3 s: the session fails; meanwhile the rounds show as plain lines."""
    request = submit(store, "north")
    code, out = run(capsys, "approve", str(request), "--rounds", "2", "--join-timeout", "3", "--wait")
    assert code == 1 and "approved into session 1" in out
    assert "session 1: 0/2 rounds\n" in out  # progress in a pipe: plain lines, not a bar
    assert store.get_session(1).state == SessionState.FAILED and "FAILED" in out
